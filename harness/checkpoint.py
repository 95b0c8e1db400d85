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

import atexit
import io
import os
import random
import threading
import weakref
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import CheckpointError

__all__ = [
    "REQUIRED_KEYS",
    "Checkpointer",
    "capture_rng",
    "loader_rng_state",
    "restore_rng",
    "save_atomic",
    "write_atomic",
    "load_checkpoint",
    "resolve_resume",
    "restore_training_state",
]

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "progress", "rng")
LAST, BEST = "last.pt", "best.pt"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms can't open a directory; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes | memoryview) -> None:
    # plain os calls: each Python-level call a background writer makes is a GIL round trip with training
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask applies, as to any new file
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    directory: str | Path, names: Sequence[str], data: bytes | memoryview, *, sync_directory: bool = True
) -> None:
    """Writes ``data`` as each of ``names`` in ``directory``, atomically: one temporary file, fsynced,
    hard-linked to every further name (copied where the file system has no hard links), renamed over
    each name with ``os.replace``, then (with ``sync_directory``) the directory fsynced.

    A process killed at any point leaves each name either old or new, never a partial file. Without
    ``sync_directory`` the same holds after a power cut, but the renames may not have reached the disk
    yet, so a name can come back old; fsync the directory later to make them durable.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{names[0]}.{os.getpid()}.tmp"
    extras = [tmp.with_name(f".{name}.{os.getpid()}.tmp") for name in names[1:]]
    try:
        _write_synced(tmp, data)
        for name, extra in zip(names[1:], extras):
            try:
                os.link(tmp, extra)
            except FileExistsError:
                os.unlink(extra)  # left by a process killed mid-write
                os.link(tmp, extra)
            except OSError:
                _write_synced(extra, data)
            os.replace(extra, directory / name)
        os.replace(tmp, directory / names[0])
    except BaseException:
        for path in (tmp, *extras):
            path.unlink(missing_ok=True)
        raise
    if sync_directory:
        _fsync_dir(directory)


def save_atomic(state: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save(state)`` to ``path`` atomically (see :func:`write_atomic`)."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    write_atomic(path.parent, [path.name], buffer.getbuffer())
    return path


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


def _bytes(state: torch.Tensor) -> bytes:
    return state.numpy().tobytes()


def _byte_tensor(state: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(state), dtype=torch.uint8)


def capture_rng(loader_state: torch.Tensor) -> dict[str, Any]:
    """Every generator training draws from, as plain data (bytes, ints, floats).

    Generator states are stored as ``bytes``, not tensors: each tensor costs ``torch.save`` a record of its
    own (tens of microseconds), and a checkpoint is written every epoch.

    Args:
        loader_state: state of the training loader's shuffle generator at the start of the current epoch.
    """
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "python": (version, array("Q", internal).tobytes(), gauss),
        "numpy": {**np_state, "state": {**np_state["state"], "key": np_state["state"]["key"].tobytes()}},
        "torch": _bytes(torch.get_rng_state()),
        "cuda": [_bytes(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_initialized() else [],
        "loader": _bytes(loader_state),
    }


def loader_rng_state(rng: Mapping[str, Any]) -> torch.Tensor:
    """The training loader's generator state saved by :func:`capture_rng`, for ``Generator.set_state``."""
    return _byte_tensor(rng["loader"])


def restore_rng(rng: Mapping[str, Any]) -> None:
    """Puts back the global generators saved by :func:`capture_rng` (the loader's is restored by the loop,
    with :func:`loader_rng_state`)."""
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(array("Q", internal)), gauss))
    np_state = dict(rng["numpy"])
    np_state["state"] = {**np_state["state"], "key": np.frombuffer(np_state["state"]["key"], dtype=np.uint32)}
    np.random.set_state(np_state)
    torch.set_rng_state(_byte_tensor(rng["torch"]))
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_byte_tensor(s) for s in rng["cuda"][: torch.cuda.device_count()]])


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


