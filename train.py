"""Train from the Hydra config in conf/: `python train.py [overrides]`, or sweep with `-m`.

A thin shell: Hydra composes the config and picks the run directory; `harness.run` does the rest.
A single run that hits an anticipated error (a wrong setting, a missing data set or checkpoint, a NaN
loss, a run directory in use) prints one line and exits 1; a stop on SIGINT/SIGTERM/SIGHUP during training
saves last.pt, says how to resume, and exits 128 + the signal number; a signal before training starts, or a
second one, stops at once, in one line. In a sweep (-m) a failed job is recorded in its result.json and
returns NaN, so the other jobs go on; the sweep summary then exits 1.
"""

from harness.cli import prepare_process

prepare_process()  # first, before the slow imports: from here on a signal or a closed stream can't traceback

import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
import torch  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import harness  # noqa: E402
from harness.cli import (  # noqa: E402
    one_line,
    report_and_exit,
    resume_command,
    run_entry_point,
    threads_per_job,
    warn_about_added_keys,
)
from harness.distributed import broadcast_object, setup, world  # noqa: E402
from harness.errors import ConfigError, HarnessError, Interrupted, Stopped, TrainingError  # noqa: E402
from harness.experiment import register_resolvers  # noqa: E402
from harness.rundir import remove_if_unused  # noqa: E402
from harness.signals import signal_name  # noqa: E402
from harness.sweep import write_result  # noqa: E402

log = logging.getLogger("train")

register_resolvers()  # conf/ names them: the run dir (kept on resume), the start time, sweep direction


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Trains one run and returns ``cfg.optimized_metric``, the objective for Hydra sweepers (``None`` for a
    sweep job that failed)."""
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    overrides = list(hydra_cfg.overrides.task)
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    warn_about_added_keys(cfg, overrides)
    if sweeping and cfg.resume is None:
        cfg.resume = "auto"  # rerunning a sweep into its directory skips finished jobs, resumes the rest
    if sweeping:
        torch.set_num_threads(threads_per_job(hydra_cfg))  # trainer.num_threads, if set, wins in run()
    main_rank = world().is_main  # under torchrun, rank 0 records the result and talks to the user

    def record(status: str, **details) -> None:
        if main_rank and Path(run_dir).is_dir():
            try:
                write_result(run_dir, status, overrides, time.monotonic() - started, **details)
            except OSError as e:  # a full disk: the run's own outcome matters more than its record
                log.warning("could not write %s/result.json (%s)", run_dir, e.strerror or e)

    started = time.monotonic()
    try:
        metrics = harness.run(cfg, run_dir=run_dir)
    except Interrupted as e:
        record("interrupted", error=str(e))
        if main_rank:
            print(f"{e}\nresume with: {resume_command(overrides, run_dir, world().size)}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except Stopped as e:
        last = Path(run_dir) / "checkpoints" / "last.pt"
        if sweeping or not remove_if_unused(run_dir):  # stopped during start-up: no empty run folder behind
            record("interrupted", error="stopped at once")
        hint = resume_command(overrides, run_dir, world().size)
        kept = (f"the last checkpoint, {last}, is intact; resume with: {hint}" if last.is_file()
                else "no checkpoint was written, nothing to resume")
        raise Stopped(e.signum, f"stopped at once by {signal_name(e.signum)}; {kept}") from None
    except Exception as e:
        message = one_line(e) if isinstance(e, HarnessError) else f"{type(e).__name__}: {e}"
        if not sweeping:
            if not isinstance(e, HarnessError):
                raise  # a bug: keep the traceback
            # A failed start leaves no empty run folder behind; a diverged run records how it ended. (Other
            # errors of a single run are its one line: a failed resume must not rewrite the run's result.json.)
            if not remove_if_unused(run_dir) and isinstance(e, TrainingError):
                record("failed", error=message)
            report_and_exit(e)  # one line, exit 1 (raised further, Hydra would print its own report)
        record("failed", error=message)
        log.error("job failed: %s", message, exc_info=not isinstance(e, HarnessError))
        # The sweep goes on. No number at all: Optuna's sweeper records a trial without a float as failed
        # (NaN would make it fail while telling Optuna about the failure).
        return None
    record("finished", metrics=metrics)
    return metrics[cfg.optimized_metric]


def _share_run_stamp() -> None:
    """Fixes this launch's start time; under torchrun, rank 0's, so all ranks name one run directory."""
    setup()  # joins torchrun's process group before Hydra picks the run directory
    stamp = os.environ.get("HARNESS_RUN_STAMP")
    if stamp:
        try:
            datetime.fromisoformat(stamp)
        except ValueError:
            raise ConfigError(f"environment variable HARNESS_RUN_STAMP={stamp!r} is not an ISO date and time; "
                              "unset it (the harness sets it for the processes of one launch)") from None
    os.environ.setdefault("HARNESS_RUN_STAMP", broadcast_object(datetime.now().isoformat()))


def launch() -> None:
    """The launch: one start time for all processes, then Hydra's main."""
    _share_run_stamp()
    main()


if __name__ == "__main__":
    run_entry_point(launch, sys.argv[1:])
