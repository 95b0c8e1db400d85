"""Builds a run from a composed Hydra config and trains it (the entry layer's core).

Every swappable part is ``hydra.utils.instantiate`` of its config group. A group whose YAML says
``_partial_: true`` is finished here with the runtime values it needs (the data's shape for the model, the
parameters for the optimizer, the optimizer and steps per epoch for the scheduler); one without it is built
as it stands. Keys a group holds for the harness itself, not for its ``_target_`` (``data.batch_size``,
``scheduler.interval``, ...), are read here and left out of the call.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
import os
import random
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra.utils
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from harness import distributed
from harness.checkpoint import BEST, LAST, Checkpointer, load_checkpoint, resolve_resume, restore_training_state
from harness.config import metric_direction_of, validate
from harness.data import DataSplits, TensorLoader, make_loaders
from harness.distributed import World, broadcast_object, world
from harness.errors import CheckpointError, ConfigError, HarnessError, TrainingError
from harness.loggers import Logger, TensorBoardLogger
from harness.loop import TrainerConfig, TrainState, evaluate, fit
from harness.models import count_parameters
from harness.rundir import RunLock, claim, claim_as, note_created, remove_if_unused
from harness.signals import StopOnSignal
from harness.tasks import Task
from harness.version import __version__

__all__ = ["run", "build", "build_data", "build_task", "build_optimizer", "build_scheduler", "instantiate_group",
           "accepts", "Components", "test_best",
           "config_changes", "resolve_device", "resume_run_dir", "hydra_subdir", "run_stamp", "register_resolvers",
           "seed_everything"]

log = logging.getLogger(__name__)

# Keys of a group that configure the harness, not the group's _target_.
DATA_LOADER_KEYS = ("batch_size", "num_workers", "on_device", "train_transforms")
SCHEDULER_KEYS = ("interval",)


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
        kinds = {"class": "class labels", "value": "real values"}
        raise ConfigError(f"task.targets={targets}: this task trains on {kinds.get(targets, targets)}, but the data "
                          f"gives {kinds[splits.targets]}; pick the task for the data (task=classification for "
                          "labels, task=regression for values)")
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

    splits, (train_loader, val_loader, test_loader) = build_data(cfg, device, w)
    task = build_task(cfg.task, splits, device)
    if trainer.monitor not in (names := ["train/loss", *task.names("val")]):
        raise ConfigError(f"trainer.monitor={trainer.monitor} is not a metric of this run; choose one of "
                          f"{', '.join(names)}")
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
    model = _compile(module) if trainer.compile else module
    if w.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Components(model, module, optimizer, scheduler, train_loader, val_loader, test_loader, task, device,
                      interval, scaler, w, trainer)


def unique_dir(default: str) -> str:
    """``default``, or ``default-1``, ... : a directory no other run has (see :func:`harness.rundir.claim`).
    Under torchrun rank 0 claims it and the other ranks take its name."""
    w = world()
    claimed = claim(default, owner=w.is_main)
    if w.size > 1:
        claimed = broadcast_object(claimed)
        claim_as(default, claimed)  # later resolutions on this rank give the same name
    return claimed


def resume_run_dir(resume: str | None, default: str) -> str:
    """Hydra's run directory for a ``resume`` setting: the resumed run's own, so it continues in place, when
    that loses nothing; else a new one (see :func:`unique_dir`).

    ``resume=<run dir>`` or ``resume=<run dir>/checkpoints/last.pt`` gives that run directory, and so does
    another checkpoint of a run that has no ``last.pt``. A checkpoint older than its run's ``last.pt``
    (``best.pt``, say) starts a new run directory, so the newer ``last.pt`` is never overwritten. ``null``,
    ``auto``, a ``.pt`` file outside a run or a path that does not exist gives a new directory (the error
    about a missing path comes later, from :func:`harness.checkpoint.resolve_resume`).
    """
    if resume not in (None, "auto"):
        path = Path(resume)
        if path.is_dir():
            return str(path)
        if path.is_file() and path.parent.name == "checkpoints":
            last = path.parent / LAST
            if path.name == LAST or not last.exists():
                return str(path.parent.parent)
    return unique_dir(default)


def hydra_subdir(run_dir: str, stamp: str) -> str | None:
    """Where Hydra saves this invocation's config: ``.hydra``, or ``.hydra/resume-<stamp>`` when the run
    directory already has one, so resuming never overwrites the config a run started with; nowhere on
    the non-zero ranks of a torchrun run, which share rank 0's directory."""
    if world().rank > 0:
        return None
    return f".hydra/resume-{stamp}" if (Path(run_dir) / ".hydra" / "config.yaml").exists() else ".hydra"


