"""The training controls: early stopping, top-k checkpoints, the EMA of the weights, deterministic mode."""

import csv
import logging

import pytest
import torch

import harness
from harness.build import set_deterministic
from harness.checkpoint import Checkpointer, load_checkpoint, top_k_name
from harness.early_stopping import EarlyStopping
from harness.ema import build_ema
from harness.errors import ConfigError
from harness.evaluation import evaluate_checkpoint
from harness.loggers import MemoryLogger
from harness.loop import TrainerConfig, TrainState, evaluate, fit
from harness.schedulers import ConstantScheduler
from tests.conftest import STEPS_PER_EPOCH, compose_config, toy_problem

CPU = torch.device("cpu")
BASE = ["trainer.device=cpu", "trainer.progress_bar=false", "trainer.log_every_n_steps=5"]


def run(tmp_path, name, *overrides):
    return harness.run(compose_config([*BASE, *overrides]), tmp_path / name)


def stop_epoch(values, patience, min_delta=0.0, mode="min"):
    """The rule written out: the epoch (1-based) early stopping ends the run at, or None."""
    best, stale = None, 0
    for epoch, value in enumerate(values, 1):
        better = best is None or (value < best - min_delta if mode == "min" else value > best + min_delta)
        best, stale = (value, 0) if better else (best, stale + 1)
        if stale >= patience:
            return epoch
    return None


@pytest.mark.parametrize("values, patience, min_delta, mode, expected", [
    ([1.0, 0.9, 0.95, 0.92, 0.91, 0.5], 3, 0.0, "min", 5),
    ([1.0, 0.9, 0.95, 0.92, 0.85, 0.8], 3, 0.0, "min", None),  # epoch 5 improves: the count starts again
    ([1.0, 0.9, 0.89, 0.88, 0.87], 2, 0.05, "min", 4),  # improvements under min_delta don't count
    ([0.5, 0.7, 0.7, 0.69], 2, 0.0, "max", 4),
])
def test_the_rule_stops_where_the_hand_count_says(values, patience, min_delta, mode, expected):
    assert stop_epoch(values, patience, min_delta, mode) == expected  # the hand count agrees with the table
    rule, record, stopped = EarlyStopping("val/x", mode, patience, min_delta), {}, None
    for epoch, value in enumerate(values, 1):
        rule.update(record, value, epoch, mode)
        if rule.reason(record):
            stopped = epoch
            break
    assert stopped == expected


def test_early_stopping_ends_the_run_as_finished_and_tests_the_best(tmp_path, caplog):
    free = MemoryLogger()
    model, loader, val = toy_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    fit(model, opt, ConstantScheduler(opt), loader, val, TrainerConfig(max_epochs=12, progress_bar=False),
        device=CPU, logger=free)
    losses = [value for _, value in free.series("val/loss")]
    expected = stop_epoch(losses, patience=2, min_delta=0.02)
    assert expected is not None and expected < 12  # the toy problem plateaus

    model, loader, val = toy_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    state, stopped = TrainState(), MemoryLogger()
    config = TrainerConfig(max_epochs=12, progress_bar=False, early_stopping={"patience": 2, "min_delta": 0.02})
    with caplog.at_level(logging.INFO, logger="harness"):
        metrics = fit(model, opt, ConstantScheduler(opt), loader, val, config, device=CPU, logger=stopped, state=state)
    assert metrics["epoch"] == state.epoch == expected
    assert f"early stopping at epoch {expected}: val/loss has not improved by more than 0.02 for 2 epochs" \
        in caplog.text
    assert [v for _, v in stopped.series("val/loss")] == losses[:expected]  # the same run, cut short

    # Through a whole run: it ends as finished, best.pt is the best epoch, the test runs on it, and a resume
    # with the same settings has nothing left to train.
    args = ["trainer.max_epochs=30", "trainer.early_stopping.patience=2", "trainer.early_stopping.min_delta=0.01"]
    metrics = run(tmp_path, "run", *args)
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["train_state"]
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["train_state"]
    assert metrics["epoch"] == last["epoch"] < 30 and last["early_stop"]["stale"] == 2
    assert metrics["test/epoch"] == best["epoch"] == last["best_epoch"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="harness"):
        again = run(tmp_path, "run", *args, "resume=auto")
    assert "nothing to train" in caplog.text and again["test/acc"] == metrics["test/acc"]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["train_state"]["epoch"] == last["epoch"]


def test_early_stopping_settings_are_checked():
    with pytest.raises(ValueError, match=r"early_stopping\.patience=-1 must be an integer >= 0"):
        TrainerConfig(early_stopping={"patience": -1})
    with pytest.raises(ValueError, match="early_stopping has no key 'patiense'"):
        TrainerConfig(early_stopping={"patiense": 3})
    with pytest.raises(ConfigError, match=r"trainer\.early_stopping\.monitor='val/accuracy' is not a metric"):
        harness.run(compose_config([*BASE, "trainer.early_stopping.monitor=val/accuracy"]), "never")


def test_top_k_keeps_exactly_the_k_best_named_by_epoch_and_value(tmp_path):
    run(tmp_path, "run", "trainer.max_epochs=6", "trainer.save_top_k=2", "trainer.checkpoint_every_n_epochs=3",
        "logger=[csv]")  # monitor: val/acc, higher is better
    folder = tmp_path / "run" / "checkpoints"
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["val/acc"]]
    ranked = sorted(rows, key=lambda row: (-float(row["val/acc"]), int(row["epoch"])))[:2]  # ties: the earlier
    expected = {top_k_name(int(row["epoch"]), "val/acc", float(row["val/acc"])) for row in ranked}
    assert {p.name for p in folder.iterdir()} == {"last.pt", "best.pt", *expected}
    for row in ranked:  # each file holds the end of its own epoch
        name = top_k_name(int(row["epoch"]), "val/acc", float(row["val/acc"]))
        assert load_checkpoint(folder / name)["train_state"]["epoch"] == int(row["epoch"])
    assert load_checkpoint(folder / "best.pt")["train_state"]["epoch"] == int(ranked[0]["epoch"])


