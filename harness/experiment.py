"""Runs a training run from a composed Hydra config (the entry layer's core): its directory, resume, the
loop, the final test; and the OmegaConf resolvers ``conf/`` names. The parts come from :mod:`harness.build`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from harness import distributed
from harness.build import Components, build, build_loggers
from harness.checkpoint import BEST, LAST, Checkpointer, load_checkpoint, resolve_resume, restore_training_state
from harness.config import metric_direction_of, validate
from harness.debug import profiler
from harness.distributed import broadcast_object, world
from harness.ema import evaluation_weights
from harness.errors import CheckpointError, ConfigError, TrainingError
from harness.loggers import Logger, LoggerGroup
from harness.loop import TrainState, evaluate, finished_reason, fit, monitor_direction
from harness.rundir import RunLock, claim, claim_as, note_created, remove_if_unused
from harness.signals import StopOnSignal
from harness.tasks import Task
from harness.version import __version__

__all__ = ["run", "test_best", "config_changes", "resume_run_dir", "unique_dir", "hydra_subdir", "run_stamp",
           "fraction_of", "job_name", "register_resolvers", "hparams_overridden_first"]

log = logging.getLogger(__name__)

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
            "(data.batch_size, the data, trainer.limit_train_batches or overfit_batches changed); resume with "
            "the checkpoint's settings"
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
        done = finished_reason(TrainState.from_state_dict(checkpoint["train_state"]), trainer) if checkpoint else None
        if done is not None:
            log.info("%s: %s, nothing to train%s", resume_from, done, "; testing best.pt again"
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


def _in_place(resume_from: Path, run_dir: Path) -> bool:
    """Whether a resume from ``resume_from`` (``<run dir>/checkpoints/<file>``) continues in its own ``run_dir``."""
    return resume_from.parent.parent.resolve() == run_dir.resolve()


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
    if resume_from is None or _in_place(resume_from, run_dir):
        return
    newer = resume_from.with_name(LAST)
    kept = resume_from.parent.name == "checkpoints" and newer.exists()
    why = f"; {newer}, which is newer, stays as it is" if kept else ""
    log.warning("resuming from %s in a new run directory, %s%s", resume_from, run_dir, why)


def _restore(checkpoint: dict, config: dict, c: Components) -> TrainState:
    """Loads a checkpoint into the built run; forgets the rankings of a metric the run no longer monitors."""
    _check_resumable(checkpoint, config, c)
    state = restore_training_state(checkpoint, c.module, c.optimizer, c.scheduler, c.scaler, c.ema)
    old = checkpoint.get("config", {}).get("trainer", {})
    old_stopping, stopping = old.get("early_stopping", {}), c.trainer.early_stopping
    if _ranking(old.get("monitor"), old.get("monitor_mode"), c.task) != _ranking(
            c.trainer.monitor, c.trainer.monitor_mode, c.task):
        state.best, state.best_epoch, state.top_k = None, 0, []  # a best of another metric is no best of this one
    if _ranking(old_stopping.get("monitor"), old_stopping.get("mode"), c.task) != _ranking(
            stopping.monitor, stopping.mode, c.task):
        state.early_stop = {}
    return state


def _open_loggers(cfg: DictConfig, run_dir: Path, state: TrainState, checkpoint: dict | None,
                  resume_from: Path | None) -> LoggerGroup:
    """The run's loggers. A resume in the run's own directory continues its logger runs (MLflow's, W&B's);
    one in a new directory starts new ones, as it starts a new TensorBoard run."""
    in_place = resume_from is not None and _in_place(resume_from, run_dir)
    run_ids = checkpoint.get("loggers", {}) if checkpoint is not None and in_place else {}
    return build_loggers(cfg.get("logger"), run_dir, purge_step=state.step + 1 if checkpoint else None,
                         run_ids=run_ids)


def _train(cfg: DictConfig, c: Components, run_dir: Path, checkpoint: dict | None,
           resume_from: Path | None) -> dict[str, float]:
    config = OmegaConf.to_container(cfg, resolve=True)
    state = _restore(checkpoint, config, c) if checkpoint is not None else TrainState()
    if checkpoint is not None:
        log.info("resuming from %s at epoch %d, step %d", resume_from, state.epoch, state.step)
    main = c.world.is_main  # only rank 0 writes logs, checkpoints and the progress bar
    if not main:
        logging.getLogger("harness").setLevel(logging.WARNING)
    finished = finished_reason(state, c.trainer) is not None  # only the test is left to do
    loggers = _open_loggers(cfg, run_dir, state, checkpoint, resume_from) if main and not finished else \
        LoggerGroup({})
    extra = {"config": config, "harness_version": __version__, "steps_per_epoch": len(c.train_loader),
             "loggers": loggers.run_ids}
    checkpointer = Checkpointer(run_dir / "checkpoints", c.module, c.optimizer, c.scheduler, c.scaler, extra,
                                latest=str(resume_from) if resume_from else None, ema=c.ema,
                                monitor=c.trainer.monitor) if main else None
    trainer = c.trainer if main else dataclasses.replace(c.trainer, progress_bar=False)
    tracing = profiler(run_dir, trainer.profile_steps, c.device) if main and trainer.profile_steps and not \
        finished else contextlib.nullcontext()
    try:
        with loggers, StopOnSignal() as stop:  # the loggers close last, with how the run ended
            tests = c.task.names("test") if trainer.test_at_end else []
            loggers.log_hparams(hparams_overridden_first(config), ["train/epoch_loss", *c.task.names("val"), *tests])
            with tracing as trace:
                metrics = fit(c.model, c.optimizer, c.scheduler, c.train_loader, c.val_loader, trainer,
                              device=c.device, interval=c.interval, loss_fn=c.task.loss, metrics=c.task.metrics,
                              scaler=c.scaler, logger=loggers, save=checkpointer.save if checkpointer else None,
                              stop=stop, state=state, ema=c.ema, profiler=trace)
            if trace is not None:
                _report_trace(run_dir / "profile", trainer.profile_steps)
            if trainer.test_at_end:
                best = _best_checkpoint(run_dir, resume_from)
                metrics = {**(metrics or state.metrics), **test_best(c, best, loggers, state.step)}
    except TrainingError as e:
        latest = checkpointer.latest if checkpointer else None
        raise TrainingError(f"{e}; {f'last good checkpoint: {latest}' if latest else 'no checkpoint yet'}") from e
    except RuntimeError as e:
        if trainer.deterministic and "does not have a deterministic implementation" in str(e):
            op = str(e).split(" does not have")[0]
            raise ConfigError(f"trainer.deterministic=true, but {op} has no deterministic implementation on "
                              f"{c.device}; set trainer.deterministic=false (or avoid that op)") from e
        raise
    log.info("final: %s", "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    log.info("run directory: %s", run_dir.resolve())
    return metrics


def _report_trace(folder: Path, steps: int) -> None:
    """Says where the profiler's trace is, or why there is none."""
    traces = sorted(folder.glob("*.pt.trace.json"))
    if traces:
        log.info("profiler trace (trainer.profile_steps=%d): %s; open it in ui.perfetto.dev or TensorBoard's "
                 "profile plugin", steps, traces[-1])
    else:
        log.warning("no profile written: the run ended before the profiler's %d steps (it waits 1 and warms up 1); "
                    "lower trainer.profile_steps or train longer", steps)


