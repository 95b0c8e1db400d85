"""Graceful stops: the first SIGINT (Ctrl-C) or SIGTERM (a cluster's preemption) asks training to stop
after the current optimizer step; a second one stops at once."""

from __future__ import annotations

import signal
import sys
import threading

__all__ = ["StopOnSignal"]


class StopOnSignal:
    """Context manager that turns SIGINT/SIGTERM into a flag the loop checks after every step.

    Outside the main thread (where Python can't install handlers) it does nothing and never requests a stop.
    """

    def __init__(self, signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signums = signums
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            raise KeyboardInterrupt  # the second signal: stop now, without a checkpoint
        self.received = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping after this step and saving last.pt "
            "(Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signums:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
