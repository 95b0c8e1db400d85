"""`python -m harness.schedule`: the preview equals what training logs, and it writes its files."""

import csv
import os
import subprocess
import sys

import pytest

import harness
from harness.schedule import _preview, text_plot
from tests.conftest import FAST, ROOT, STEPS_PER_EPOCH, compose_config, read_scalars


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("scheduler, interval", [("cosine_warmup", "epoch"), ("wsd", "step"),
                                                 ("cosine_restarts", "epoch"), ("onecycle", "step")])
def test_preview_csv_equals_the_lr_training_logs(tmp_path, scheduler, interval):
    overrides = [*FAST, f"scheduler={scheduler}", f"scheduler.interval={interval}", "trainer.max_epochs=6",
                 "trainer.log_every_n_steps=1"]
    if scheduler != "onecycle":
        overrides.append("scheduler.warmup_epochs=1")
    preview_dir, run_dir = tmp_path / "preview", tmp_path / "run"
    preview_dir.mkdir()
    _preview(compose_config([*overrides, f"steps_per_epoch={STEPS_PER_EPOCH}"], name="preview"), preview_dir)
    harness.run(compose_config(overrides), run_dir)

    rows = read_csv(preview_dir / "schedule.csv")
    logged = dict(read_scalars(run_dir)["lr/group0"])  # optimizer step (1-based) -> LR it used
    assert len(logged) == 6 * STEPS_PER_EPOCH
    for step, lr in logged.items():
        index = step - 1 if interval == "step" else (step - 1) // STEPS_PER_EPOCH
        assert float(rows[index]["lr/group0"]) == pytest.approx(lr, rel=1e-6)  # events hold float32


def test_text_plot_scales_to_the_peak():
    assert text_plot([0.5, 1.0, 0.0, 0.25], width=8) == ["####", "########", "", "##"]


@pytest.mark.slow
def test_preview_command_side_by_side(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    many = subprocess.run([sys.executable, "-m", "harness.schedule", "-m", "scheduler=wsd,linear_warmup",
                           "trainer.max_epochs=40"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert many.returncode == 0, many.stderr[-2000:]
    # the warmup schedules step per optimizer step by default: the preview assumes steps_per_epoch=10
    assert "WSDScheduler: 40 epochs x 10 steps" in many.stdout and "LinearWarmupScheduler: 40 epochs" in many.stdout
    (sweep,) = tmp_path.glob("outputs/schedules/multirun/*/*")
    (first,) = sweep.glob("0_*")
    assert first.name == "0_scheduler=wsd,trainer.max_epochs=40"
    rows = read_csv(first / "schedule.csv")
    assert len(rows) == 400 and float(rows[-1]["lr/group0"]) == pytest.approx(1e-3)
    assert (first / "schedule.png").stat().st_size > 10_000
    assert len(list(sweep.glob("*/schedule.csv"))) == 2
    assert (sweep / "schedule.png").stat().st_size > 10_000, "every job's schedule on one figure"


def test_a_missing_matplotlib_is_named_and_the_csv_still_written(tmp_path, monkeypatch, capsys):
    from harness.schedule import plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert plot({"a": ([0, 1], [0.1, 0.2])}, tmp_path / "schedule.png", "t") is None
    assert 'schedule.png needs matplotlib: pip install -e ".[plot]" (the CSV is written anyway)' in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "schedule.png").exists()
