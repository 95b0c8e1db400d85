"""Checkpoints: one dict of state dicts plus counters and RNG state, written atomically, read as data only.

Layout of a checkpoint (``torch.save`` of a dict; every value is a tensor or plain Python data, so
``torch.load(weights_only=True)`` reads it)::

    model, optimizer, scheduler   state dicts
    progress                      harness.loop.Progress as a dict (epoch, step, batch, loss sums, ...)
    rng                           python, numpy, torch (CPU), cuda (per device), loader (shuffle generator)
    best                          {"monitor", "mode", "value", "epoch"} of the best epoch so far
    metrics                       the last finished epoch's metrics
    steps_per_epoch, config, harness_version
"""

from __future__ import annotations

import io
import os
import random
import tempfile
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import CheckpointError

__all__ = [
    "REQUIRED_KEYS",
    "Checkpointer",
    "capture_rng",
    "restore_rng",
    "save_atomic",
    "load_checkpoint",
    "resolve_resume",
    "restore_training_state",
]

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "progress", "rng")
LAST, BEST = "last.pt", "best.pt"
_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms can't open a directory; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_atomic(directory: Path, name: str, write) -> Path:
    """Runs ``write(file)`` on a temporary file in ``directory``, fsyncs it, then renames it to ``name``.

    A process killed at any point leaves either the old ``name`` or the new one, never a partial file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    return directory / name


def save_atomic(state: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save(state)`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    path = Path(path)
    return _replace_atomic(path.parent, path.name, lambda f: torch.save(dict(state), f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Reads a checkpoint written by :class:`Checkpointer` as data (``weights_only=True``), onto the CPU.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, or not a harness checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"resume={path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged zip or pickle
        reason = " ".join(str(e).split())[:160]
        raise CheckpointError(
            f"resume={path} is not a readable checkpoint (truncated or corrupt: {reason}); "
            f"resume from another one, e.g. {path.with_name(BEST)}, or start fresh without resume="
        ) from e
    missing = [k for k in REQUIRED_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise CheckpointError(f"resume={path} is not a harness checkpoint (it has no {', '.join(missing)})")
    return checkpoint


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """The checkpoint a ``resume`` setting points at, or ``None`` to start fresh.

    Args:
        resume: ``None`` (start fresh), ``"auto"`` (``run_dir/checkpoints/last.pt`` if it exists, else
            fresh), a run directory (its ``checkpoints/last.pt``), or a ``.pt`` file.
        run_dir: this run's directory.

    Raises:
        CheckpointError: an explicit path holds no checkpoint.
    """
    if resume is None:
        return None
    if resume == "auto":
        last = Path(run_dir) / "checkpoints" / LAST
        return last if last.is_file() else None
    path = Path(resume)
    if path.is_dir():
        last = path / "checkpoints" / LAST
        if not last.is_file():
            raise CheckpointError(f"resume={resume}: no checkpoint at {last}; pass a run directory or a .pt file")
        return last
    if not path.is_file():
        raise CheckpointError(f"resume={resume}: no such run directory or checkpoint file")
    return path


def capture_rng(loader_state: torch.Tensor) -> dict[str, Any]:
    """Every generator training draws from, as tensors and plain data.

    Args:
        loader_state: state of the training loader's shuffle generator at the start of the current epoch.
    """
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    return {
        # 625 ints as one tensor: pickled one by one they cost more than the model's weights here
        "python": (version, torch.tensor(internal, dtype=torch.int64), gauss),
        "numpy": {**np_state, "state": {**np_state["state"], "key": torch.from_numpy(np_state["state"]["key"].copy())}},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": loader_state,
    }


def restore_rng(rng: Mapping[str, Any]) -> None:
    """Puts back the global generators saved by :func:`capture_rng` (the loader's is restored by the loop)."""
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    np_state = dict(rng["numpy"])
    np_state["state"] = {**np_state["state"], "key": np_state["state"]["key"].numpy()}
    np.random.set_state(np_state)
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"][: torch.cuda.device_count()])


# What a scheduler's state holds about progress; everything else in it is a setting, which on resume
# comes from the current config (so a longer trainer.max_epochs stretches the schedule).
_SCHEDULER_PROGRESS = ("last_epoch", "_step_count")


def restore_training_state(checkpoint: Mapping[str, Any], model, optimizer, scheduler) -> None:
    """Loads the checkpoint's weights and optimizer state into freshly built objects.

    Settings come from the objects as built now (the current config): the optimizer's hyper-parameters
    and, for closed-form schedules, every schedule setting; the checkpoint gives the learned state and
    the schedule's position. A schedule without a closed form keeps the checkpoint's settings and LRs.

    Raises:
        CheckpointError: the model or optimizer does not fit the checkpoint's.
    """
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))[:200]
        raise CheckpointError(
            f"cannot resume: the model differs from the checkpoint's ({detail}); "
            "resume with the model settings the checkpoint was trained with"
        ) from e
    closed_form = hasattr(scheduler, "_get_closed_form_lr")
    settings = [
        {k: v for k, v in group.items() if k != "params" and (closed_form or k != "lr")}
        for group in optimizer.param_groups
    ]
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume: the optimizer differs from the checkpoint's ({e})") from e
    for group, fresh in zip(optimizer.param_groups, settings):
        group.update(fresh)
    saved = checkpoint["scheduler"]
    if not closed_form:
        scheduler.load_state_dict(saved)
        return
    position = {k: saved[k] for k in _SCHEDULER_PROGRESS if k in saved}
    scheduler.load_state_dict({**scheduler.state_dict(), **position})
    for group, lr in zip(optimizer.param_groups, scheduler._get_closed_form_lr()):
        group["lr"] = lr
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


