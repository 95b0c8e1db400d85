"""Metric loggers: one tiny shape, ``log(metrics, step)`` and ``close()``, written to TensorBoard or kept in memory."""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from harness.errors import RunDirError

__all__ = ["Logger", "MemoryLogger", "TensorBoardLogger"]


class Logger(Protocol):
    """What the loop logs to: scalars keyed by tag, at x = the global optimizer step."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class MemoryLogger:
    """Keeps every logged row in ``rows``, for tests and notebooks."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))

    def series(self, tag: str) -> list[tuple[int, float]]:
        """``(step, value)`` of every row that has ``tag``."""
        return [(step, m[tag]) for step, m in self.rows if tag in m]

    def close(self) -> None:
        pass


def _wait_for_a_later_second(log_dir: Path) -> None:
    """TensorBoard reads a run's event files in name order, and a name starts with the second the file was
    made: a resumed run's file must not share the interrupted one's second, or it may be read first and its
    ``purge_step`` be undone."""
    names = [p.name.split(".") for p in log_dir.glob("events.out.tfevents.*")]
    stamps = [int(parts[3]) for parts in names if parts[3].isdigit()]
    if stamps and max(stamps) >= int(time.time()):
        time.sleep(max(stamps) + 1 - time.time())


class TensorBoardLogger:
    """Scalars into ``log_dir`` through ``torch.utils.tensorboard.SummaryWriter``.

    Args:
        log_dir: the run directory.
        purge_step: on resume, the first step the resumed run will log: TensorBoard hides the points at or
            after it that the interrupted run wrote, so the curves go on without overlap.
        flush_secs: the longest a logged value waits in memory before it reaches the file.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None, flush_secs: int = 10) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported here: runs that log nothing don't pay for it

        log_dir = self.log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        if purge_step is not None:
            _wait_for_a_later_second(log_dir)
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=flush_secs)

    @contextmanager
    def _writing(self):
        """The writer's own thread reports a failed write (a full disk) at the next call: one line, not a
        traceback."""
        try:
            yield
        except OSError as e:
            raise RunDirError(f"could not write TensorBoard events in {self.log_dir} ({e.strerror or e}); "
                              "free some space, then resume the run") from e

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Records each scalar in ``metrics`` at x = ``step``."""
        with self._writing():
            for tag, value in metrics.items():
                self.writer.add_scalar(tag, value, step)

    def log_hparams(self, hparams: Mapping[str, object], metric_tags: list[str]) -> None:
        """Records the run's hyper-parameters for TensorBoard's HParams tab, with ``metric_tags`` (scalar tags this
        run logs) as the metrics to compare. Values other than numbers and strings are written as strings."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        values = {k: v if isinstance(v, (int, float, str)) else str(v) for k, v in hparams.items()}
        # The metrics' values come from their scalar curves; the summaries only name them.
        with self._writing():
            for summary in hparams_summaries(values, {tag: 0.0 for tag in metric_tags}):
                self.writer.file_writer.add_summary(summary)

    def close(self) -> None:
        """Writes everything logged to the file and closes it."""
        with self._writing():
            self.writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
