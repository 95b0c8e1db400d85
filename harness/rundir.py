"""Run directories: one per run, never shared by two runs, locked while a process writes there.

* :func:`claim` turns a default name (``outputs/<date>/<time>``) into a directory this launch alone owns:
  ``os.mkdir`` succeeds for one process only, so two runs started in the same second get ``<time>`` and
  ``<time>-1``. Processes of the same launch (torchrun ranks, a sweep's job processes) agree on the name
  through an environment variable they inherit.
* :class:`RunLock` is an exclusive ``fcntl.flock`` on ``<run dir>/.lock``, held for the life of the process.
  The kernel drops it when the process dies, however it dies, so a lock is never stale.
* :func:`remove_if_unused` takes back a directory this launch made when the run failed before writing
  anything of its own (a config error), so failed starts leave no empty run folders behind.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

from harness.errors import ConfigError, RunDirError

__all__ = ["claim", "claim_as", "check_run_dir", "note_created", "RunLock", "remove_if_unused",
           "created_by_this_launch", "remove_unused_claims"]

_CLAIMED = "HARNESS_CLAIMED_DIRS"  # {default name: claimed directory}, inherited by this launch's processes
_CREATED: set[str] = set()  # directories this process made, resolved paths
LOCK = ".lock"
HYDRA_FILES = {".hydra", "train.log"}  # what Hydra writes into a run directory before the harness runs


def _claimed() -> dict[str, str]:
    try:
        claimed = json.loads(os.environ.get(_CLAIMED, "{}"))
    except ValueError:
        claimed = {}
    return claimed if isinstance(claimed, dict) else {}


def claim(default: str, owner: bool = True) -> str:
    """A directory for this launch named ``default``, or ``default-1``, ``default-2``, ... if another run has
    that name already; made here, so no other process can claim it.

    The first call of a launch claims; later calls, in this process or in the processes it starts, return
    the same directory. ``owner=False`` (a torchrun rank other than 0) never creates anything and returns
    ``default``: the caller takes the owner's name from it instead.
    """
    claimed = _claimed()
    if default in claimed:
        return claimed[default]
    if not owner:
        return default
    parent = Path(default).parent
    for folder in [parent, *parent.parents]:
        if folder.exists():
            break
        _CREATED.add(str(folder.resolve()))  # outputs/<date>/ of the day's first run, say
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for n in range(10_000):
            candidate = default if n == 0 else f"{default}-{n}"
            try:
                os.mkdir(candidate)
            except FileExistsError:
                continue
            break
    except OSError as e:
        raise RunDirError(f"cannot create a run directory under {parent} ({e.strerror or e}); "
                          "choose a writable place with hydra.run.dir=... (or hydra.sweep.dir=...)") from e
    _CREATED.add(str(Path(candidate).resolve()))
    claim_as(default, candidate)
    return candidate


def claim_as(default: str, claimed: str) -> None:
    """Records that this launch's ``default`` directory is ``claimed`` (claimed by another process of it)."""
    os.environ[_CLAIMED] = json.dumps({**_claimed(), default: claimed})


def check_run_dir(path: str, key: str = "hydra.run.dir") -> None:
    """Refuses a run directory that can't be one: empty, an existing file, or a place that can't be written.

    Raises:
        ConfigError: in one line, naming the key.
    """
    if not path.strip():
        raise ConfigError(f"{key}='{path}' is empty; give a directory, e.g. {key}=runs/exp1")
    where = Path(path)
    if where.exists() and not where.is_dir():
        raise ConfigError(f"{key}={path} is a file, not a directory; choose another path")
    existing = next((p for p in [where, *where.parents] if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: {existing} is not writable; choose a directory you can write to")


def created_by_this_launch(path: str | Path) -> bool:
    """Whether this process made ``path`` (see :func:`claim` and :func:`note_created`)."""
    return str(Path(path).resolve()) in _CREATED


def note_created(path: str | Path) -> None:
    """Records that this process is about to create ``path`` (an explicit ``hydra.run.dir`` that did not exist)."""
    _CREATED.add(str(Path(path).resolve()))


def remove_if_unused(path: str | Path) -> bool:
    """Removes ``path`` if this launch made it and it holds only what Hydra wrote on start-up (and the lock),
    and the folders above it this launch made, once empty. Returns whether it removed ``path``."""
    path = Path(path)
    if not path.is_dir() or not created_by_this_launch(path):
        return False
    if any(entry.name not in HYDRA_FILES | {LOCK} for entry in path.iterdir()):
        return False
    shutil.rmtree(path, ignore_errors=True)
    for folder in path.resolve().parents:  # and the folders made for it, once empty
        if str(folder) not in _CREATED or any(folder.iterdir()):
            break
        folder.rmdir()
    return not path.exists()


class RunLock:
    """An exclusive lock on a run directory, held until :meth:`release` or the end of the process.

    Raises:
        RunDirError: another live process holds it; the message names that process.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.file = None
        try:
            import fcntl
        except ImportError:  # no flock (Windows): runs are not locked there
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")  # noqa: SIM115 (held open for as long as the lock)
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise RunDirError(
                f"{run_dir} is in use by {holder}; wait for it to end, or choose another directory "
                "(hydra.run.dir=...)"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} on {socket.gethostname()}")
        file.flush()
        self.file = file

    def release(self) -> None:
        """Drops the lock (the file stays; it only names the last holder)."""
        if self.file is not None:
            self.file.close()
            self.file = None


def remove_unused_claims() -> None:
    """:func:`remove_if_unused` for every directory this process claimed: for an entry point stopped between
    Hydra making the run directory and the run starting (a signal during Hydra's own set-up)."""
    for claimed in _claimed().values():
        remove_if_unused(claimed)
