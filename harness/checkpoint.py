"""Checkpoints: one dict of state dicts plus counters and RNG state, written atomically, read as data only.

Layout of a checkpoint (``torch.save`` of a dict; every value is a tensor or plain Python data, so
``torch.load(weights_only=True)`` reads it)::

    model, optimizer, scheduler, scaler   state dicts (scaler: empty unless fp16)
    ema                                   the AveragedModel's state dict with trainer.ema_decay, else empty
    train_state                           harness.loop.TrainState as a dict (epoch, step, batch, loss sums, best,
                                          the top-k ranking, the early-stopping record)
    rng                                   python, numpy, torch (CPU), cuda (per device)
    extra keys                            what the run adds: config, harness_version, steps_per_epoch, loggers

In ``<run dir>/checkpoints``: ``last.pt`` (the newest), ``best.pt`` (the best by ``trainer.monitor``) and,
with ``trainer.save_top_k=k``, the k best as ``epoch012-val_acc_0.9833.pt`` (:func:`top_k_name`).
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.checkpoint_schema import REQUIRED_KEYS, check_checkpoint
from harness.cli import hydra_value
from harness.ema import load_ema
from harness.errors import CheckpointError
from harness.loop import TrainState
from harness.schedulers import ClosedFormScheduler

__all__ = ["REQUIRED_KEYS", "Checkpointer", "capture_rng", "restore_rng", "save_atomic", "serialize", "write_atomic",
           "load_checkpoint", "resolve_resume", "restore_training_state", "top_k_name"]

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"


def _slug(metric: str) -> str:
    return re.sub(r"[^\w.-]", "_", metric)


def top_k_name(epoch: int, metric: str, value: float) -> str:
    """A top-k checkpoint's file name: its epoch, then the monitored metric and value, ``epoch012-val_acc_0.9833.pt``
    (characters that need quoting in a shell or a Hydra override become ``_``)."""
    return f"epoch{epoch:03d}-{_slug(metric)}_{value:.4g}.pt"


def write_atomic(path: str | Path, data: bytes | memoryview) -> Path:
    """Writes ``data`` to a temporary file beside ``path``, fsyncs it, renames it over ``path`` with
    ``os.replace`` and fsyncs the directory: a process killed at any point leaves ``path`` old or new,
    never partial.

    Raises:
        OSError: the write failed (a full disk, say); ``path`` is as it was and no temporary file is left.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # some platforms can't open a directory; the rename is atomic all the same
        return path
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)
    return path


