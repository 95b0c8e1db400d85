"""Train from the Hydra config in conf/: `python train.py [overrides]`, or sweep with `-m`.

A thin shell: Hydra composes the config and picks the run directory; `harness.run` does the rest.
Anticipated errors (a wrong setting, a missing data set or checkpoint, a NaN loss) print one line and
exit 1; a stop on SIGINT/SIGTERM saves last.pt, says how to resume, and exits 128 + the signal number.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import harness
from harness.errors import HarnessError, Interrupted
from harness.experiment import hydra_subdir, resume_run_dir

# conf/config.yaml points hydra.run.dir and hydra.output_subdir at these, so `resume=<run dir>`
# continues in that directory without overwriting the config it started with.
OmegaConf.register_new_resolver("harness_run_dir", resume_run_dir)
OmegaConf.register_new_resolver("harness_hydra_subdir", hydra_subdir)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Trains one run and returns its validation loss, the objective for Hydra sweepers."""
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        metrics = harness.run(cfg, run_dir=run_dir)
    except Interrupted as e:
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
        print(str(e), file=sys.stderr)
        print(f"resume with: python train.py {' '.join(overrides + [f'resume={run_dir}'])}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except HarnessError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)  # always one line
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"stopped at once; the last checkpoint in {run_dir}/checkpoints is intact", file=sys.stderr)
        sys.exit(130)
    return metrics["val/loss"]


if __name__ == "__main__":
    main()
