"""The metrics writer: scalars to TensorBoard event files, keyed by the global optimizer step."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["TensorBoardLogger"]


def _wait_for_a_later_second(log_dir: Path) -> None:
    """Event files are read in name order, and names start with the creation second: a resumed run's file
    must not share the interrupted one's second, or it could be read first and the purge undone."""
    names = [p.name.split(".") for p in log_dir.glob("events.out.tfevents.*")]
    stamps = [int(parts[3]) for parts in names if parts[3].isdigit()]
    if stamps and max(stamps) >= int(time.time()):
        time.sleep(max(stamps) + 1 - time.time())


class TensorBoardLogger:
    """Writes ``{tag: value}`` scalars at a step into event files under ``log_dir``.

    Each ``log`` call becomes one event holding all its scalars, built directly as a protobuf (torch's
    ``add_scalar`` costs tens of microseconds per value); the event file writer queues it and writes it
    from its own thread, so logging does not hold up a training step. Use as a context manager (or call
    ``close``) so every event reaches the disk, even when training fails.

    Args:
        log_dir: the run directory.
        purge_step: on resume, the first step the resumed run will log: TensorBoard hides points at or
            after it that an interrupted run wrote, so curves continue without overlap.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only pay for it when logging

        self.log_dir = Path(log_dir)
        if purge_step is not None:
            _wait_for_a_later_second(self.log_dir)
        self._summary = Summary
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        self._file = self._writer._get_file_writer()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Writes each scalar in ``metrics`` at x = ``step``."""
        values = [self._summary.Value(tag=tag, simple_value=float(v)) for tag, v in metrics.items()]
        self._file.add_summary(self._summary(value=values), global_step=step)

    def log_hparams(self, hparams: Mapping[str, object], metric_tags: list[str]) -> None:
        """Records the run's hyper-parameters for TensorBoard's HParams tab, with ``metric_tags`` (scalar tags
        this run logs) as the metrics to compare. Values that are not numbers, strings or bools are written
        as strings."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
        for summary in hparams_summary(clean, {tag: 0.0 for tag in metric_tags}):
            self._file.add_summary(summary)

    def close(self) -> None:
        """Flushes pending events to disk and closes the file."""
        self._writer.flush()
        self._writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
