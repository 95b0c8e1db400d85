"""The LR range test (Smith, 2015): train for a few hundred steps while the LR grows exponentially, watch
the smoothed loss, stop when it diverges, and suggest the LR where it fell fastest.

    python -m harness.lr_find                       # the default model and data
    python -m harness.lr_find model=cnn optimizer=adamw lr_find.num_steps=300

Composed from the same ``conf/`` as ``train.py`` (``conf/lr_find.yaml``). Writes the curve to TensorBoard
(``lr_find/loss``, ``lr_find/smoothed_loss``, ``lr_find/lr``, x = step) and to ``lr_find.png`` with the
suggestion marked, then prints the override to use. The model and optimizer are restored afterwards.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.cli import prepare_process, report_and_exit, run_entry_point, shell_command
from harness.errors import ConfigError, HarnessError
from harness.plots import save_figure

__all__ = ["RangeTest", "lr_range_test", "suggest"]


@dataclass
class RangeTest:
    """The curve of a range test and its suggestion."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float


def suggest(lrs: list[float], smoothed: list[float], skip_start: float = 0.1) -> float:
    """The LR where the smoothed loss falls fastest against log(LR) (steepest descent), ignoring the
    noisy first ``skip_start`` of the curve."""
    start = max(1, int(len(lrs) * skip_start))
    logs = [math.log(lr) for lr in lrs]
    slopes = [
        (smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(start, len(lrs) - 1)
    ]
    if not slopes:
        raise ValueError(f"the range test stopped after {len(lrs)} steps: too few to suggest an LR")
    return lrs[start + min(range(len(slopes)), key=slopes.__getitem__)]


def lr_range_test(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader,
    device: torch.device,
    min_lr: float = 1e-6,
    max_lr: float = 10.0,
    num_steps: int = 200,
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
    loss_fn=F.cross_entropy,
) -> RangeTest:
    """Runs the range test and puts the model and optimizer back as they were.

    Every param group's LR follows ``min_lr * (max_lr / min_lr) ** (i / (num_steps - 1))``, scaled by its
    base LR relative to group 0's. The loss is smoothed with an exponential moving average (debiased);
    the test stops early once the smoothed loss exceeds ``diverge_factor`` times its lowest value or
    turns non-finite.
    """
    if not 0 < min_lr < max_lr:
        raise ValueError(f"lr_find.min_lr={min_lr!r} must be > 0 and < lr_find.max_lr={max_lr!r}")
    if num_steps < 3:
        raise ValueError(f"lr_find.num_steps={num_steps!r} must be >= 3")
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    ratios = [group["lr"] / optimizer.param_groups[0]["lr"] for group in optimizer.param_groups]
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best = 0.0, math.inf
    batches = iter(())
    model.train()
    try:
        for i in range(num_steps):
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)  # as many epochs as the test needs
                x, y = next(batches)
            lr = min_lr * (max_lr / min_lr) ** (i / (num_steps - 1))
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            value = loss.item()  # the test needs every loss on the host to decide when to stop
            if not math.isfinite(value):
                break
            average = smoothing * average + (1 - smoothing) * value
            debiased = average / (1 - smoothing ** (i + 1))
            lrs.append(lr)
            losses.append(value)
            smoothed.append(debiased)
            best = min(best, debiased)
            if debiased > diverge_factor * best:
                break
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
    return RangeTest(lrs, losses, smoothed, suggest(lrs, smoothed))


def _plot(test: RangeTest, path: Path) -> Path | None:
    def draw(ax) -> None:
        ax.plot(test.lrs, test.losses, alpha=0.3, label="loss")
        ax.plot(test.lrs, test.smoothed, label="smoothed loss")
        ax.axvline(test.suggestion, color="red", linestyle="--", label=f"suggested lr {test.suggestion:.3g}")
        ax.set_xscale("log")
        ax.set_ylim(min(test.losses) * 0.9, max(test.smoothed[0], min(test.smoothed) * 2) * 1.3)  # not the blow-up

    return save_figure(path, draw, title="LR range test", xlabel="learning rate", ylabel="training loss")


