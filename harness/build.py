"""Builds a run's parts from a composed Hydra config: data, task, model, optimizer, scheduler.

Every swappable part is ``hydra.utils.instantiate`` of its config group. A group whose YAML says
``_partial_: true`` is finished here with the runtime values it needs (the data's shape for the model, the
parameters for the optimizer, the optimizer and steps per epoch for the scheduler, the data's classes for a
metric); one without it is built as it stands. Keys a group holds for the harness itself, not for its
``_target_`` (``data.batch_size``, ``scheduler.interval``, ...), are read here and left out of the call.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra.utils
import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from harness import distributed
from harness.config import validate
from harness.data import DataSplits, TensorLoader, make_loaders
from harness.debug import FixedBatches, limit_batches
from harness.distributed import World
from harness.ema import build_ema
from harness.errors import ConfigError, HarnessError
from harness.loggers import LoggerGroup
from harness.loop import TrainerConfig, monitorable
from harness.models import count_parameters
from harness.tasks import TARGET_KINDS, Task

__all__ = ["build", "build_data", "build_task", "build_transform", "build_optimizer", "build_scheduler",
           "build_loggers", "instantiate_group", "accepts", "Components", "resolve_device", "seed_everything",
           "set_deterministic", "debug_loaders"]

log = logging.getLogger(__name__)

# Keys of a group that configure the harness, not the group's _target_.
DATA_LOADER_KEYS = ("batch_size", "num_workers", "on_device", "train_transforms")
SCHEDULER_KEYS = ("interval",)


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def set_deterministic(on: bool) -> None:
    """``trainer.deterministic``: torch's deterministic algorithms (an op without one raises instead of running)
    and cuDNN's deterministic, non-benchmarking mode; off puts torch's defaults back."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS is deterministic only with it
        torch.backends.cudnn.benchmark = False  # benchmarking picks kernels by timing, run to run
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda``/``cuda:N`` must exist.

    Raises:
        ConfigError: the requested CUDA device is not there.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={name} but CUDA is not available here; use trainer.device=cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"trainer.device={name} but this machine has {count} CUDA device(s): cuda:0..{count - 1}")
    return device


def _config_error(group: str, spec: dict, error: Exception) -> ConfigError:
    """A constructor's error as one line naming the group; "dropout=2 must be ..." becomes "model.dropout=2 ..."."""
    message = " ".join(str(error).split())
    named = next((key for key in spec if re.match(rf"{re.escape(str(key))}\b", message)), None)
    return ConfigError(f"{group}.{message}" if named else f"{group}: {message}")


