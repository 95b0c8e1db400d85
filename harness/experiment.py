"""Builds a run from a composed config and trains it: the only module that knows Hydra and OmegaConf.

Every swappable part is ``hydra.utils.instantiate`` of its config group, finished here with the runtime
values it needs (the data's shape for the model, the parameters for the optimizer, the optimizer and
steps per epoch for the scheduler). Keys a group holds for the harness itself, not for its ``_target_``
(``data.batch_size``, ``scheduler.interval``, ...), are read here and left out of the call.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from harness.config import validate
from harness.data import make_loaders
from harness.errors import ConfigError, HarnessError
from harness.loop import fit
from harness.models import count_parameters
from harness.tensorboard import TensorBoardLogger

__all__ = ["run", "build", "Components", "resolve_device", "seed_everything"]

log = logging.getLogger(__name__)

# Keys of a group that configure the harness, not the group's _target_.
_DATA_LOADER_KEYS = ("batch_size", "num_workers")
_SCHEDULER_KEYS = ("interval",)


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


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


def _build(group: str, node: DictConfig, drop: tuple[str, ...] = (), **runtime: Any) -> Any:
    """Calls ``node``'s ``_target_`` with its other keys (less ``drop``) and the ``runtime`` arguments.

    A constructor's ``ValueError``/``TypeError`` about its arguments becomes a one-line
    :class:`ConfigError` naming the group.
    """
    spec = OmegaConf.to_container(node, resolve=True)
    for key in drop:
        spec.pop(key, None)
    try:
        # Always a partial, so errors raised by the target itself surface here unwrapped.
        return instantiate(spec, _partial_=True, _convert_="all")(**runtime)
    except HarnessError:
        raise
    except InstantiationException as e:
        raise ConfigError(f"{group}: {str(e).splitlines()[0]}") from e
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{group}: {e}") from e


@dataclass
class Components:
    """Everything a run trains with, built from the config and ready for :func:`harness.loop.fit`."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: DataLoader
    val_loader: DataLoader
    device: torch.device
    interval: str


def build(cfg: DictConfig) -> Components:
    """Validates ``cfg``, seeds every generator, and builds data, model, optimizer and scheduler.

    Raises:
        HarnessError: a wrong config value or a missing data set.
    """
    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    seed_everything(cfg.seed)

    splits = _build("data", cfg.data, drop=_DATA_LOADER_KEYS)
    train_loader, val_loader = make_loaders(
        splits, cfg.data.batch_size, cfg.data.num_workers, seed=cfg.seed, pin_memory=device.type == "cuda"
    )
    model = _build("model", cfg.model, input_shape=splits.input_shape, num_classes=splits.num_classes).to(device)
    optimizer = _build("optimizer", cfg.optimizer, params=model.parameters())
    interval = cfg.scheduler.interval
    steps_per_epoch = len(train_loader) if interval == "step" else 1
    scheduler = _build(
        "scheduler", cfg.scheduler, drop=_SCHEDULER_KEYS, optimizer=optimizer, steps_per_epoch=steps_per_epoch
    )
    log.info(
        "%s (%d parameters) on %s: %d train / %d val samples, %d steps per epoch",
        type(model).__name__, count_parameters(model), device,
        len(splits.train), len(splits.val), len(train_loader),
    )
    return Components(model, optimizer, scheduler, train_loader, val_loader, device, interval)


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """Builds the run from ``cfg`` (see :func:`build`), trains it, and returns the final metrics.

    TensorBoard event files go into ``run_dir``; the writer is closed even when training fails.

    Args:
        cfg: a config composed from ``conf/`` (by ``train.py`` or ``hydra.compose``).
        run_dir: the run's output directory.

    Returns:
        The metrics of the last epoch (see :func:`harness.loop.fit`).

    Raises:
        HarnessError: a wrong config value, a missing data set, or a non-finite loss.
    """
    c = build(cfg)
    with TensorBoardLogger(run_dir) as logger:
        metrics = fit(
            c.model,
            c.optimizer,
            c.scheduler,
            c.train_loader,
            c.val_loader,
            max_epochs=cfg.trainer.max_epochs,
            device=c.device,
            interval=c.interval,
            log_every_n_steps=cfg.trainer.log_every_n_steps,
            grad_clip=cfg.trainer.grad_clip,
            logger=logger,
            progress=cfg.trainer.progress_bar,
        )
    log.info("final: %s", "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    log.info("run directory: %s", Path(run_dir).resolve())
    return metrics
