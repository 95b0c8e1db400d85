"""What the command-line entry points (``train.py``, ``python -m harness.lr_find`` / ``harness.schedule``) share
before and around Hydra: a process that survives closed standard streams and signals, a check of the
command line, one-line errors, and commands printed so they can be pasted back as they are."""

from __future__ import annotations

import difflib
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from harness.errors import HarnessError, Stopped
from harness.rundir import check_run_dir, note_created, remove_unused_claims
from harness.signals import exit_at_once_on_signals, signal_name, stop_at_once_on_signals

__all__ = ["prepare_process", "check_command_line", "hydra_value", "resume_command", "shell_command", "one_line",
           "report_and_exit", "run_entry_point", "warn_about_added_keys", "threads_per_job"]

log = logging.getLogger(__name__)

# Options that need a Hydra plugin from the `sweep` extra, and the plugin's module.
_PLUGIN_OPTIONS = {
    "hparams_search=optuna": "hydra_plugins.hydra_optuna_sweeper",
    "hydra/sweeper=optuna": "hydra_plugins.hydra_optuna_sweeper",
    "hydra/launcher=joblib": "hydra_plugins.hydra_joblib_launcher",
    "hydra/launcher=submitit": "hydra_plugins.hydra_submitit_launcher",
}
CONF = Path(__file__).resolve().parents[1] / "conf"  # the config groups, one folder each


def _reopen_closed_std_streams() -> None:
    """Points a closed stdin, stdout or stderr (as some daemons and schedulers start processes) at /dev/null.

    Otherwise the next file the run opens would get that descriptor, and whatever writes to "stdout" would
    write into a checkpoint."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        devnull = os.open(os.devnull, os.O_RDWR)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)
        if getattr(sys, name) is None or getattr(sys, name).closed:
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 (lives as long as the process)


def prepare_process() -> None:
    """The first thing an entry point does: closed standard streams reopened on /dev/null, stop signals that
    end the process in one line (the entry point switches to :func:`harness.signals.stop_at_once_on_signals`
    once its imports are done, to report with what it knows), and log records that a full disk or a closed
    pipe can't write dropped quietly instead of printed with a traceback."""
    _reopen_closed_std_streams()
    exit_at_once_on_signals()
    logging.raiseExceptions = False


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def check_command_line(argv: list[str]) -> None:
    """Checks what Hydra would act on before anything is written: the sweep plugins the command line asks
    for are installed, no config group is set to ``null``, and an explicit ``hydra.run.dir`` /
    ``hydra.sweep.dir`` can be a run directory.

    Raises:
        HarnessError: in one line, with the fix.
    """
    for arg in argv:
        for option, module in _PLUGIN_OPTIONS.items():
            if arg.startswith(option):
                import importlib.util

                if importlib.util.find_spec(module) is None:
                    raise HarnessError(f"{arg} needs a Hydra plugin that is not installed; "
                                       "install the sweep extra: pip install -e \".[sweep]\"")
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and value == "null" and (CONF / key).is_dir():  # Hydra would answer with a traceback
            options = ", ".join(sorted(p.stem for p in (CONF / key).glob("*.yaml")))
            none = "; logger=[] logs nothing" if key == "logger" else ""
            raise HarnessError(f"{arg}: a config group takes one of its options ({options}), or leave it out "
                               f"for its default{none}")
        if sep and key in ("hydra.run.dir", "hydra.sweep.dir"):
            path = _unquote(value)
            check_run_dir(path, key)
            if not os.path.exists(path):
                note_created(path)  # Hydra makes it; a failed start may take it back


_SAFE_VALUE = re.compile(r"[\w/.\-+@~:%]+")


def hydra_value(value: str) -> str:
    """``value`` as Hydra's override grammar reads it back: as it is when plain, else single-quoted."""
    if _SAFE_VALUE.fullmatch(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _shell_word(word: str) -> str:
    # A Hydra-quoted value ('my runs/x') reads better inside double quotes than in shlex's '"'"' splices.
    if "'" in word and not any(c in word for c in '"$`\\!'):
        return f'"{word}"'
    return shlex.quote(word)


def shell_command(words: Iterable[str]) -> str:
    """Words joined into one shell command line, each quoted where the shell would split or expand it."""
    return " ".join(_shell_word(word) for word in words)


def resume_command(overrides: list[str], run_dir: str, world_size: int = 1) -> str:
    """The command that continues the run in ``run_dir``: the same overrides, ``resume=`` pointing at it,
    quoted for the shell and for Hydra, so it can be pasted back as it is."""
    launcher = ["torchrun", f"--nproc_per_node={world_size}"] if world_size > 1 else ["python"]
    kept = [o for o in overrides if not o.startswith("resume=")]
    return shell_command([*launcher, "train.py", *kept, f"resume={hydra_value(run_dir)}"])


def one_line(error: BaseException) -> str:
    """An error's message on one line."""
    return " ".join(str(error).split())


def report_and_exit(error: BaseException) -> None:
    """Prints an anticipated error in one line and exits: 1 for a :class:`HarnessError`, 128 + the signal
    for :class:`Stopped`."""
    if isinstance(error, Stopped):
        name = signal_name(error.signum)
        message = one_line(error) or f"stopped by {name} before training started; nothing to resume"
        print(message, file=sys.stderr, flush=True)
        sys.exit(128 + error.signum)
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    sys.exit(1)


def run_entry_point(launch: Callable[[], object], argv: list[str]) -> None:
    """Runs an entry point's ``launch`` (its Hydra main) after :func:`check_command_line`, reporting an
    anticipated error or a stop in one line; a run directory this launch claimed and left unused is removed."""
    try:
        stop_at_once_on_signals()  # a signal from here on is reported in one line, with what is known
        check_command_line(argv)
        launch()
    except (HarnessError, Stopped) as error:
        remove_unused_claims()  # stopped before the run could clean up: no empty run folder behind
        report_and_exit(error)


def _keys_at(cfg, parent: str) -> list[str]:
    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []


def warn_about_added_keys(cfg, overrides: list[str]) -> None:
    """Warns about each ``+key=value`` whose key looks like a typo of a key the config has
    (``+trainer.max_epoch=2`` next to ``trainer.max_epochs``): Hydra adds it silently, and nothing reads it."""
    for override in overrides:
        if not override.startswith("+") or override.startswith("++"):
            continue
        key = override[1:].partition("=")[0]
        parent, _, leaf = key.rpartition(".")
        siblings = [k for k in _keys_at(cfg, parent) if k != leaf]
        match = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.75)
        if match:
            meant = f"{parent}.{match[0]}" if parent else match[0]
            log.warning("%s adds a new key %s; did you mean %s? (without the +: %s=...)", override, key, meant, meant)


def threads_per_job(hydra_cfg) -> int:
    """CPU threads for one sweep job: all cores, split between the jobs a parallel launcher runs at once."""
    from omegaconf import OmegaConf

    cores = os.cpu_count() or 1
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=1) or 1
    parallel = cores if n_jobs < 0 else n_jobs  # joblib: -1 means one job per core
    return max(1, cores // max(1, parallel))
