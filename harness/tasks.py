"""What a model is trained to do: a loss, the metrics it is judged by, and the metric that picks ``best.pt``.

A task is the ``task`` config group (``conf/task/``): ``loss`` and ``metrics`` are ``_target_`` entries, the
metrics ``torchmetrics`` ones (exact under torchrun, where ``compute`` sums the processes' states). Every
split's metrics are named ``<split>/<name>``: ``val/acc``, ``test/r2``; ``<split>/loss`` is always there.
Which way is better comes from the metric itself (torchmetrics' ``higher_is_better``); a loss is lower-better.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["Task", "TARGET_KINDS", "metric_direction", "regression_loss"]

TARGET_KINDS = {"class": "class labels", "value": "real values"}  # int64 labels, or a float tensor per sample


@dataclass
class Task:
    """A built task, ready for :func:`harness.loop.fit`.

    Attributes:
        loss: ``loss(model output, targets)``, a scalar tensor (a mean over the batch).
        metrics: ``name -> torchmetrics.Metric``, each updated with ``(model output, targets)``.
        targets: the targets the task expects: ``"class"``, ``"value"``, or ``None`` (anything).
    """

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metrics: dict[str, object] = field(default_factory=dict)
    targets: str | None = None

    def names(self, split: str = "val") -> list[str]:
        """The metrics an evaluation of ``split`` reports: ``[f"{split}/loss", f"{split}/<metric>", ...]``."""
        return [f"{split}/loss", *(f"{split}/{name}" for name in self.metrics)]

    def direction(self, metric: str) -> str:
        """``"max"`` or ``"min"``: which way ``metric`` (``val/acc``, ``train/loss``, ...) is better."""
        return metric_direction(metric, self.metrics)


def metric_direction(metric: str, metrics: Mapping[str, Any]) -> str:
    """``"min"`` for a loss; for another metric, ``"max"`` or ``"min"`` as its ``higher_is_better`` says.

    Args:
        metric: ``<split>/<name>``.
        metrics: ``name -> metric`` (a torchmetrics ``Metric``, or its class: both carry ``higher_is_better``).

    Raises:
        ValueError: ``metric`` is not a loss and not in ``metrics``, or its direction is unknown.
    """
    name = metric.rsplit("/", 1)[-1]
    if name == "loss":
        return "min"
    if name not in metrics:
        raise ValueError(f"{metric!r} is not a metric of this task; it has loss, {', '.join(metrics)}")
    better = getattr(metrics[name], "higher_is_better", None)
    if better is None:
        raise ValueError(f"{metric!r}: its metric class does not say whether higher is better (higher_is_better); "
                         "set trainer.monitor_mode=max or min")
    return "max" if better else "min"


def regression_loss(kind: str = "mse", delta: float = 1.0) -> nn.Module:
    """The regression task's loss: ``"mse"`` (mean squared error) or ``"huber"`` (squared within ``delta`` of
    the target, linear beyond: less pulled by outliers)."""
    if kind == "mse":
        return nn.MSELoss()
    if kind == "huber":
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not delta > 0:
            raise ValueError(f"delta={delta!r} must be a number > 0")
        return nn.HuberLoss(delta=float(delta))
    raise ValueError(f"kind={kind!r} must be mse or huber")