_OPEN: weakref.WeakSet = weakref.WeakSet()  # checkpointers with a writer thread, flushed at exit


@atexit.register
def _flush_open_checkpointers() -> None:
    for checkpointer in list(_OPEN):
        checkpointer.close()


class Checkpointer:
    """Writes ``last.pt`` whenever the loop saves (after epochs, at the cadence ``fit`` is given, and on a
    requested stop) and ``best.pt`` with it when the monitored metric improves, into ``directory``.

    ``save`` serialises the state at once (so training can go on changing it) and hands the file writes
    (temporary file, fsync, rename: see :func:`write_atomic`) to a background thread, where they wait on
    the disk without holding up training (they release the GIL; serialising would not). Saving never
    waits for an earlier write: when the disk is slower than the epochs, a file still waiting to be
    written is replaced by the newer state for it, so the newest state always goes to disk next.
    ``wait`` (or ``close``, or leaving the ``with`` block) blocks until everything saved is on disk,
    renames included (the directory is fsynced there, once, rather than after every epoch's rename), and
    re-raises a failed write. The thread starts with the ``Checkpointer`` and ends with ``close``, which an
    ``atexit`` hook also calls. Temporary files that a process killed mid-write left in ``directory`` are
    removed when a ``Checkpointer`` is made for it (on resume).

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
        self._changed = threading.Condition()
        self._queued: dict[str, memoryview] = {}  # file name -> newest payload not yet written
        self._writing = False
        self._renamed = False  # renames since the directory was last fsynced
        self._error: BaseException | None = None
        self._closed = False
        for stale in self.directory.glob(".*.tmp"):  # a process killed mid-write left it; it is never read
            stale.unlink(missing_ok=True)
        # Started now, before training: started at the first save, the thread waits for a core that
        # training keeps busy, and that save stalls for milliseconds.
        self._thread = threading.Thread(target=self._write_queued, name="checkpoint-writer", daemon=True)
        self._thread.start()
        _OPEN.add(self)

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
            OSError: an earlier write failed (e.g. the disk is full).
        """
        improved = False
        if metrics is not None:
            improved = self.improved(metrics)
            if improved:
                self.best.update(value=metrics[self.monitor], epoch=int(metrics["epoch"]))
        buffer = io.BytesIO()
        torch.save({**state, "best": dict(self.best), **self.extra}, buffer)
        payload = buffer.getbuffer()
        with self._changed:
            self._raise_failed_write()
            if self._closed:
                raise RuntimeError("this Checkpointer is closed")
            self._queued[LAST] = payload
            if improved:
                self._queued[BEST] = payload
            self._changed.notify_all()
        return self.last_path

    def _write_queued(self) -> None:
        while True:
            with self._changed:
                while not self._queued and not self._closed:
                    self._changed.wait()
                if not self._queued:
                    return  # closed, and everything is written
                files, self._queued, self._writing = self._queued, {}, True
            renamed, error = False, None
            try:
                for payload in {id(payload): payload for payload in files.values()}.values():
                    names = [name for name in files if files[name] is payload]
                    write_atomic(self.directory, names, payload, sync_directory=False)
                    renamed = True
            except BaseException as e:  # handed to the training thread by the next save or wait
                error = e
            with self._changed:
                self._renamed = self._renamed or renamed
                self._error = self._error or error
                self._writing = False
                self._changed.notify_all()

    def _raise_failed_write(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def wait(self) -> None:
        """Blocks until everything saved so far is on disk; re-raises the error of a failed write."""
        with self._changed:
            while self._queued or self._writing:
                self._changed.wait()
            if self._renamed:
                self._renamed = False
                _fsync_dir(self.directory)
            self._raise_failed_write()

    def close(self) -> None:
        """Waits for the pending writes, then stops the writer thread."""
        try:
            self.wait()
        finally:
            with self._changed:
                self._closed = True
                self._changed.notify_all()
            if self._thread is not threading.current_thread():
                self._thread.join()
            _OPEN.discard(self)

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
