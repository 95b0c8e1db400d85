"""Small reference models, each sized from the data: ``input_shape=(C, H, W)`` and ``num_classes``.

The harness passes ``input_shape`` and ``num_classes`` at build time, so a model option's YAML holds only
its own knobs (widths, dropout).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import nn

__all__ = ["MLP", "SmallCNN", "resnet18"]


def _positive_ints(name: str, values: Sequence[int]) -> list[int]:
    values = list(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name}={values} must be a non-empty list of integers >= 1")
    return values


def _check_dropout(dropout: float) -> float:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
    return dropout


class MLP(nn.Sequential):
    """Flatten, then ``Linear -> ReLU -> Dropout`` per hidden width, then a linear classifier.

    Args:
        input_shape: ``(channels, height, width)`` of one input.
        num_classes: number of output logits.
        hidden: widths of the hidden layers.
        dropout: dropout probability after each hidden layer.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (256,),
        dropout: float = 0.0,
    ) -> None:
        widths = [prod(input_shape), *_positive_ints("hidden", hidden)]
        dropout = _check_dropout(dropout)
        layers: list[nn.Module] = [nn.Flatten()]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(widths[-1], num_classes))
        super().__init__(*layers)


class SmallCNN(nn.Sequential):
    """``Conv3x3 -> BatchNorm -> ReLU -> MaxPool2`` per stage, global average pool, linear classifier.

    A stage pools only while the feature map is at least 2 pixels wide, so any image size works
    (8x8 digits, 28x28 MNIST, 32x32 CIFAR).

    Args:
        input_shape: ``(channels, height, width)`` of one input.
        num_classes: number of output logits.
        channels: output channels of each conv stage.
        dropout: dropout probability before the classifier.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        dropout: float = 0.0,
    ) -> None:
        c_in, height, width = input_shape
        widths = [c_in, *_positive_ints("channels", channels)]
        dropout = _check_dropout(dropout)
        layers: list[nn.Module] = []
        side = min(height, width)
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(w_in, w_out, 3, padding=1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU()]
            if side >= 2:
                layers.append(nn.MaxPool2d(2))
                side //= 2
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(widths[-1], num_classes)]
        super().__init__(*layers)


def resnet18(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 (random init), its stem adapted to the input.

    The first conv takes ``input_shape[0]`` channels. For small images (up to 64 pixels) the stem is the
    usual CIFAR one, a 3x3 stride-1 conv and no max-pool, so 8x8 to 32x32 inputs keep spatial detail.
    """
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    c_in, height, width = input_shape
    if max(height, width) <= 64:
        model.conv1 = nn.Conv2d(c_in, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif c_in != 3:
        model.conv1 = nn.Conv2d(c_in, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
