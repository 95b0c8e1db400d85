"""Errors the harness anticipates. Each carries a one-line message that says what is wrong and how to fix it.

``train.py`` prints these as a single line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class HarnessError(Exception):
    """An anticipated failure: bad input rather than a bug."""


class ConfigError(HarnessError, ValueError):
    """A config value that is wrong: names the key, the value and what is allowed."""


class DataError(HarnessError):
    """A data set that cannot be found, read or downloaded."""


class TrainingError(HarnessError):
    """Training cannot go on, e.g. the loss became NaN or infinite."""


class CheckpointError(HarnessError):
    """A checkpoint that is missing, damaged, or does not fit the run being resumed."""


class Interrupted(HarnessError):
    """Training stopped on SIGINT or SIGTERM after saving ``last.pt``; exit with ``128 + signum``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class RunDirError(HarnessError):
    """A run directory that cannot be used: not creatable, or in use by another live process."""


class Stopped(BaseException):
    """A signal that stops the process at once (before training starts, or a second Ctrl-C): nothing more is
    saved. A ``BaseException``, like ``KeyboardInterrupt``, so no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message)
        self.signum = signum
