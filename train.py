"""Train from the Hydra config in conf/: `python train.py [overrides]`, or sweep with `-m`.

A thin shell: Hydra composes the config and picks the run directory; `harness.run` does the rest.
Anticipated errors (a wrong setting, a missing data set, a NaN loss) print one line and exit 1.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import harness
from harness.errors import HarnessError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Trains one run and returns its validation loss, the objective for Hydra sweepers."""
    try:
        metrics = harness.run(cfg, run_dir=HydraConfig.get().runtime.output_dir)
    except HarnessError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)  # always one line
        sys.exit(1)
    return metrics["val/loss"]


if __name__ == "__main__":
    main()
