"""The LR range test: its suggestion, its stop on divergence, the restore, and an LR that trains."""

import math
import os
import shlex
import subprocess
import sys

import pytest
import torch

import harness
from harness.lr_find import lr_range_test, run_lr_find, suggest
from tests.conftest import FAST, ROOT, compose_config, read_scalars, toy_problem


def test_suggestion_is_the_steepest_descent():
    lrs = [10 ** (-5 + i * 0.25) for i in range(21)]
    # flat, then a steep fall around index 11 (central differences: -1.1 there, -0.9 at 12), then a rise
    smoothed = [2.0] * 10 + [1.9, 1.5, 0.8, 0.6, 0.55, 0.5, 0.6, 0.9, 1.5, 3.0, 6.0]
    assert suggest(lrs, smoothed) == lrs[11]
    with pytest.raises(ValueError, match="too few to suggest"):
        suggest(lrs[:2], smoothed[:2])


def test_range_test_restores_the_model_and_optimizer_and_stops_on_divergence():
    model, loader, _ = toy_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    test = lr_range_test(model, optimizer, loader, torch.device("cpu"), min_lr=1e-4, max_lr=1e6, num_steps=300)
    assert len(test.lrs) < 300, "the loss diverged and the test stopped"
    assert test.lrs == sorted(test.lrs) and test.lrs[0] == pytest.approx(1e-4)
    assert all(math.isfinite(v) for v in test.smoothed)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert optimizer.param_groups[0]["lr"] == 0.1 and not optimizer.state
    assert test.lrs[0] < test.suggestion < test.lrs[-1]


def test_bad_range_settings():
    model, loader, _ = toy_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="lr_find.min_lr=1.0 must be > 0 and < lr_find.max_lr=0.5"):
        lr_range_test(model, optimizer, loader, torch.device("cpu"), min_lr=1.0, max_lr=0.5)


def test_the_suggested_lr_trains_digits_to_95_percent(tmp_path, capsys):
    cfg = compose_config([*FAST], name="lr_find")
    test = run_lr_find(cfg, tmp_path / "find", overrides=[*FAST, "lr_find.num_steps=200", "data.root='my data'"])
    printed = capsys.readouterr().out.split("use it with: ")[1].splitlines()[0]
    assert shlex.split(printed) == ["python", "train.py", *FAST, "data.root='my data'",  # the tested model, pasteable
                                    f"optimizer.lr={test.suggestion:.3g}"]
    scalars = read_scalars(tmp_path / "find")
    assert [v for _, v in scalars["lr_find/lr"]] == pytest.approx(test.lrs, rel=1e-6)
    assert (tmp_path / "find" / "lr_find.png").stat().st_size > 10_000
    lr = float(f"{test.suggestion:.3g}")
    metrics = harness.run(compose_config(["trainer.device=cpu", "trainer.progress_bar=false", f"optimizer.lr={lr}",
                                          f"scheduler.min_lr={min(1e-3, lr / 100)}"]), tmp_path / "train")
    assert metrics["val/acc"] >= 0.95


@pytest.mark.slow
def test_lr_find_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "harness.lr_find", "lr_find.num_steps=100"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "use it with: python train.py optimizer.lr=" in result.stdout
    assert list(tmp_path.glob("outputs/lr_find/*/*/lr_find.png"))
