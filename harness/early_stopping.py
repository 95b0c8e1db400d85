"""Early stopping (``trainer.early_stopping``): end the run when a metric has stopped improving.

A pure rule over the epochs' values: an epoch improves when its value beats the best so far by more than
``min_delta``; the run stops once ``patience`` epochs in a row have not. Its record (the best, its epoch,
the epochs since) lives in :class:`harness.loop.TrainState`, so a resumed run stops where the whole run
would have, and a run that stopped early stays stopped when resumed with the same settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["EarlyStopping"]


@dataclass
class EarlyStopping:
    """``trainer.early_stopping``'s settings and its rule.

    Args:
        monitor: the metric it watches: ``train/loss``, ``val/loss`` or a ``val/`` metric of the task;
            ``None``: the trainer's ``monitor`` (:class:`harness.loop.TrainerConfig` fills it in).
        mode: ``auto`` (the metric's own direction), ``max`` or ``min``.
        patience: epochs in a row without improvement that stop the run; 0 = off.
        min_delta: how much an epoch must beat the best by to count as an improvement (>= 0).
    """

    monitor: str | None = None
    mode: str = "auto"
    patience: int = 0
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        patience, delta = self.patience, self.min_delta
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"early_stopping.patience={patience!r} must be an integer >= 0 (0 = off)")
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 <= delta < math.inf:
            raise ValueError(f"early_stopping.min_delta={delta!r} must be a number >= 0")
        if self.monitor is not None and (not isinstance(self.monitor, str) or not self.monitor.startswith(
                ("train/", "val/"))):
            raise ValueError(f"early_stopping.monitor={self.monitor!r} must be a train/ or val/ metric, e.g. val/loss")
        if self.mode not in ("auto", "max", "min"):
            raise ValueError(f"early_stopping.mode={self.mode!r} must be one of auto, max, min")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EarlyStopping:
        """From the YAML mapping; an unknown key is refused in one line."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"early_stopping has no key {unknown[0]!r}; its keys are {', '.join(sorted(known))}")
        return cls(**config)

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    def update(self, record: dict[str, Any], value: float, epoch: int, direction: str) -> None:
        """Adds ``epoch``'s ``value`` to ``record`` (``TrainState.early_stop``, updated in place)."""
        best = record.get("best")
        delta = self.min_delta
        if best is None or (value > best + delta if direction == "max" else value < best - delta):
            record.update(best=value, best_epoch=epoch, stale=0)
        else:
            record["stale"] = record.get("stale", 0) + 1

    def reason(self, record: Mapping[str, Any]) -> str | None:
        """Why the run stops, or ``None`` while it goes on."""
        if not self.enabled or record.get("stale", 0) < self.patience:
            return None
        by = f" by more than {self.min_delta:g}" if self.min_delta else ""
        return (f"{self.monitor} has not improved{by} for {record['stale']} epochs (trainer.early_stopping."
                f"patience={self.patience}; best {record['best']:.4g} at epoch {record['best_epoch']})")