def run_stamp(pattern: str) -> str:
    """The launch's start time formatted with ``pattern``: ``HARNESS_RUN_STAMP`` (ISO time), which
    ``train.py`` takes from rank 0 under torchrun so every process names the same run directory."""
    # The first call fixes the stamp for the process, so a sweep's jobs all resolve the same directory.
    stamp = os.environ.setdefault("HARNESS_RUN_STAMP", datetime.now().isoformat())
    return datetime.fromisoformat(stamp).strftime(pattern)


def fraction_of(share: float, total: float) -> float | int:
    """``share * total``, as an integer when it is one (the default warmup: a tenth of the run's epochs).
    A ``total`` that is no number comes back as it is, for the check of its own key to report."""
    if isinstance(total, bool) or not isinstance(total, (int, float)):
        return total
    value = share * total
    return int(value) if float(value).is_integer() else round(value, 6)


def job_name(number: int, overrides: str, limit: int = 100) -> str:
    """A sweep job's folder: its number, then what it overrides (Hydra's ``override_dirname``) with characters
    that don't belong in a folder name replaced, cut to ``limit`` characters: ``3_optimizer.lr=0.05``."""
    tail = re.sub(r"[^\w.=,+-]", "_", str(overrides))
    return f"{number}_{tail}"[:limit] if tail else str(number)


def register_resolvers() -> None:
    """Registers the OmegaConf resolvers ``conf/`` uses; every Hydra entry point calls it first.

    ``harness_run_dir`` (``resume=<run dir>`` continues in that directory, a new run gets a directory of its
    own), ``harness_unique`` (a sweep directory of its own), ``harness_hydra_subdir`` (a
    resume keeps the run's first ``.hydra``), ``harness_now`` (one start time for all torchrun ranks) and
    ``harness_fraction`` (the default warmup, a share of ``trainer.max_epochs``) and ``harness_direction``
    (an Optuna search maximises accuracies and minimises losses).
    """
    resolvers = {
        "harness_run_dir": resume_run_dir,
        "harness_unique": unique_dir,
        "harness_hydra_subdir": hydra_subdir,
        "harness_now": run_stamp,
        "harness_fraction": fraction_of,
        "harness_job_name": job_name,
        "harness_direction": lambda metric, *, _root_: (
            "maximize" if metric_direction_of(_root_, metric) == "max" else "minimize"),
    }
    for name, resolver in resolvers.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def hparams_overridden_first(config: dict) -> dict[str, Any]:
    """The flattened config for TensorBoard's HParams, the keys the command line set first (in a sweep, the
    swept ones), so they are the first columns there; a group choice (``model=cnn``) puts ``model._target_``."""
    flat = _flatten(config)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    first = []
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0]
        key = key if key in flat else f"{key}._target_"
        if key in flat and key not in first:
            first.append(key)
    return {**{k: flat[k] for k in first}, **flat}


def config_changes(before: dict, after: dict) -> list[str]:
    """``key: old -> new`` for every leaf that differs between two plain configs (``resume`` aside)."""
    old, new = _flatten(before), _flatten(after)
    keys = sorted((set(old) | set(new)) - {"resume"})
    absent = "<absent>"
    return [f"{k}: {old.get(k, absent)} -> {new.get(k, absent)}" for k in keys
            if old.get(k, absent) != new.get(k, absent)]


