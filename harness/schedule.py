"""Preview an LR schedule without building the data or training:

    python -m harness.schedule scheduler=wsd scheduler.warmup_epochs=3 trainer.max_epochs=40
    python -m harness.schedule -m scheduler=cosine_warmup,wsd,linear_warmup     # side by side

Composed by Hydra from the same ``conf/`` as ``train.py`` (``conf/preview.yaml``), so any config or override
works. Prints the LR per epoch (per step, condensed, with ``scheduler.interval=step``) as a table with a text
plot, and writes ``schedule.csv`` and ``schedule.png`` (one curve per param group; matplotlib, from the
``plot`` extra) into ``outputs/schedules/...``. A multirun draws every job's schedule on one figure.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from harness.cli import prepare_process, report_and_exit, run_entry_point
from harness.errors import ConfigError, HarnessError
from harness.plots import save_figure

__all__ = ["simulate", "text_plot", "write_csv", "plot", "PreviewFigure"]

CSV = "schedule.csv"
MAX_STEPS = 200_000  # scheduler steps the preview simulates at most (a few seconds)


def simulate(scheduler_factory, optimizer: torch.optim.Optimizer, steps: int) -> list[list[float]]:
    """The LR of every param group for each of ``steps`` scheduler steps, stepping in the right order."""
    scheduler = scheduler_factory(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs


def text_plot(values: list[float], width: int = 50) -> list[str]:
    """One bar of ``#`` per value, scaled to the largest."""
    top = max(values) or 1.0
    return ["#" * max(1, round(width * v / top)) if v > 0 else "" for v in values]


def write_csv(path: Path, lrs: list[list[float]], unit: str, steps_per_epoch: int) -> None:
    """``<unit>,epoch,lr/group0,...``: one row per scheduler step, with the epoch it belongs to."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([unit, "epoch", *[f"lr/group{i}" for i in range(len(lrs[0]))]])
        for i, row in enumerate(lrs):
            writer.writerow([i, i // steps_per_epoch, *row])


def _read_csv(path: Path) -> tuple[list[float], dict[str, list[float]]]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    steps_per_epoch = sum(1 for r in rows if r["epoch"] == "0")  # counted once, not per row
    unit = next(iter(rows[0]))  # "epoch" or "step"
    epochs = [int(r[unit]) / steps_per_epoch for r in rows]
    curves = {k: [float(r[k]) for r in rows] for k in rows[0] if k.startswith("lr/")}
    return epochs, curves


def plot(curves: dict[str, tuple[list[float], list[float]]], path: Path, title: str) -> Path | None:
    """Draws ``{label: (epochs, lrs)}`` into ``path``; ``None`` (with a message) without matplotlib."""

    def draw(ax) -> None:
        for label, (x, y) in curves.items():
            ax.plot(x, y, label=label, drawstyle="steps-post" if len(x) < 200 else "default")

    return save_figure(path, draw, title=title, xlabel="epoch", ylabel="learning rate",
                       note=" (the CSV is written anyway)")


def _preview(cfg: DictConfig, out_dir: Path) -> list[list[float]]:
    from harness.build import build_optimizer, build_scheduler  # built as a training run builds them
    from harness.config import validate

    trainer = validate(cfg)
    interval = cfg.scheduler.interval
    given = cfg.steps_per_epoch
    if isinstance(given, bool) or not isinstance(given, int) or given < 1:
        raise ConfigError(f"steps_per_epoch={given!r} must be an integer >= 1")
    steps_per_epoch = given if interval == "step" else 1
    epochs = trainer.max_epochs
    if epochs * steps_per_epoch > MAX_STEPS:
        raise ConfigError(f"the preview would simulate {epochs * steps_per_epoch} scheduler steps "
                          f"(trainer.max_epochs={epochs} x steps_per_epoch={steps_per_epoch}); keep it at most "
                          f"{MAX_STEPS}: a smaller steps_per_epoch draws the same curve")
    optimizer = build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))], torch.device("cpu"))

    def factory(opt):
        return build_scheduler(cfg.scheduler, opt, steps_per_epoch)

    lrs = simulate(factory, optimizer, epochs * steps_per_epoch)
    unit = "step" if interval == "step" else "epoch"
    write_csv(out_dir / CSV, lrs, unit, steps_per_epoch)

    name = cfg.scheduler._target_.rsplit(".", 1)[-1]
    print(f"{name}: {epochs} epochs" + (f" x {steps_per_epoch} steps" if interval == "step" else ""))
    per_epoch = lrs[steps_per_epoch - 1 :: steps_per_epoch] if interval == "step" else lrs
    shown = [row[0] for row in per_epoch]
    label = "lr at each epoch's last step" if interval == "step" else "lr"
    print(f"{'epoch':>6}  {label:<28}")
    for epoch, (lr, bar) in enumerate(zip(shown, text_plot(shown))):
        others = "  ".join(f"{v:.6g}" for v in per_epoch[epoch][1:])
        print(f"{epoch:>6}  {lr:<12.6g}{others:<16} {bar}")
    x = [i / steps_per_epoch for i in range(len(lrs))]
    curves = {f"group{g}": (x, [row[g] for row in lrs]) for g in range(len(lrs[0]))}
    png = plot(curves, out_dir / "schedule.png", name)
    print(f"wrote {out_dir / CSV}" + (f" and {png}" if png else ""))
    return lrs


class PreviewFigure(Callback):
    """Hydra callback for ``-m``: every job's schedule (group 0) on one figure in the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        curves = {}
        for path in sorted(sweep.glob(f"*/{CSV}")):
            overrides = (path.parent / ".hydra" / "overrides.yaml").read_text().replace("- ", "").split("\n")
            label = " ".join(o for o in overrides if o) or path.parent.name
            x, lrs = _read_csv(path)
            curves[label] = (x, lrs["lr/group0"])
        if curves:
            png = plot(curves, sweep / "schedule.png", "LR schedules")
            if png:
                print(f"wrote {png}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="preview")
def main(cfg: DictConfig) -> None:
    """Prints and plots the schedule ``cfg`` describes."""
    try:
        _preview(cfg, Path(HydraConfig.get().runtime.output_dir))
    except HarnessError as e:
        report_and_exit(e)


if __name__ == "__main__":
    from harness.experiment import register_resolvers

    prepare_process()
    register_resolvers()
    run_entry_point(main, sys.argv[1:])
