"""The metrics writer: scalars to TensorBoard event files, keyed by the global optimizer step."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger:
    """Writes ``{tag: value}`` scalars at a step into event files under ``log_dir``.

    ``torch.utils.tensorboard`` queues events and writes them from a background thread, so ``log`` does
    not block the training step. Use as a context manager (or call ``close``) so events reach the disk
    even when training fails.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        """
        Args:
            log_dir: the run directory.
            purge_step: on resume, the first step the resumed run will log: TensorBoard hides points at
                or after it that an interrupted run wrote, so curves continue without overlap.
        """
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only pay for it when logging

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Writes each scalar in ``metrics`` at x = ``step``."""
        for tag, value in metrics.items():
            self._writer.add_scalar(tag, value, global_step=step)

    def log_hparams(self, hparams: Mapping[str, object], metric_tags: list[str]) -> None:
        """Records the run's hyper-parameters for TensorBoard's HParams tab, with ``metric_tags`` (scalar tags
        this run logs) as the metrics to compare. Values that are not numbers, strings or bools are written
        as strings."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        clean = {
            k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()
        }
        experiment, session_start, session_end = hparams_summary(clean, {tag: 0.0 for tag in metric_tags})
        writer = self._writer._get_file_writer()
        for summary in (experiment, session_start, session_end):
            writer.add_summary(summary)

    def close(self) -> None:
        """Flushes pending events to disk and closes the file."""
        self._writer.flush()
        self._writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