def _check_resumable(checkpoint: dict, config: dict, c: Components) -> None:
    """Refuses a resume the checkpoint can't continue; logs every other config change."""
    saved = checkpoint.get("config", {})
    old_optimizer = saved.get("optimizer", {}).get("_target_")
    if old_optimizer and old_optimizer != config["optimizer"]["_target_"]:
        raise CheckpointError(
            f"cannot resume with optimizer {config['optimizer']['_target_']}: the checkpoint was trained "
            f"with {old_optimizer}; resume with the same optimizer"
        )
    old_steps = checkpoint.get("steps_per_epoch")
    if old_steps is not None and old_steps != len(c.train_loader):
        raise CheckpointError(
            f"cannot resume: an epoch is now {len(c.train_loader)} steps, in the checkpoint {old_steps} "
            "(data.batch_size or the data changed); resume with the checkpoint's data settings"
        )
    changes = config_changes(saved, config)
    if changes:
        log.warning("resuming with a config that differs from the checkpoint's: %s", "; ".join(changes))


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """Builds the run from ``cfg`` (see :func:`build`), trains it, and returns the final metrics.

    With ``cfg.resume`` set, continues from a checkpoint in the same run directory (see
    :func:`harness.checkpoint.resolve_resume`): weights, optimizer state, schedule position, counters and
    RNG state come from the checkpoint, settings from ``cfg``. TensorBoard event files go into
    ``run_dir`` and checkpoints into ``run_dir/checkpoints``; the writer is closed even when training fails.

    Args:
        cfg: a config composed from ``conf/`` (by ``train.py`` or ``hydra.compose``).
        run_dir: the run's output directory.

    Returns:
        The metrics of the last epoch (see :func:`harness.loop.fit`).

    Raises:
        HarnessError: a wrong config value, a missing data set or checkpoint, a non-finite loss, or a stop
            requested by SIGINT/SIGTERM (:class:`harness.errors.Interrupted`).
    """
    trainer = validate(cfg)
    if trainer.num_threads:
        torch.set_num_threads(trainer.num_threads)
    resume_from = resolve_resume(cfg.resume, run_dir)
    checkpoint = load_checkpoint(resume_from) if resume_from is not None else None
    run_dir = Path(run_dir)
    if not run_dir.exists():
        note_created(run_dir)  # made here (by the lock): a failed start takes it back
    lock = RunLock(run_dir) if world().is_main else None  # one live process per run directory
    try:
        _check_start(run_dir, checkpoint, resume_from)
        if checkpoint is not None and checkpoint["train_state"]["epoch"] >= trainer.max_epochs:
            log.info("%s: %d epochs already trained (trainer.max_epochs=%d), nothing to train%s", resume_from,
                     checkpoint["train_state"]["epoch"], trainer.max_epochs, "; testing best.pt again"
                     if trainer.test_at_end else "")
            if not trainer.test_at_end:
                return checkpoint["train_state"].get("metrics", {})
        c = build(cfg, trainer)
        try:
            return _train(cfg, c, run_dir, checkpoint, resume_from)
        finally:
            distributed.teardown()
    except BaseException:
        if lock is not None:
            remove_if_unused(run_dir)  # a failed start leaves nothing behind in a directory it made
        raise
    finally:
        if lock is not None:
            lock.release()


def _check_start(run_dir: Path, checkpoint: dict | None, resume_from: Path | None) -> None:
    """Refuses to start afresh over a run's checkpoints; says where a resume from another run continues."""
    existing = run_dir / "checkpoints" / LAST
    if checkpoint is None and existing.exists():
        raise CheckpointError(
            f"{run_dir} already holds a run ({existing}); pass resume=auto to continue it, "
            "or choose another directory (hydra.run.dir=...) to start a new one"
        )
    if resume_from is not None and existing.exists() and resume_from.resolve() != existing.resolve():
        raise CheckpointError(
            f"resuming from {resume_from} in {run_dir} would overwrite its newer {existing}; give another "
            "directory (hydra.run.dir=...), which `python train.py resume=...` picks by itself"
        )
    if resume_from is None or resume_from.parent.parent.resolve() == run_dir.resolve():
        return
    newer = resume_from.with_name(LAST)
    kept = resume_from.parent.name == "checkpoints" and newer.exists()
    why = f"; {newer}, which is newer, stays as it is" if kept else ""
    log.warning("resuming from %s in a new run directory, %s%s", resume_from, run_dir, why)


