"""harness.run end to end into tmp_path, its TensorBoard events read back with tensorboard's own reader."""

import math

import pytest

import harness
from harness.errors import TrainingError
from harness.schedulers import cosine_warmup_lr
from tests.conftest import FAST, STEPS_PER_EPOCH, compose_config, read_scalars


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_run_logs_the_tags_and_the_schedule(tmp_path, interval):
    cfg = compose_config(
        [*FAST, "scheduler.warmup_epochs=1.5" if interval == "step" else "scheduler.warmup_epochs=1",
         f"scheduler.interval={interval}", "trainer.log_every_n_steps=1", "optimizer.lr=0.05"]
    )
    metrics = harness.run(cfg, tmp_path)
    scalars = read_scalars(tmp_path)

    assert {"train/loss", "lr/group0", "val/loss", "val/acc", "epoch"} <= set(scalars)
    epoch_ends = [STEPS_PER_EPOCH * e for e in range(1, 5)]
    assert scalars["epoch"] == [(s, float(e)) for e, s in enumerate(epoch_ends, 1)]
    assert [s for s, _ in scalars["val/acc"]] == epoch_ends
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 4 * STEPS_PER_EPOCH + 1))

    for step, lr in scalars["lr/group0"]:
        if interval == "epoch":
            expected = cosine_warmup_lr((step - 1) // STEPS_PER_EPOCH + 1, 0.05, 1, 4, 1e-3)
        else:
            expected = cosine_warmup_lr(step, 0.05, 1.5 * STEPS_PER_EPOCH, 4 * STEPS_PER_EPOCH, 1e-3)
        assert lr == pytest.approx(expected, rel=1e-6)  # event files store float32

    assert metrics["val/acc"] == pytest.approx(scalars["val/acc"][-1][1])
    assert metrics["step"] == 4 * STEPS_PER_EPOCH


def test_same_config_and_seed_give_the_same_numbers(tmp_path):
    cfg = compose_config([*FAST, "model=cnn", "trainer.max_epochs=2", "scheduler.warmup_epochs=1"])
    first = harness.run(cfg, tmp_path / "a")
    second = harness.run(cfg, tmp_path / "b")
    assert first == second
    assert read_scalars(tmp_path / "a") == read_scalars(tmp_path / "b")
    other_seed = harness.run(compose_config([*FAST, "model=cnn", "trainer.max_epochs=2",
                                             "scheduler.warmup_epochs=1", "seed=1"]), tmp_path / "c")
    assert other_seed["train/loss"] != first["train/loss"]


def test_default_config_learns_digits(tmp_path):
    """The shipped default (30 epochs) reaches the 97% test accuracy the README promises."""
    metrics = harness.run(compose_config(["trainer.progress_bar=false", "trainer.device=cpu"]), tmp_path)
    assert metrics["epoch"] == 30
    assert metrics["test/acc"] >= 0.97 and metrics["val/acc"] >= 0.96


def test_events_are_flushed_when_training_fails(tmp_path):
    cfg = compose_config([*FAST, "optimizer.lr=1.0e6", "optimizer.momentum=0.99", "trainer.log_every_n_steps=1"])
    with pytest.raises(TrainingError, match="is nan"):
        harness.run(cfg, tmp_path)
    scalars = read_scalars(tmp_path)
    assert scalars["train/loss"], "the points before the failure reached the disk"


@pytest.mark.parametrize("epochs, accuracy", [(1, 0.90), (2, 0.95)])
def test_short_runs_at_the_defaults_warm_up_and_learn(tmp_path, epochs, accuracy):
    metrics = harness.run(compose_config([f"trainer.max_epochs={epochs}", "trainer.device=cpu",
                                          "trainer.progress_bar=false", "trainer.log_every_n_steps=1"]), tmp_path)
    assert metrics["val/acc"] >= accuracy
    lrs = [lr for _, lr in read_scalars(tmp_path)["lr/group0"]]
    assert max(lrs) > 0.05 and lrs[-1] < 0.01, "a real warmup and decay, not min_lr only"


def test_a_fractional_warmup_with_interval_epoch_is_the_schedule_at_whole_epochs():
    import torch

    from harness.schedulers import CosineWarmupScheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=2.5, total_epochs=6, min_lr=0.0)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:2] == pytest.approx([1 / 2.5, 2 / 2.5])  # epochs 1 and 2 warm up
    assert lrs[2:] == pytest.approx([cosine_warmup_lr(t, 1.0, 2.5, 6) for t in (3, 4, 5, 6)])
    assert lrs[2] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5 / 3.5)))  # decay from t = 2.5
