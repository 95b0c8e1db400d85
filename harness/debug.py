"""What the ``debug`` configs switch on: shorter epochs, a fixed set of batches to overfit, a profiler trace.

* ``trainer.limit_{train,val,test}_batches``: a count (an int: ``5`` batches) or a fraction (a float:
  ``0.25`` of them, at least one); ``1.0`` is all. :func:`limit_batches` wraps the loader, so everything
  that counts batches (the schedule's steps per epoch, the resume check, the loop) sees the shorter epoch.
* ``trainer.overfit_batches=N``: :class:`FixedBatches` holds the first N training batches and serves
  them every epoch, for training and validation alike, so a model that can learn drives the loss to 0.
* ``trainer.profile_steps=N``: :func:`profiler` records N optimizer steps (after one to wait and one to
  warm up) as a Chrome trace in ``<run dir>/profile``.
"""

from __future__ import annotations

import logging
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from harness.data import set_epoch

__all__ = ["check_limit", "limit_batches", "LimitedLoader", "FixedBatches", "profiler"]

log = logging.getLogger(__name__)


def check_limit(name: str, value: Any) -> None:
    """Raises ``ValueError`` unless ``value`` is a count (an int >= 1) or a fraction (a float in (0, 1])."""
    if isinstance(value, bool) or not (isinstance(value, int) and value >= 1 or
                                       isinstance(value, float) and 0 < value <= 1):
        raise ValueError(f"{name}={value!r} must be a number of batches (an integer >= 1) or a fraction of them "
                         "(a float in (0, 1], 1.0 = all)")


class LimitedLoader:
    """The first ``batches`` batches of ``loader``'s every epoch (its shuffle still changes by epoch)."""

    def __init__(self, loader, batches: int) -> None:
        self.loader, self.batches = loader, batches

    def set_epoch(self, epoch: int) -> None:
        set_epoch(self.loader, epoch)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        return islice(self.loader, self.batches)


def limit_batches(loader, limit: int | float):
    """``loader`` itself when ``limit`` keeps every batch, else a :class:`LimitedLoader` of ``limit`` batches
    (an int) or of that fraction of them (a float), at least one."""
    total = len(loader)
    batches = min(limit, total) if isinstance(limit, int) else max(1, int(limit * total))
    return loader if batches >= total else LimitedLoader(loader, batches)


class FixedBatches:
    """The first ``batches`` batches of ``loader``'s first epoch, read once and served every epoch as they
    are (augmented once, shuffled once)."""

    def __init__(self, loader, batches: int) -> None:
        set_epoch(loader, 0)
        self.batches = list(islice(loader, batches))

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def profiler(run_dir: str | Path, steps: int, device: torch.device) -> torch.profiler.profile:
    """A ``torch.profiler.profile`` that records ``steps`` optimizer steps, after one step to wait and one to
    warm up, and writes the trace into ``<run_dir>/profile``; the loop calls its ``step()`` after every
    optimizer step. The ``.pt.trace.json`` file opens in Perfetto (ui.perfetto.dev), chrome://tracing or
    TensorBoard's profile plugin (``torch-tb-profiler``)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    folder = Path(run_dir) / "profile"
    return torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=1, warmup=1, active=steps, repeat=1),
        on_trace_ready=torch.profiler.tensorboard_trace_handler(str(folder)),
        record_shapes=True,
    )