MAX_STEPS = 100_000  # a range test longer than this is a typo, not a plan


def check_knobs(knobs) -> None:
    """Refuses ``lr_find`` settings the test can't run with, in one line naming the key.

    Raises:
        ConfigError: a value out of its bounds.
    """
    def number(key: str) -> float:
        value = knobs.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"lr_find.{key}={value!r} must be a finite number")
        return value

    min_lr, max_lr, smoothing, diverge = (number(k) for k in ("min_lr", "max_lr", "smoothing", "diverge_factor"))
    steps = knobs.get("num_steps")
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"lr_find.min_lr={min_lr!r} must be > 0 and < lr_find.max_lr={max_lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 3 <= steps <= MAX_STEPS:
        raise ConfigError(f"lr_find.num_steps={steps!r} must be an integer from 3 to {MAX_STEPS}")
    if not 0 <= smoothing < 1:
        raise ConfigError(f"lr_find.smoothing={smoothing!r} must be in [0, 1) (0.98 is usual; 1 would never move)")
    if not diverge > 1:
        raise ConfigError(f"lr_find.diverge_factor={diverge!r} must be > 1 (times the lowest smoothed loss)")


def run_lr_find(cfg, run_dir: str | Path, overrides: list[str] = ()) -> RangeTest:
    """Builds the run from ``cfg`` (as training would), runs the range test with ``cfg.lr_find``, and
    writes its curve to TensorBoard and ``lr_find.png`` in ``run_dir``. The suggested command repeats the
    command line's ``overrides`` (less the range test's own), so it trains the model that was tested."""
    from harness.build import build
    from harness.loggers import TensorBoardLogger

    check_knobs(cfg.lr_find)
    c = build(cfg)
    knobs = cfg.lr_find
    try:
        test = lr_range_test(c.model, c.optimizer, c.train_loader, c.device, knobs.min_lr, knobs.max_lr,
                             knobs.num_steps, knobs.smoothing, knobs.diverge_factor, loss_fn=c.task.loss)
    except ValueError as e:
        raise HarnessError(str(e)) from e
    run_dir = Path(run_dir)
    with TensorBoardLogger(run_dir) as logger:
        for step, (lr, loss, smooth) in enumerate(zip(test.lrs, test.losses, test.smoothed), 1):
            logger.log({"lr_find/lr": lr, "lr_find/loss": loss, "lr_find/smoothed_loss": smooth}, step)
    png = _plot(test, run_dir / "lr_find.png")
    print(f"LR range test: {len(test.lrs)} steps from {test.lrs[0]:.3g} to {test.lrs[-1]:.3g}; "
          f"steepest descent of the smoothed loss at {test.suggestion:.3g}")
    print(f"curve: TensorBoard in {run_dir}" + (f", {png}" if png else ""))
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("lr_find.", "hydra.", "optimizer.lr=",
                                                                     "scheduler.min_lr="))]
    suggested = [f"optimizer.lr={test.suggestion:.3g}"]
    floor = cfg.scheduler.get("min_lr")
    if isinstance(floor, (int, float)) and floor > float(f"{test.suggestion:.3g}"):
        suggested.append(f"scheduler.min_lr={test.suggestion / 100:.3g}")  # the floor must stay below the peak
    print(f"use it with: {shell_command(['python', 'train.py', *kept, *suggested])}")
    return test


def main() -> None:
    prepare_process()
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from harness.experiment import register_resolvers

    register_resolvers()

    @hydra.main(version_base="1.3", config_path="../conf", config_name="lr_find")
    def entry(cfg) -> None:
        try:
            run_lr_find(cfg, HydraConfig.get().runtime.output_dir, list(HydraConfig.get().overrides.task))
        except HarnessError as e:
            report_and_exit(e)

    run_entry_point(entry, sys.argv[1:])


if __name__ == "__main__":
    main()
