"""Checks a composed config before anything is built, so a wrong value fails in one line, up front.

Each message names the key, its value and what is allowed, e.g.
``scheduler.warmup_epochs=60 must be < scheduler.total_epochs=50``. Keys the harness reads itself are
required; knobs of swappable components (``optimizer.lr``, ``scheduler.warmup_epochs``, ...) are checked
when the chosen option has them, and the component's own constructor checks the rest.
"""

from __future__ import annotations

import math
import re
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.errors import ConfigError

__all__ = ["validate", "better_direction", "MONITORABLE"]

MONITORABLE = ("val/acc", "val/loss", "train/loss")  # the metrics every epoch produces


def better_direction(metric: str) -> str:
    """``"min"`` for a loss, ``"max"`` for anything else (accuracies)."""
    return "min" if metric.rsplit("/", 1)[-1].endswith("loss") else "max"

_MISSING = object()
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _get(cfg: DictConfig, key: str, *, required: bool = True) -> Any:
    try:
        value = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key} cannot be read: {e}".splitlines()[0]) from e
    if value is _MISSING and required:
        raise ConfigError(f"{key} is missing; add it to the config or pass +{key}=VALUE")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(cfg: DictConfig, key: str, minimum: int) -> int:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r} must be an integer >= {minimum}")
    return value


def _number(cfg: DictConfig, key: str, minimum: float, *, strict: bool = False, required: bool = True):
    value = _get(cfg, key, required=required)
    if value is _MISSING:
        return None
    if not _is_number(value) or value < minimum or (strict and value == minimum):
        bound = ">" if strict else ">="
        raise ConfigError(f"{key}={value!r} must be a number {bound} {minimum:g}")
    return value


def _choice(cfg: DictConfig, key: str, allowed: tuple[str, ...]) -> str:
    value = _get(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} must be one of {', '.join(allowed)}")
    return value


def validate(cfg: DictConfig) -> None:
    """Raises :class:`ConfigError` for the first wrong value in ``cfg``.

    Args:
        cfg: the composed config (``conf/config.yaml`` plus overrides).
    """
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        key = sorted(missing)[0]
        raise ConfigError(f"{key} is not set (???); pass it on the command line: {key}=VALUE")
    _integer(cfg, "seed", 0)
    max_epochs = _integer(cfg, "trainer.max_epochs", 1)
    _integer(cfg, "trainer.log_every_n_steps", 1)
    _number(cfg, "trainer.grad_clip", 0.0)
    device = _get(cfg, "trainer.device")
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ConfigError(f"trainer.device={device!r} must be auto, cpu, cuda or cuda:N")

    _choice(cfg, "trainer.monitor", MONITORABLE)
    _choice(cfg, "trainer.monitor_mode", ("max", "min"))
    _choice(cfg, "trainer.on_nonfinite", ("stop", "skip_batch"))
    _integer(cfg, "trainer.nonfinite_patience", 1)
    _integer(cfg, "trainer.num_threads", 0)
    _integer(cfg, "trainer.accumulate_grad_batches", 1)
    _integer(cfg, "trainer.checkpoint_every_n_epochs", 0)
    _number(cfg, "trainer.checkpoint_min_interval_s", 0.0)
    precision = _get(cfg, "trainer.precision")
    if str(precision) not in ("32", "bf16", "16-mixed"):
        raise ConfigError(f"trainer.precision={precision!r} must be one of 32, bf16, 16-mixed")
    for key, required in (("trainer.progress_bar", True), ("trainer.compile", True), ("data.on_device", False)):
        value = _get(cfg, key, required=required)
        if value is not _MISSING and not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
    metric = _get(cfg, "optimized_metric")
    if metric not in MONITORABLE:
        raise ConfigError(
            f"optimized_metric={metric!r} is not a metric of this harness; use one of {', '.join(MONITORABLE)}"
        )
    resume = _get(cfg, "resume")
    if resume is not None and (not isinstance(resume, str) or not resume):
        raise ConfigError(f"resume={resume!r} must be null, auto, a run directory or a .pt file")

    _integer(cfg, "data.batch_size", 1)
    _integer(cfg, "data.num_workers", 0)

    lr = _number(cfg, "optimizer.lr", 0.0, strict=True, required=False)
    _number(cfg, "optimizer.weight_decay", 0.0, required=False)
    momentum = _number(cfg, "optimizer.momentum", 0.0, required=False)
    if momentum is not None and momentum >= 1:
        raise ConfigError(f"optimizer.momentum={momentum!r} must be in [0, 1)")

    _choice(cfg, "scheduler.interval", ("epoch", "step"))
    warmup = _number(cfg, "scheduler.warmup_epochs", 0.0, required=False)
    total = _number(cfg, "scheduler.total_epochs", 0.0, strict=True, required=False)
    if warmup is not None and total is not None and warmup >= total:
        hint = " (it follows trainer.max_epochs)" if total == max_epochs else ""
        raise ConfigError(f"scheduler.warmup_epochs={warmup!r} must be < scheduler.total_epochs={total!r}{hint}")
    min_lr = _get(cfg, "scheduler.min_lr", required=False)
    if min_lr is not _MISSING:
        floors = list(min_lr) if isinstance(min_lr, ListConfig) else [min_lr]
        for floor in floors:
            if not _is_number(floor) or floor < 0:
                raise ConfigError(f"scheduler.min_lr={min_lr!r} must be a number >= 0 (or a list, one per param group)")
            if lr is not None and floor > lr:
                raise ConfigError(f"scheduler.min_lr={floor!r} must be <= optimizer.lr={lr!r}")
