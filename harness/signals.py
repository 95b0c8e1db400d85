"""Signals: during training, the first SIGINT (Ctrl-C), SIGTERM (a cluster's preemption) or SIGHUP (a closed
terminal, treated as SIGTERM) asks the loop to stop after the current optimizer step and save; a second one,
or one outside training (start-up, the final write-out), stops at once with :class:`harness.errors.Stopped`,
which ``train.py`` reports in one line."""

from __future__ import annotations

import signal
import sys
import threading

from harness.errors import Stopped

__all__ = ["StopOnSignal", "STOP_SIGNALS", "exit_at_once_on_signals", "stop_at_once_on_signals", "signal_name"]

# SIGHUP does not exist on Windows.
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, and so on."""
    return signal.Signals(signum).name


def _stop_at_once(signum: int, frame: object) -> None:
    raise Stopped(signum)


def _exit_at_once(signum: int, frame: object) -> None:
    print(f"stopped by {signal_name(signum)} before training started; nothing to resume", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)  # unwinds even through an import, and Python prints no traceback for it


def _install(handler) -> None:
    if threading.current_thread() is threading.main_thread():  # the only thread Python lets install handlers
        for signum in STOP_SIGNALS:
            signal.signal(signum, handler)


def exit_at_once_on_signals() -> None:
    """Makes every stop signal end the process in one line: the first thing an entry point does, so a signal
    during its imports ends it without a traceback or a silent death."""
    _install(_exit_at_once)


def stop_at_once_on_signals() -> None:
    """Makes every stop signal raise :class:`Stopped`, which the entry point reports in one line (with a
    resume hint once there is a checkpoint): from config composition on, when there is something to tell."""
    _install(_stop_at_once)


class StopOnSignal:
    """Context manager that turns SIGINT/SIGTERM/SIGHUP into a flag the loop checks after every step.

    Outside the main thread (where Python can't install handlers) it does nothing and never requests a stop.
    """

    def __init__(self, signums: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.signums = signums
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal_name(self.received) if self.received is not None else ""

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            raise Stopped(signum)  # the second signal: stop now, without a checkpoint
        self.received = signum
        print(
            f"\n{signal_name(signum)}: stopping after this step and saving last.pt "
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
