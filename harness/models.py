"""Small reference models and any timm model, each sized from the data: ``input_shape=(C, H, W)`` and ``num_classes``.

The harness passes ``input_shape`` and ``num_classes`` at build time, so a model option's YAML holds only
its own knobs (widths, dropout).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod
from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError

__all__ = ["MLP", "SmallCNN", "resnet18", "timm_model"]


def _positive_ints(name: str, values: Sequence[int]) -> list[int]:
    values = list(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name}={values} must be a non-empty list of integers >= 1")
    return values


def _image_shape(input_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    """``(channels, height, width)`` of an image input; a tabular ``(features,)`` shape gets a one-line error."""
    if len(input_shape) != 3:
        raise ValueError(
            f"input_shape={tuple(input_shape)}: {model} takes images (channels, height, width); "
            "use model=mlp for tabular data"
        )
    c_in, height, width = input_shape
    return c_in, height, width


def _check_dropout(dropout: float) -> float:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
    return dropout


class MLP(nn.Sequential):
    """Flatten, then ``Linear -> ReLU -> Dropout`` per hidden width, then a linear classifier.

    Args:
        input_shape: shape of one input, flattened: ``(features,)`` for tabular data or ``(C, H, W)`` for images.
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
        c_in, height, width = _image_shape(input_shape, "model=cnn")
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

    c_in, height, width = _image_shape(input_shape, "model=resnet18")
    model = tv_resnet18(weights=None, num_classes=num_classes)
    if max(height, width) <= 64:
        model.conv1 = nn.Conv2d(c_in, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif c_in != 3:
        model.conv1 = nn.Conv2d(c_in, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def timm_model(
    input_shape: Sequence[int], num_classes: int, name: str, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """Any model from timm (PyTorch Image Models), its input channels and classes from the data.

    Args:
        input_shape: ``(channels, height, width)`` of one input; the first conv takes ``channels``.
        num_classes: number of output logits (a pretrained model gets a new, randomly initialised head).
        name: a ``timm.list_models()`` name, e.g. ``resnet18`` or ``convnext_tiny``.
        pretrained: start from timm's pretrained weights (downloaded, so a network the first time).
        **kwargs: passed on to ``timm.create_model`` (``drop_rate``, ``drop_path_rate``, ...).

    Raises:
        ConfigError: timm is not installed.
        ValueError: ``name`` is not a timm model, or the input is not an image.
    """
    try:
        import timm
    except ImportError:
        raise ConfigError('model=timm needs the timm package: pip install "harness[timm]"') from None
    c_in, _, _ = _image_shape(input_shape, "model=timm")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=c_in, **kwargs)
    except RuntimeError as e:
        if not str(e).startswith("Unknown model"):
            raise
        raise ValueError(
            f"name={name!r} is not a timm model; list the names with timm.list_models(\"*pattern*\")"
        ) from None


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
