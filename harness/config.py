"""Checks a composed config before anything is built, so a wrong value fails in one line, up front.

Each message names the key, its value and what is allowed, e.g.
``scheduler.warmup_epochs=60 must be < scheduler.total_epochs=50``. The ``trainer`` group is checked by
its schema, :class:`harness.loop.TrainerConfig`; other keys the harness reads itself are required; knobs of
swappable components (``optimizer.lr``, ``scheduler.warmup_epochs``, ...) are checked when the chosen option
has them, and the component's own constructor checks the rest.
"""

from __future__ import annotations

import difflib
import logging
import math
from typing import Any

import hydra.utils
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.errors import ConfigError
from harness.loop import TrainerConfig, monitorable
from harness.tasks import metric_direction

__all__ = ["validate", "trainer_config", "task_metrics", "metric_direction_of"]

log = logging.getLogger(__name__)

_MISSING = object()


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


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def _choice(cfg: DictConfig, key: str, allowed: tuple[str, ...]) -> str:
    value = _get(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} must be one of {', '.join(allowed)}")
    return value


def trainer_config(cfg: DictConfig) -> TrainerConfig:
    """The ``trainer`` group as its schema, :class:`TrainerConfig`.

    Raises:
        ConfigError: a key that is not a trainer setting, or a value out of its bounds.
    """
    node = _get(cfg, "trainer")
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if not isinstance(values, dict):
        raise ConfigError(f"trainer={values!r} must be a group of settings, e.g. trainer.max_epochs=30")
    known = list(TrainerConfig.__dataclass_fields__)
    unknown = sorted(set(values) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"did you mean trainer.{close[0]}? " if close else ""
        raise ConfigError(
            f"trainer.{unknown[0]} is not a trainer setting; {hint}see conf/trainer/default.yaml for those there are"
        )
    try:
        return TrainerConfig(**values)
    except ValueError as e:
        raise ConfigError(f"trainer.{e}") from e


def task_metrics(cfg: DictConfig) -> list[str]:
    """The metrics a run of ``cfg`` can monitor and optimize: ``train/loss``, ``val/loss``, ``val/<name>`` of
    each of ``task.metrics`` (one whose ``top_k`` the data's classes don't exceed is left out later, when the
    data is known).

    Raises:
        ConfigError: the task has no ``loss`` or no ``metrics`` group.
    """
    task = _get(cfg, "task")
    if not isinstance(task, DictConfig) or not isinstance(task.get("loss"), DictConfig):
        raise ConfigError("task has no loss; pick a task (task=classification or task=regression) or give yours "
                          "a loss: {_target_: ...} (see conf/task/)")
    metrics = task.get("metrics") if "metrics" in task else {}
    if not isinstance(metrics, DictConfig) or not all(isinstance(m, DictConfig) and "_target_" in m
                                                      for m in metrics.values()):
        raise ConfigError(f"task.metrics={_plain(metrics)!r} must map each metric's name to a {{_target_: ...}} "
                          "entry (see conf/task/)")
    return monitorable(metrics)


def metric_direction_of(cfg: DictConfig, metric: str) -> str:
    """``"max"`` or ``"min"``: which way ``metric`` is better in a run of ``cfg``; ``trainer.monitor_mode`` for
    the monitored metric if it is set, else what the metric's class says (``higher_is_better``).

    Raises:
        ConfigError: a metric the task does not have, or one whose direction is unknown.
    """
    trainer = cfg.get("trainer") or {}
    if metric == trainer.get("monitor") and trainer.get("monitor_mode") in ("max", "min"):
        return trainer.monitor_mode
    classes = {}
    for name, spec in (cfg.task.get("metrics") or {}).items():
        try:
            classes[name] = hydra.utils.get_object(spec._target_)
        except Exception as e:
            raise ConfigError(f"task.metrics.{name}._target_={spec._target_} cannot be imported ({e})") from None
    try:
        return metric_direction(metric, classes)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check_monitored(cfg: DictConfig, trainer: TrainerConfig) -> None:
    """The metrics the run watches (``trainer.monitor``, ``optimized_metric``, the early stopping's) are
    metrics of its task, on validation or training, and have a known direction."""
    names = task_metrics(cfg)
    for key, value in (("trainer.monitor", trainer.monitor), ("optimized_metric", _get(cfg, "optimized_metric")),
                       ("trainer.early_stopping.monitor", trainer.early_stopping.monitor)):
        if value not in names:
            honest = " (the test split only reports; choose on validation)" if str(value).startswith("test/") else ""
            raise ConfigError(f"{key}={value!r} is not a metric of this run{honest}; choose one of {', '.join(names)}")
    metric_direction_of(cfg, trainer.monitor)
    if trainer.early_stopping.mode == "auto":
        metric_direction_of(cfg, trainer.early_stopping.monitor)


def validate(cfg: DictConfig) -> TrainerConfig:
    """Raises :class:`ConfigError` for the first wrong value in ``cfg``; returns the trainer settings.

    Args:
        cfg: the composed config (``conf/config.yaml`` plus overrides).
    """
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        key = sorted(missing)[0]
        raise ConfigError(f"{key} is not set (???); pass it on the command line: {key}=VALUE")
    _integer(cfg, "seed", 0)
    trainer = trainer_config(cfg)
    max_epochs = trainer.max_epochs
    value = _get(cfg, "data.on_device", required=False)
    if value is not _MISSING and not isinstance(value, bool):
        raise ConfigError(f"data.on_device={value!r} must be true or false")
    transforms = _get(cfg, "data.train_transforms", required=False)
    if transforms not in (_MISSING, None) and not (isinstance(transforms, ListConfig) and all(
            isinstance(t, DictConfig) and "_target_" in t for t in transforms)):
        raise ConfigError(f"data.train_transforms={_plain(transforms)!r} must be a list of {{_target_: ...}} entries, "
                          "e.g. [{_target_: torchvision.transforms.v2.RandomHorizontalFlip}]")
    _check_monitored(cfg, trainer)
    loggers = _get(cfg, "logger", required=False)
    if loggers not in (_MISSING, None) and not (isinstance(loggers, DictConfig) and all(
            isinstance(spec, DictConfig) and "_target_" in spec for spec in loggers.values())):
        raise ConfigError(f"logger={_plain(loggers)!r} must be one or more files of conf/logger: logger=csv or "
                          "logger=[tensorboard,csv] (logger=[] for none)")
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

    betas = _get(cfg, "optimizer.betas", required=False)
    if betas is not _MISSING and not (isinstance(betas, ListConfig) and len(betas) == 2 and all(
            _is_number(b) and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"optimizer.betas={_plain(betas)!r} must be two numbers in [0, 1), e.g. [0.9,0.999]")

    interval = _choice(cfg, "scheduler.interval", ("epoch", "step"))
    milestones = _get(cfg, "scheduler.milestones", required=False)
    if milestones is not _MISSING and not (
            isinstance(milestones, ListConfig) and all(isinstance(m, int) and not isinstance(m, bool) and m >= 1
                                                      for m in milestones)):
        raise ConfigError(f"scheduler.milestones={_plain(milestones)!r} must be a list of integers >= 1 "
                          "(scheduler steps), e.g. [15,25]")
    step_size = _get(cfg, "scheduler.step_size", required=False)
    if step_size is not _MISSING:
        _integer(cfg, "scheduler.step_size", 1)
    _number(cfg, "scheduler.gamma", 0.0, strict=True, required=False)
    warmup = _number(cfg, "scheduler.warmup_epochs", 0.0, required=False)
    total = _number(cfg, "scheduler.total_epochs", 0.0, strict=True, required=False)
    if warmup is not None and total is not None and warmup >= total:
        hint = " (it follows trainer.max_epochs)" if total == max_epochs else ""
        raise ConfigError(f"scheduler.warmup_epochs={warmup!r} must be < scheduler.total_epochs={total!r}{hint}")
    if interval == "epoch" and total is not None and total <= 1 and _get(cfg, "scheduler.min_lr", required=False) \
            is not _MISSING:
        log.warning("scheduler.interval=epoch with a %g-epoch schedule trains that epoch at scheduler.min_lr; "
                    "scheduler.interval=step spreads the schedule over its steps", total)
    min_lr = _get(cfg, "scheduler.min_lr", required=False)
    if min_lr is not _MISSING:
        floors = list(min_lr) if isinstance(min_lr, ListConfig) else [min_lr]
        for floor in floors:
            if not _is_number(floor) or floor < 0:
                raise ConfigError(f"scheduler.min_lr={min_lr!r} must be a number >= 0 (or a list, one per param group)")
            if lr is not None and floor > lr:
                raise ConfigError(f"scheduler.min_lr={floor!r} must be <= optimizer.lr={lr!r}")
    return trainer