def _best_checkpoint(run_dir: Path, resume_from: Path | None) -> Path:
    """The run's ``best.pt``: its own; after a resume in a new directory with no new best since, the one of the
    run it resumed; failing both (deleted by hand), ``last.pt``, with a warning."""
    candidates = [run_dir / "checkpoints" / BEST, *([resume_from.with_name(BEST)] if resume_from else [])]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        found = run_dir / "checkpoints" / LAST
        log.warning("no best.pt in %s: testing %s instead", run_dir / "checkpoints", found)
    return found


def _ranking(monitor: str | None, mode: str | None, task: Task) -> tuple[str | None, str | None]:
    """A metric and its direction (``auto`` resolved by ``task``; ``None`` where it can't be): what a best is."""
    try:
        return monitor, monitor_direction(monitor or "", mode or "auto", task.metrics)
    except ValueError:
        return monitor, None


def test_best(c: Components, best: Path, logger: Logger | None = None, step: int = 0) -> dict[str, float]:
    """Evaluates the weights of ``best`` (``best.pt``) on the test split, once, and logs ``test/*`` at x =
    ``step`` (the run's last). Under torchrun every process loads it after rank 0 has written it.

    Returns:
        ``test/loss``, ``test/<name>`` of every metric, and ``test/epoch``, the epoch ``best.pt`` was saved at.
    """
    if c.world.size > 1:
        torch.distributed.barrier()  # best.pt is complete on disk
    checkpoint = load_checkpoint(best)
    c.module.load_state_dict(evaluation_weights(checkpoint))  # its EMA, with trainer.ema_decay
    results = evaluate(c.model, c.test_loader, c.device, c.task.loss, c.task.metrics, c.trainer.precision, "test")
    results["test/epoch"] = checkpoint["train_state"]["epoch"]
    if logger is not None:
        logger.log(results, step)
    log.info("test (%s, epoch %d): %s", best.name, results["test/epoch"],
             "  ".join(f"{k} {v:.4f}" for k, v in results.items() if k != "test/epoch"))
    return results


register_resolvers()  # the config names them; composing it anywhere (tests, notebooks) needs them registered
