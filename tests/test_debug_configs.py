"""The debug configs (fast_dev_run, limit, overfit, profile) each run in seconds and do what they say; the
experiment configs set several groups at once and still take overrides."""

import json

import pytest

import harness
from harness.checkpoint import load_checkpoint
from harness.debug import limit_batches
from tests.conftest import CONF, STEPS_PER_EPOCH, compose_config

CPU = ["trainer.device=cpu"]


def run(tmp_path, *overrides):
    return harness.run(compose_config([*CPU, *overrides]), tmp_path / "run")


def last_state(tmp_path):
    return load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["train_state"]


def test_fast_dev_run_trains_one_batch_validates_one_and_tests_one(tmp_path):
    metrics = run(tmp_path, "debug=fast_dev_run")
    assert (metrics["epoch"], metrics["step"]) == (1, 1)
    assert {"val/acc", "test/acc"} <= set(metrics)
    assert "dir: ${harness_run_dir:${resume},outputs/debug/" in (CONF / "debug" / "fast_dev_run.yaml").read_text()


@pytest.mark.parametrize("limit, expected", [(5, 5), (0.25, int(0.25 * STEPS_PER_EPOCH)), (1.0, STEPS_PER_EPOCH),
                                             (100, STEPS_PER_EPOCH), (0.01, 1)])
def test_limits_are_counts_or_fractions(limit, expected):
    loader = list(range(STEPS_PER_EPOCH))
    assert len(limit_batches(loader, limit)) == expected


def test_debug_limit_shortens_every_epoch_and_the_schedule_follows(tmp_path):
    metrics = run(tmp_path, "debug=limit")
    assert (metrics["epoch"], metrics["step"]) == (3, 3 * 5)
    assert last_state(tmp_path)["step"] == 15
    assert metrics["lr/group0"] < compose_config(["debug=limit"]).optimizer.lr  # the schedule ran its course


def test_debug_overfit_drives_the_loss_of_the_fixed_batches_to_zero(tmp_path):
    metrics = run(tmp_path, "debug=overfit", "trainer.max_epochs=60")
    assert metrics["step"] == 60 * 2
    assert metrics["train/loss"] < 0.05 and metrics["val/loss"] < 0.01 and metrics["val/acc"] == 1.0


def test_debug_profile_writes_a_trace_perfetto_can_open(tmp_path):
    run(tmp_path, "debug=profile")
    traces = list((tmp_path / "run" / "profile").glob("*.pt.trace.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    steps = {e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")}
    assert len(steps) == 5  # the five active steps, one span each


def test_experiment_configs_set_several_groups_and_still_take_overrides(tmp_path):
    cfg = compose_config(["experiment=digits_wsd"])
    assert cfg.scheduler._target_.endswith("WSDScheduler") and cfg.optimizer._target_ == "torch.optim.AdamW"
    assert (cfg.trainer.ema_decay, cfg.trainer.save_top_k, cfg.trainer.early_stopping.patience) == (0.99, 3, 10)
    assert compose_config(["experiment=digits_wsd", "trainer.ema_decay=0.5"]).trainer.ema_decay == 0.5
    cifar = compose_config(["experiment=cifar10_resnet18"])
    assert cifar.data._target_ == "harness.data.cifar10" and cifar.model._target_ == "harness.models.resnet18"
    assert cifar.scheduler.total_epochs == cifar.trainer.max_epochs == 30
    metrics = run(tmp_path, "experiment=digits_wsd", "trainer.max_epochs=2", "trainer.progress_bar=false")
    assert metrics["epoch"] == 2 and metrics["test/acc"] > 0.8
    checkpoints = {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()}
    assert len([name for name in checkpoints if name.startswith("epoch")]) == 2  # top 3 of 2 epochs


def test_the_cifar_experiment_trains_a_step_on_fake_images(tmp_path):
    metrics = run(tmp_path, "experiment=cifar10_resnet18", "data=fake", "data.batch_size=8", "debug=fast_dev_run",
                  "trainer.precision=32")
    assert metrics["step"] == 1
