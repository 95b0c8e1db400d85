"""Train from the Hydra config in conf/: `python train.py [overrides]`, or sweep with `-m`.

A thin shell: Hydra composes the config and picks the run directory; `harness.run` does the rest.
A single run that hits an anticipated error (a wrong setting, a missing data set or checkpoint, a NaN
loss) prints one line and exits 1; a stop on SIGINT/SIGTERM saves last.pt, says how to resume, and exits
128 + the signal number. In a sweep (-m) a failed job is recorded in its result.json and returns NaN, so
the other jobs go on; the sweep summary then exits 1.
"""

import importlib.util
import logging
import math
import os
import sys
import time
from datetime import datetime

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import harness
from harness.distributed import broadcast_object, setup, world
from harness.errors import HarnessError, Interrupted
from harness.experiment import register_resolvers
from harness.sweep import write_result

log = logging.getLogger("train")

register_resolvers()  # conf/ names them: the run dir (kept on resume), the start time, sweep direction


# Options that need a Hydra plugin from the `sweep` extra, and the plugin's module.
_PLUGIN_OPTIONS = {
    "hparams_search=optuna": "hydra_plugins.hydra_optuna_sweeper",
    "hydra/sweeper=optuna": "hydra_plugins.hydra_optuna_sweeper",
    "hydra/launcher=joblib": "hydra_plugins.hydra_joblib_launcher",
    "hydra/launcher=submitit": "hydra_plugins.hydra_submitit_launcher",
}


def _check_plugins(argv: list[str]) -> None:
    """Says how to install a sweep plugin the command line asks for, instead of Hydra's 'Could not find'."""
    for arg in argv:
        for option, module in _PLUGIN_OPTIONS.items():
            if arg.startswith(option) and importlib.util.find_spec(module) is None:
                print(f"error: {arg} needs a Hydra plugin that is not installed; "
                      "install the sweep extra: pip install -e \".[sweep]\"", file=sys.stderr)
                sys.exit(1)


def _threads_per_job(hydra_cfg: DictConfig) -> int:
    """CPU threads for one job: all cores, split between the jobs a parallel launcher runs at once."""
    cores = os.cpu_count() or 1
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=1) or 1
    parallel = cores if n_jobs < 0 else n_jobs  # joblib: -1 means one job per core
    return max(1, cores // max(1, parallel))


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Trains one run and returns ``cfg.optimized_metric``, the objective for Hydra sweepers."""
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    overrides = list(hydra_cfg.overrides.task)
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    if sweeping and cfg.resume is None:
        cfg.resume = "auto"  # rerunning a sweep into its directory skips finished jobs, resumes the rest
    if sweeping:
        torch.set_num_threads(_threads_per_job(hydra_cfg))  # trainer.num_threads, if set, wins in run()
    main_rank = world().is_main  # under torchrun, rank 0 records the result and talks to the user
    record = write_result if main_rank else (lambda *args, **kwargs: None)
    started = time.monotonic()
    try:
        metrics = harness.run(cfg, run_dir=run_dir)
    except Interrupted as e:
        record(run_dir, "interrupted", overrides, time.monotonic() - started, error=str(e))
        hint = [o for o in overrides if not o.startswith("resume=")] + [f"resume={run_dir}"]
        if main_rank:
            launcher = f"torchrun --nproc_per_node={world().size}" if world().size > 1 else "python"
            print(f"{e}\nresume with: {launcher} train.py {' '.join(hint)}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        record(run_dir, "interrupted", overrides, time.monotonic() - started, error="stopped at once")
        print(f"stopped at once; the last checkpoint in {run_dir}/checkpoints is intact", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        message = " ".join(str(e).split()) if isinstance(e, HarnessError) else f"{type(e).__name__}: {e}"
        record(run_dir, "failed", overrides, time.monotonic() - started, error=message)
        if not sweeping:
            if not isinstance(e, HarnessError):
                raise  # a bug: keep the traceback
            print(f"error: {message}", file=sys.stderr)  # always one line
            sys.exit(1)
        log.error("job failed: %s", message, exc_info=not isinstance(e, HarnessError))
        return math.nan  # the sweep goes on; Optuna records a NaN trial as failed
    record(run_dir, "finished", overrides, time.monotonic() - started, metrics=metrics)
    return metrics[cfg.optimized_metric]


def _share_run_stamp() -> None:
    """Fixes this launch's start time; under torchrun, rank 0's, so all ranks name one run directory."""
    setup()  # joins torchrun's process group before Hydra picks the run directory
    os.environ.setdefault("HARNESS_RUN_STAMP", broadcast_object(datetime.now().isoformat()))


if __name__ == "__main__":
    _check_plugins(sys.argv[1:])
    _share_run_stamp()
    main()