def test_a_crash_between_writing_and_removing_never_loses_the_best(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    folder = tmp_path / "checkpoints"
    saver = Checkpointer(folder, model, opt, ConstantScheduler(opt), monitor="val/loss")
    state = TrainState()
    for epoch, loss in enumerate([0.5, 0.4], 1):
        state.epoch = epoch
        state.enters_top_k(loss, "min", 2)
        saver.save(state, is_best=True)
    assert sorted(p.name for p in folder.glob("epoch*")) == ["epoch001-val_loss_0.5.pt", "epoch002-val_loss_0.4.pt"]

    class Killed(BaseException):
        pass

    def killed(self, missing_ok=False):
        raise Killed  # the process dies right after the new file is written

    state.epoch = 3
    assert state.enters_top_k(0.3, "min", 2)
    monkeypatch.setattr(type(folder), "unlink", killed)
    with pytest.raises(Killed):
        saver.save(state, is_best=True)
    monkeypatch.undo()
    assert sorted(p.name for p in folder.glob("epoch*")) == [  # one too many, never one too few
        "epoch001-val_loss_0.5.pt", "epoch002-val_loss_0.4.pt", "epoch003-val_loss_0.3.pt"]
    assert load_checkpoint(folder / "best.pt")["train_state"]["epoch"] == 3

    resumed = load_checkpoint(folder / "last.pt")  # a resume, then the next save tidies up
    state = TrainState.from_state_dict(resumed["train_state"])
    Checkpointer(folder, model, opt, ConstantScheduler(opt), monitor="val/loss").save(state)
    assert sorted(p.name for p in folder.glob("epoch*")) == ["epoch002-val_loss_0.4.pt", "epoch003-val_loss_0.3.pt"]


def test_ema_is_the_hand_computed_average_and_validation_uses_it():
    model, loader, val = toy_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    weights = []  # the weights after every step
    opt.register_step_post_hook(lambda *_: weights.append([p.detach().clone() for p in model.parameters()]))
    decay, ema = 0.8, build_ema(model, 0.8)
    logger = MemoryLogger()
    fit(model, opt, ConstantScheduler(opt), loader, val, TrainerConfig(max_epochs=2, progress_bar=False),
        device=CPU, logger=logger, ema=ema)
    average = weights[0]  # the first step copies the weights
    for step in weights[1:]:
        average = [decay * a + (1 - decay) * w for a, w in zip(average, step)]
    for mine, torchs in zip(average, ema.module.parameters()):
        torch.testing.assert_close(torchs, mine, rtol=1e-6, atol=1e-7)
    assert not torch.equal(next(model.parameters()), next(ema.module.parameters()))
    assert logger.series("val/loss")[-1][1] == pytest.approx(evaluate(ema, val, CPU)["val/loss"], rel=1e-12)


def test_ema_resumes_exactly_and_the_test_uses_it(tmp_path):
    args = ["trainer.ema_decay=0.9", "scheduler.warmup_epochs=1", "scheduler.total_epochs=3"]
    full = run(tmp_path, "full", *args, "trainer.max_epochs=3")
    run(tmp_path, "cut", *args, "trainer.max_epochs=2")
    resumed = run(tmp_path, "cut", *args, "trainer.max_epochs=3", "resume=auto")
    assert resumed == full
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["ema"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["ema"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert int(a["n_averaged"]) == 3 * STEPS_PER_EPOCH  # one update per optimizer step
    best = load_checkpoint(tmp_path / "full" / "checkpoints" / "best.pt")
    torch.save(best, tmp_path / "best.pt")
    assert evaluate_checkpoint(tmp_path / "best.pt")["test/loss"] == full["test/loss"]  # eval.py agrees
    torch.save({**best, "ema": {}}, tmp_path / "raw.pt")  # the same checkpoint without its EMA: other numbers
    assert evaluate_checkpoint(tmp_path / "raw.pt")["test/loss"] != full["test/loss"]


class PutLoss(torch.nn.Module):
    """Cross-entropy after an op torch has no deterministic CPU kernel for (``put_``)."""

    def __init__(self, **_):
        super().__init__()

    def forward(self, output, target):
        torch.zeros(2).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
        return torch.nn.functional.cross_entropy(output, target)


def test_deterministic_mode_is_on_for_the_run_and_an_op_without_it_fails_in_one_line(tmp_path):
    try:
        first = run(tmp_path, "a", "trainer.deterministic=true", "trainer.max_epochs=1")
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert run(tmp_path, "b", "trainer.deterministic=true", "trainer.max_epochs=1") == first
        with pytest.raises(ConfigError, match=r"trainer.deterministic=true, but put_ has no deterministic "
                                              r"implementation on cpu; set trainer.deterministic=false"):
            run(tmp_path, "c", "trainer.deterministic=true", "task.loss._target_=tests.test_controls.PutLoss")
        run(tmp_path, "d", "trainer.max_epochs=1")
        assert not torch.are_deterministic_algorithms_enabled()  # each run sets it, either way
    finally:
        set_deterministic(False)