def serialize(state: Mapping[str, Any]) -> memoryview:
    """``torch.save(state)`` into memory. Written out in one piece, it costs less than ``torch.save``
    straight into a file, which writes each tensor's record separately (Lightning saves this way too)."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getbuffer()


def save_atomic(state: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save(state)`` to ``path`` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, serialize(state))


def load_checkpoint(path: str | Path, key: str = "resume") -> dict[str, Any]:
    """Reads a checkpoint written by :class:`Checkpointer` as data (``weights_only=True``), onto the CPU.

    Args:
        path: the file.
        key: the setting that named it, for the messages (``resume``, or ``eval.py``'s ``ckpt_path``).

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, or not a harness checkpoint.
    """
    path = Path(path)
    fresh = ", or start fresh without resume=" if key == "resume" else ""
    if not path.is_file():
        raise CheckpointError(f"{key}={path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged zip or pickle
        reason = " ".join(str(e).split())[:160]
        other = next((p for p in (path.with_name(BEST), path.with_name(LAST)) if p != path and p.is_file()), None)
        instead = f"use another one, e.g. {key}={other}" if other else "use another checkpoint"
        raise CheckpointError(
            f"{key}={path} is not a readable checkpoint (truncated or corrupt: {reason}); {instead}{fresh}"
        ) from e
    try:
        check_checkpoint(checkpoint)
    except ValueError as e:
        raise CheckpointError(f"{key}={path} is not a harness checkpoint ({e}); use one this harness wrote{fresh}"
                              ) from e
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


def capture_rng() -> dict[str, Any]:
    """Every global generator training draws from (dropout, augmentations), as tensors and plain numbers.

    Python's and NumPy's 624-word Mersenne Twister states are stored as int64 tensors: ``weights_only``
    loading reads them, and pickling one tensor is far cheaper than 624 Python ints.
    """
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {**numpy_state,
                  "state": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                            "pos": numpy_state["state"]["pos"]}},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def restore_rng(rng: Mapping[str, Any]) -> None:
    """Puts back the generators saved by :func:`capture_rng`."""
    python = rng["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy_state = rng["numpy"]
    key = numpy_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state({**numpy_state, "state": {"key": key, "pos": numpy_state["state"]["pos"]}})
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"][: torch.cuda.device_count()])


def restore_training_state(checkpoint: Mapping[str, Any], model, optimizer, scheduler,
                           scaler: torch.amp.GradScaler | None = None, ema=None) -> TrainState:
    """Loads a checkpoint into freshly built objects (and its EMA of the weights into ``ema``, see
    :func:`harness.ema.load_ema`) and the global RNGs; returns its training state.

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
    closed_form = isinstance(scheduler, ClosedFormScheduler)  # its LRs follow from the config and the position
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
    expected, saved = set(scheduler.state_dict()), set(checkpoint["scheduler"])
    if expected != saved:  # torch's schedulers would take any keys, silently
        differ = ", ".join(sorted(expected ^ saved))
        raise CheckpointError(f"cannot resume: the scheduler differs from the checkpoint's (settings that differ: "
                              f"{differ}); resume with the scheduler it was trained with")
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and scaler.is_enabled() and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    load_ema(ema, checkpoint)
    restore_rng(checkpoint["rng"])
    return TrainState.from_state_dict(checkpoint["train_state"])


class Checkpointer:
    """Saves the run's state as ``last.pt`` (and ``best.pt``, and the top-k files) in ``directory``,
    synchronously: when :meth:`save` returns, the files are on disk.

    Args:
        directory: where checkpoints go, ``<run dir>/checkpoints``.
        model: the plain module (not its DDP or compile wrapper), whose ``state_dict`` is saved.
        optimizer, scheduler, scaler, ema: saved with it (``scaler`` and ``ema`` where there are some).
        extra: plain data stored in every checkpoint (the resolved config, the harness version, ...).
        latest: the checkpoint the run resumed from, if any.
        monitor: the metric ``TrainState.top_k`` ranks by, for the top-k files' names.
    """

    def __init__(self, directory: str | Path, model: torch.nn.Module, optimizer, scheduler,
                 scaler: torch.amp.GradScaler | None = None, extra: Mapping[str, Any] | None = None,
                 latest: str | None = None, ema: torch.nn.Module | None = None, monitor: str = "val/loss") -> None:
        self.directory = Path(directory)
        self.latest = latest  # the newest checkpoint written (or resumed from), for messages
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.ema, self.monitor = ema, monitor
        self.extra = dict(extra or {})
        for stale in self.directory.glob(".*.tmp"):  # left by a process killed mid-write; never read
            stale.unlink(missing_ok=True)

    @property
    def last_path(self) -> Path:
        return self.directory / LAST

    def state(self, train_state: TrainState) -> dict[str, Any]:
        """The checkpoint dict: every state dict, the training state and the RNG states."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None and self.scaler.is_enabled() else {},
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "train_state": train_state.state_dict(),
            "rng": capture_rng(),
            **self.extra,
        }

    def save(self, train_state: TrainState, is_best: bool = False) -> str:
        """Writes ``last.pt``, ``best.pt`` with the same bytes when ``is_best``, and the top-k file of an epoch
        that entered ``train_state.top_k``; then removes the top-k files that dropped out of it (only now,
        so a crash in between leaves one too many, never one too few). Returns what it wrote.

        Raises:
            CheckpointError: a file could not be written (a full disk, say); the previous one is intact.
        """
        data = serialize(self.state(train_state))
        top_k = {top_k_name(int(epoch), self.monitor, value): epoch for value, epoch in train_state.top_k}
        new = [self.directory / name for name, epoch in top_k.items()  # this epoch's, at its end
               if epoch == train_state.epoch and train_state.batch == 0 and not (self.directory / name).exists()]
        for path in [self.last_path, *([self.directory / BEST] if is_best else []), *new]:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                write_atomic(path, data)
            except OSError as e:
                kept = f"the previous {path.name} is intact" if path.exists() else "no earlier one to keep"
                raise CheckpointError(
                    f"could not write {path} ({e.strerror or e}); {kept}; free some space (or move the run) "
                    f"and resume with {shlex.quote('resume=' + hydra_value(str(self.directory.parent)))}"
                ) from e
        self.latest = f"{self.last_path} (epoch {train_state.epoch}, step {train_state.step})"
        self._remove_dropped(set(top_k) if train_state.top_k else None)
        return self.latest

    def _remove_dropped(self, top_k: set[str] | None) -> None:
        """Removes this monitor's top-k files whose names are not in ``top_k`` (nothing when it is ``None``:
        top-k is off, and files of an earlier run with it on are left alone)."""
        ours = re.compile(rf"epoch\d{{3,}}-{re.escape(_slug(self.monitor))}_-?\d[\d.]*(e[-+]\d+)?\.pt")
        for path in self.directory.glob("epoch*.pt") if top_k is not None else []:
            if ours.fullmatch(path.name) and path.name not in top_k:
                try:
                    path.unlink(missing_ok=True)
                except OSError as e:  # it stays; the next save tries again
                    log.warning("could not remove %s, no longer among the trainer.save_top_k best (%s)", path,
                                e.strerror or e)