def instantiate_group(group: str, node: DictConfig, drop: tuple[str, ...] = (), **runtime: Any) -> Any:
    """Builds ``node``'s ``_target_`` from its keys (less the harness's own keys ``drop``); a partial (the YAML
    says ``_partial_: true``) is then called with the ``runtime`` arguments.

    Raises:
        ConfigError: the target can't be found, or refuses its arguments (one line, naming the group).
        HarnessError: the target's own (a missing data set, say).
    """
    spec = OmegaConf.to_container(node, resolve=True)
    for key in drop:
        spec.pop(key, None)
    try:
        built = instantiate(spec, _convert_="all")
        return built(**runtime) if isinstance(built, functools.partial) else built
    except InstantiationException as e:
        cause = e.__cause__  # what the target itself raised, if it got that far
        if isinstance(cause, HarnessError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            raise _config_error(group, spec, cause) from e
        raise ConfigError(f"{group}: {str(e).splitlines()[0]}") from e
    except HarnessError:
        raise
    except (ValueError, TypeError) as e:
        raise _config_error(group, spec, e) from e


def accepts(target: str) -> set[str]:
    """The keyword names ``target`` accepts; empty when it can't be found (``instantiate_group`` then says why)."""
    try:
        return set(inspect.signature(hydra.utils.get_object(target)).parameters)
    except Exception:
        return set()


def _require_partial(group: str, node: DictConfig, what: str) -> None:
    if not node.get("_partial_", False):
        raise ConfigError(f"{group}: its YAML needs `_partial_: true`, since the harness passes {what} at run time")


def build_optimizer(node: DictConfig, params, device: torch.device) -> torch.optim.Optimizer:
    """The ``optimizer`` group with the model's ``params``; torch's fused kernels on CUDA where the class has
    them and the config does not choose."""
    _require_partial("optimizer", node, "the model's parameters")
    fused = device.type == "cuda" and "fused" not in node and "fused" in accepts(node._target_)
    return instantiate_group("optimizer", node, params=params, **({"fused": True} if fused else {}))


def build_scheduler(node: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The ``scheduler`` group on ``optimizer``. Ours and ``OneCycleLR`` take ``steps_per_epoch`` (pass 1 with
    ``interval: epoch``); torch's ``StepLR`` and the like count in scheduler steps and don't."""
    _require_partial("scheduler", node, "the optimizer")
    takes_steps = "steps_per_epoch" in accepts(node._target_)
    return instantiate_group("scheduler", node, drop=SCHEDULER_KEYS, optimizer=optimizer,
                             **({"steps_per_epoch": steps_per_epoch} if takes_steps else {}))


def build_task(node: DictConfig, splits: DataSplits, device: torch.device) -> Task:
    """The ``task`` group for ``splits``: its loss, and its metrics on ``device``. A ``_partial_`` metric gets
    the data's ``num_classes``; a metric whose ``top_k`` is not below the number of classes (always right)
    is left out.

    Raises:
        ConfigError: the data's targets are not the task's, or a loss or metric can't be built.
    """
    targets = node.get("targets")
    if targets is not None and targets != splits.targets:
        raise ConfigError(f"task.targets={targets}: this task trains on {TARGET_KINDS.get(targets, targets)}, but "
                          f"the data gives {TARGET_KINDS[splits.targets]}; pick the task for the data "
                          "(task=classification for labels, task=regression for values)")
    loss = instantiate_group("task.loss", node.loss)
    metrics = {}
    for name, spec in node.metrics.items():
        top_k = spec.get("top_k")
        if isinstance(top_k, int) and top_k >= splits.num_classes:
            log.info("task.metrics.%s left out: top_k=%d with %d classes is always right", name, top_k,
                     splits.num_classes)
            continue
        wants_classes = spec.get("_partial_", False) and "num_classes" in accepts(spec._target_)
        metric = instantiate_group(f"task.metrics.{name}", spec,
                                   **({"num_classes": splits.num_classes} if wants_classes else {}))
        metrics[name] = metric.to(device)
    return Task(loss.to(device) if isinstance(loss, torch.nn.Module) else loss, metrics, targets=targets)


def build_transform(specs) -> Any:
    """``data.train_transforms`` (a list of ``_target_`` entries) as one ``torchvision.transforms.v2.Compose``;
    ``None`` for an empty list or ``null``."""
    if not specs:
        return None
    from torchvision.transforms import v2

    return v2.Compose([instantiate_group(f"data.train_transforms[{i}]", spec) for i, spec in enumerate(specs)])


def build_data(cfg: DictConfig, device: torch.device, w: World) -> tuple[DataSplits, tuple]:
    """The ``data`` group's splits and their ``(train, val, test)`` loaders for this process."""
    splits = instantiate_group("data", cfg.data, drop=DATA_LOADER_KEYS)
    if not isinstance(splits, DataSplits):
        raise ConfigError(f"data: {cfg.data._target_} returned {type(splits).__name__}, not harness.data.DataSplits")
    loaders = make_loaders(
        splits, cfg.data.batch_size, cfg.data.num_workers, seed=cfg.seed, pin_memory=device.type == "cuda",
        on_device=cfg.data.get("on_device", False), device=device, rank=w.rank, world_size=w.size,
        train_transform=build_transform(cfg.data.get("train_transforms")),
    )
    return splits, loaders


def debug_loaders(train, val, test, trainer: TrainerConfig) -> tuple:
    """The loaders cut to ``trainer.limit_*_batches``; with ``trainer.overfit_batches=N``, the first N training
    batches, served every epoch for training and validation alike (see :mod:`harness.debug`)."""
    if trainer.overfit_batches:
        fixed = FixedBatches(train, trainer.overfit_batches)
        return fixed, fixed, limit_batches(test, trainer.limit_test_batches)
    return (limit_batches(train, trainer.limit_train_batches), limit_batches(val, trainer.limit_val_batches),
            limit_batches(test, trainer.limit_test_batches))


def build_loggers(node: DictConfig | None, run_dir: str | Path, purge_step: int | None = None,
                  run_ids: dict[str, str] | None = None) -> LoggerGroup:
    """The ``logger`` group's loggers (``logger=[tensorboard,csv]`` picks two; ``logger=[]`` none), each
    given the run directory and, on resume, the first step it logs and its run id from the checkpoint."""
    group = LoggerGroup({})
    try:
        for name, spec in (node or {}).items():
            _require_partial(f"logger.{name}", spec, "the run directory")
            group.loggers[name] = instantiate_group(f"logger.{name}", spec, run_dir=Path(run_dir),
                                                    purge_step=purge_step, run_id=(run_ids or {}).get(name))
    except BaseException:
        with contextlib.suppress(Exception):  # the ones already open; the error to report is the one raised
            group.close("failed")
        raise
    return group


@dataclass
class Components:
    """Everything a run trains with, built from the config and ready for :func:`harness.loop.fit`."""

    model: torch.nn.Module  # what the loop calls: possibly compiled and/or wrapped in DDP
    module: torch.nn.Module  # the plain module under those wrappers, whose state dict checkpoints hold
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: DataLoader | TensorLoader
    val_loader: DataLoader | TensorLoader
    test_loader: DataLoader | TensorLoader
    task: Task
    device: torch.device
    interval: str
    scaler: torch.amp.GradScaler
    world: World
    trainer: TrainerConfig
    ema: torch.optim.swa_utils.AveragedModel | None = None  # the EMA of module's weights (trainer.ema_decay)


def _compile(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)``, or ``model`` with a warning where compiling can't work here."""
    try:
        return torch.compile(model)
    except Exception as e:  # compile support varies by platform; training must not depend on it
        log.warning("trainer.compile=true skipped: %s", " ".join(str(e).split())[:200])
        return model


def build(cfg: DictConfig, trainer: TrainerConfig | None = None) -> Components:
    """Seeds every generator and builds data, model, optimizer and scheduler from ``cfg``.

    Validates ``cfg`` first unless given the ``trainer`` settings :func:`harness.config.validate` returned.
    Under torchrun the process joins the process group, takes its share of the data and wraps the model
    in ``DistributedDataParallel``.

    Raises:
        HarnessError: a wrong config value or a missing data set.
    """
    trainer = trainer if trainer is not None else validate(cfg)
    device = resolve_device(trainer.device)
    w = distributed.setup()
    if w.size > 1 and device.type == "cuda":
        device = torch.device("cuda", w.local_rank)  # one device per local rank
        torch.cuda.set_device(device)
    if trainer.precision == "16-mixed" and device.type != "cuda":
        raise ConfigError(f"trainer.precision=16-mixed needs CUDA (the device is {device}); use bf16 on a CPU")
    seed_everything(cfg.seed)
    set_deterministic(trainer.deterministic)

    splits, loaders = build_data(cfg, device, w)
    train_loader, val_loader, test_loader = debug_loaders(*loaders, trainer)
    task = build_task(cfg.task, splits, device)
    for key, monitor in (("monitor", trainer.monitor), ("early_stopping.monitor", trainer.early_stopping.monitor)):
        if monitor not in (names := monitorable(task.metrics)):
            raise ConfigError(f"trainer.{key}={monitor} is not a metric of this run; choose one of {', '.join(names)}")
    module = instantiate_group("model", cfg.model, input_shape=splits.input_shape, num_classes=splits.num_classes)
    module = module.to(device)
    optimizer = build_optimizer(cfg.optimizer, module.parameters(), device)
    interval = cfg.scheduler.interval
    steps_per_epoch = math.ceil(len(train_loader) / trainer.accumulate_grad_batches) if interval == "step" else 1
    scheduler = build_scheduler(cfg.scheduler, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=trainer.precision == "16-mixed")
    log.info(
        "%s (%d parameters) on %s%s: %d train / %d val / %d test samples, %d batches per epoch",
        type(module).__name__, count_parameters(module), device, f" (rank {w.rank} of {w.size})" if w.size > 1 else "",
        len(splits.train), len(splits.val), len(splits.test), len(train_loader),
    )
    ema = build_ema(module, trainer.ema_decay)
    model = _compile(module) if trainer.compile else module
    if w.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Components(model, module, optimizer, scheduler, train_loader, val_loader, test_loader, task, device,
                      interval, scaler, w, trainer, ema)
