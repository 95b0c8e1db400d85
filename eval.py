"""Evaluate a checkpoint: `python eval.py ckpt_path=<run dir or .pt> [split=test|val] [data.<key>=<value>]`.

A thin shell like train.py: Hydra reads the command line (conf/eval.yaml); `harness.evaluation` builds the
data, task and model from the config stored in the checkpoint, evaluates one split and adds the numbers to
eval.json beside the checkpoint. `data.<key>=<value>` changes one of the checkpoint's data settings (the
data moved: `data.root=/mnt/data`). A missing or damaged checkpoint, a wrong split or data key prints one
line and exits 1.
"""

from harness.cli import prepare_process

prepare_process()  # first, before the slow imports: from here on a signal or a closed stream can't traceback

import sys  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from harness.cli import report_and_exit, run_entry_point  # noqa: E402
from harness.errors import ConfigError, HarnessError  # noqa: E402
from harness.evaluation import evaluate_checkpoint, find_checkpoint, record_evaluation  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> dict[str, float]:
    """Evaluates ``cfg.ckpt_path`` on ``cfg.split``, prints the metrics and records them in eval.json."""
    try:
        if OmegaConf.is_missing(cfg, "ckpt_path"):
            raise ConfigError("ckpt_path is not set; pass the run or checkpoint: python eval.py ckpt_path=<run dir "
                              "or .pt>")
        path = find_checkpoint(str(cfg.ckpt_path))
        changes = OmegaConf.to_container(cfg.data, resolve=True)
        metrics = evaluate_checkpoint(path, cfg.split, changes, cfg.device)
    except HarnessError as e:
        report_and_exit(e)  # one line, exit 1 (raised further, Hydra would print a traceback)
    print(f"{path} on {cfg.split}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
    print(f"recorded in {record_evaluation(path, cfg.split, metrics, changes)}", flush=True)
    return metrics


def launch() -> None:
    """Hydra's main, with ``data.<key>=<value>`` read as a change to the checkpoint's data settings (Hydra
    would refuse a key the empty ``data`` of conf/eval.yaml lacks)."""
    sys.argv[1:] = [f"++{arg}" if arg.startswith("data.") else arg for arg in sys.argv[1:]]
    main()


if __name__ == "__main__":
    run_entry_point(launch, sys.argv[1:])