class Checkpointer:
    """Writes ``last.pt`` after every epoch (and on a requested stop) and ``best.pt`` when the monitored
    metric improves, into ``directory``.

    ``save`` serialises the state at once (so training can go on changing it) and hands the file writes
    (temporary file, fsync, rename) to a background thread, where they wait on the disk without holding
    up training (they release the GIL; serialising would not). At most one write is in flight; ``wait``
    (or leaving the ``with`` block) blocks until it is on disk and re-raises a
    failed write.

    Args:
        directory: where checkpoints go, ``<run dir>/checkpoints``.
        monitor: the metric that decides ``best.pt``, e.g. ``"val/acc"``.
        mode: ``"max"`` or ``"min"``: which direction is better.
        extra: plain data stored in every checkpoint (the resolved config, the harness version).
        best: the best ``{"value", "epoch"}`` so far, from the checkpoint being resumed.
    """

    def __init__(
        self,
        directory: str | Path,
        monitor: str = "val/acc",
        mode: str = "max",
        extra: Mapping[str, Any] | None = None,
        best: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode={mode!r} must be 'max' or 'min'")
        self.directory = Path(directory)
        self.monitor, self.mode = monitor, mode
        self.extra = dict(extra or {})
        self.best = {"monitor": monitor, "mode": mode, "value": None, "epoch": 0}
        if best and best.get("monitor") == monitor and best.get("mode") == mode:
            self.best.update(value=best["value"], epoch=best["epoch"])
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future | None = None

    @property
    def last_path(self) -> Path:
        return self.directory / LAST

    def improved(self, metrics: Mapping[str, float]) -> bool:
        """Whether the monitored metric in ``metrics`` beats the best so far."""
        value, best = metrics[self.monitor], self.best["value"]
        return best is None or (value > best if self.mode == "max" else value < best)

    def save(self, state: Mapping[str, Any], metrics: Mapping[str, float] | None = None) -> Path:
        """Writes ``last.pt``; with an epoch's ``metrics``, also ``best.pt`` when the monitored one improved.

        Raises:
            KeyError: ``metrics`` lacks the monitored metric.
        """
        improved = False
        if metrics is not None:
            improved = self.improved(metrics)
            if improved:
                self.best.update(value=metrics[self.monitor], epoch=int(metrics["epoch"]))
        buffer = io.BytesIO()
        torch.save({**state, "best": dict(self.best), **self.extra}, buffer)
        self.wait()
        self._pending = self._writer.submit(self._write, buffer.getbuffer(), improved)
        return self.last_path

    def _write(self, payload: memoryview, improved: bool) -> None:
        _replace_atomic(self.directory, LAST, lambda f: f.write(payload))
        if improved:
            _replace_atomic(self.directory, BEST, lambda f: f.write(payload))

    def wait(self) -> None:
        """Blocks until the last ``save`` is on disk; re-raises its error if the write failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Waits for the last write, then stops the writer thread."""
        try:
            self.wait()
        finally:
            self._writer.shutdown(wait=True)

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