def _train(cfg: DictConfig, c: Components, run_dir: Path, checkpoint: dict | None,
           resume_from: Path | None) -> dict[str, float]:
    config = OmegaConf.to_container(cfg, resolve=True)
    state = TrainState()
    if checkpoint is not None:
        _check_resumable(checkpoint, config, c)
        state = restore_training_state(checkpoint, c.module, c.optimizer, c.scheduler, c.scaler)
        old = checkpoint.get("config", {}).get("trainer", {})
        if (old.get("monitor"), _mode(old, c.task)) != (c.trainer.monitor, _mode(asdict(c.trainer), c.task)):
            state.best, state.best_epoch = None, 0  # a best of another metric is no best of this one
        log.info("resuming from %s at epoch %d, step %d", resume_from, state.epoch, state.step)
    main = c.world.is_main  # only rank 0 writes TensorBoard, checkpoints and the progress bar
    if not main:
        logging.getLogger("harness").setLevel(logging.WARNING)
    extra = {"config": config, "harness_version": __version__, "steps_per_epoch": len(c.train_loader)}
    checkpointer = Checkpointer(run_dir / "checkpoints", c.module, c.optimizer, c.scheduler, c.scaler, extra,
                                latest=str(resume_from) if resume_from else None) if main else None
    finished = state.epoch >= c.trainer.max_epochs  # only the test is left to do
    logger = TensorBoardLogger(run_dir, purge_step=state.step + 1 if checkpoint else None) if main and not \
        finished else None
    trainer = c.trainer if main else dataclasses.replace(c.trainer, progress_bar=False)
    try:
        with StopOnSignal() as stop:
            if logger is not None:
                tests = c.task.names("test") if trainer.test_at_end else []
                tags = ["train/epoch_loss", *c.task.names("val"), *tests]
                logger.log_hparams(hparams_overridden_first(config), metric_tags=tags)
            metrics = fit(c.model, c.optimizer, c.scheduler, c.train_loader, c.val_loader, trainer, device=c.device,
                          interval=c.interval, loss_fn=c.task.loss, metrics=c.task.metrics, scaler=c.scaler,
                          logger=logger, save=checkpointer.save if checkpointer else None, stop=stop, state=state)
            if trainer.test_at_end:
                best = _best_checkpoint(run_dir, resume_from)
                metrics = {**(metrics or state.metrics), **test_best(c, best, logger, state.step)}
    except TrainingError as e:
        latest = checkpointer.latest if checkpointer else None
        raise TrainingError(f"{e}; {f'last good checkpoint: {latest}' if latest else 'no checkpoint yet'}") from e
    finally:
        if logger is not None:
            logger.close()
    log.info("final: %s", "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    log.info("run directory: %s", run_dir.resolve())
    return metrics


def _best_checkpoint(run_dir: Path, resume_from: Path | None) -> Path:
    """The run's ``best.pt``: its own; after a resume in a new directory with no new best since, the one of the
    run it resumed; failing both (deleted by hand), ``last.pt``, with a warning."""
    candidates = [run_dir / "checkpoints" / BEST, *([resume_from.with_name(BEST)] if resume_from else [])]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        found = run_dir / "checkpoints" / LAST
        log.warning("no best.pt in %s: testing %s instead", run_dir / "checkpoints", found)
    return found


def _mode(trainer: dict, task: Task) -> str | None:
    """A trainer config's monitor direction, ``auto`` resolved by ``task``; ``None`` where it can't be."""
    mode = trainer.get("monitor_mode")
    if mode in ("max", "min"):
        return mode
    try:
        return task.direction(trainer.get("monitor", ""))
    except ValueError:
        return None


def test_best(c: Components, best: Path, logger: Logger | None = None, step: int = 0) -> dict[str, float]:
    """Evaluates the weights of ``best`` (``best.pt``) on the test split, once, and logs ``test/*`` at x =
    ``step`` (the run's last). Under torchrun every process loads it after rank 0 has written it.

    Returns:
        ``test/loss``, ``test/<name>`` of every metric, and ``test/epoch``, the epoch ``best.pt`` was saved at.
    """
    if c.world.size > 1:
        torch.distributed.barrier()  # best.pt is complete on disk
    checkpoint = load_checkpoint(best)
    c.module.load_state_dict(checkpoint["model"])
    results = evaluate(c.model, c.test_loader, c.device, c.task.loss, c.task.metrics, c.trainer.precision, "test")
    results["test/epoch"] = checkpoint["train_state"]["epoch"]
    if logger is not None:
        logger.log(results, step)
    log.info("test (%s, epoch %d): %s", best.name, results["test/epoch"],
             "  ".join(f"{k} {v:.4f}" for k, v in results.items() if k != "test/epoch"))
    return results


register_resolvers()  # the config names them; composing it anywhere (tests, notebooks) needs them registered
