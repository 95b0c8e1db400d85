"""Resume: exact continuation, resume=auto, config changes, faults that must lose nothing."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import harness
from harness.checkpoint import load_checkpoint
from harness.errors import CheckpointError, ConfigError, TrainingError
from harness.loop import Progress, fit
from harness.schedulers import ConstantScheduler
from tests.conftest import ROOT, compose_config
from tests.test_loop import toy_problem
from tests.test_run import read_scalars

BASE = ["trainer.device=cpu", "trainer.progress_bar=false", "trainer.log_every_n_steps=1",
        "scheduler.warmup_epochs=2", "scheduler.total_epochs=6", "model=cnn"]


def run(tmp_path, name, *overrides):
    return harness.run(compose_config([*BASE, *overrides]), tmp_path / name)


def per_epoch(scalars):
    tags = ("train/epoch_loss", "val/loss", "val/acc", "epoch", "lr/group0", "train/loss")
    return {tag: scalars[tag] for tag in tags}


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_stopped_and_resumed_equals_uninterrupted_to_the_bit(tmp_path, interval):
    full = run(tmp_path, "full", "trainer.max_epochs=6", f"scheduler.interval={interval}")
    run(tmp_path, "split", "trainer.max_epochs=3", f"scheduler.interval={interval}")
    resumed = run(tmp_path, "split", "trainer.max_epochs=6", f"scheduler.interval={interval}", "resume=auto")

    assert resumed == full
    expected, got = per_epoch(read_scalars(tmp_path / "full")), per_epoch(read_scalars(tmp_path / "split"))
    assert got == expected  # same steps, same values: no duplicated or missing points after the resume
    steps = [s for s, _ in got["train/loss"]]
    assert steps == sorted(set(steps))
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_resume_auto_starts_fresh_without_a_checkpoint(tmp_path):
    metrics = run(tmp_path, "new", "trainer.max_epochs=2", "resume=auto")
    assert metrics["epoch"] == 2
    assert load_checkpoint(tmp_path / "new" / "checkpoints" / "last.pt")["progress"]["epoch"] == 2


def test_resume_of_a_finished_run_trains_nothing(tmp_path, caplog):
    first = run(tmp_path, "done", "trainer.max_epochs=2")
    before = (tmp_path / "done" / "checkpoints" / "last.pt").read_bytes()
    with caplog.at_level(logging.INFO):
        again = run(tmp_path, "done", "trainer.max_epochs=2", "resume=auto")
    assert again == first
    assert "nothing to do" in caplog.text
    assert (tmp_path / "done" / "checkpoints" / "last.pt").read_bytes() == before


def test_training_longer_stretches_the_schedule_and_reports_the_change(tmp_path, caplog):
    run(tmp_path, "r", "trainer.max_epochs=3", "scheduler.total_epochs=${trainer.max_epochs}")
    with caplog.at_level(logging.WARNING):
        run(tmp_path, "r", "trainer.max_epochs=5", "scheduler.total_epochs=${trainer.max_epochs}", "resume=auto")
    assert "scheduler.total_epochs: 3 -> 5" in caplog.text
    assert "trainer.max_epochs: 3 -> 5" in caplog.text
    lrs = dict(read_scalars(tmp_path / "r")["lr/group0"])
    steps_per_epoch = 23
    # epoch 3 (index 2) was the last at min_lr under the old schedule; under the new one it is mid-decay.
    from harness.schedulers import cosine_warmup_lr

    assert lrs[3 * steps_per_epoch + 1] == pytest.approx(cosine_warmup_lr(4, 0.1, 2, 5, 1e-3), rel=1e-6)
    assert lrs[5 * steps_per_epoch] == pytest.approx(1e-3, rel=1e-6)


def test_resume_into_a_different_model_shape_is_refused(tmp_path):
    run(tmp_path, "r", "trainer.max_epochs=1")
    with pytest.raises(CheckpointError, match="cannot resume: the model differs from the checkpoint's"):
        run(tmp_path, "r", "trainer.max_epochs=2", "model.channels=[8,16]", "resume=auto")


def test_resume_with_another_optimizer_or_batch_size_is_refused(tmp_path):
    run(tmp_path, "r", "trainer.max_epochs=1")
    with pytest.raises(CheckpointError, match="cannot resume with optimizer torch.optim.AdamW"):
        run(tmp_path, "r", "trainer.max_epochs=2", "optimizer=adamw", "optimizer.lr=0.1", "resume=auto")
    with pytest.raises(CheckpointError, match="an epoch is now 12 steps, in the checkpoint 23"):
        run(tmp_path, "r", "trainer.max_epochs=2", "data.batch_size=128", "resume=auto")


def test_truncated_checkpoint_fails_cleanly_and_writes_nothing(tmp_path):
    run(tmp_path, "r", "trainer.max_epochs=1")
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    listing = sorted(p.name for p in (tmp_path / "r").rglob("*"))
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        run(tmp_path, "r", "trainer.max_epochs=2", "resume=auto")
    assert sorted(p.name for p in (tmp_path / "r").rglob("*")) == listing


def test_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run(tmp_path, "r", "trainer.max_epochs=2", "scheduler.total_epochs=4")
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    good = last.read_bytes()
    with pytest.raises(TrainingError) as info:
        # the config wins on resume, so a huge LR is a reliable way to make the loss blow up
        run(tmp_path, "r", "trainer.max_epochs=4", "scheduler.total_epochs=4", "optimizer.lr=1.0e12",
            "scheduler.min_lr=0.0", "resume=auto")
    message = str(info.value)
    assert "at epoch 3, step" in message
    assert f"last good checkpoint: {last}" in message
    assert last.read_bytes() == good


def nan_on_calls(*which: int):
    """Cross-entropy that turns NaN on the given (1-based) calls."""
    calls = {"n": 0}

    def loss_fn(logits, y):
        calls["n"] += 1
        loss = torch.nn.functional.cross_entropy(logits, y)
        return loss * float("nan") if calls["n"] in which else loss

    return loss_fn


def test_skip_batch_drops_bad_updates_and_stops_if_they_keep_coming(tmp_path):
    model, loader, val = toy_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    progress = Progress()
    metrics = fit(model, opt, ConstantScheduler(opt), loader, val, max_epochs=1, device=torch.device("cpu"),
                  on_nonfinite="skip_batch", progress=progress, progress_bar=False, loss_fn=nan_on_calls(2, 3, 5))
    assert progress.skipped == 3
    assert metrics["step"] == 6 - 3
    assert all(torch.isfinite(p).all() for p in model.parameters())

    always_nan = lambda logits, y: torch.nn.functional.cross_entropy(logits, y) * float("nan")  # noqa: E731
    with pytest.raises(TrainingError, match="the loss of 4 batches in a row is nan"):
        fit(model, opt, ConstantScheduler(opt), loader, val, max_epochs=1, device=torch.device("cpu"),
            on_nonfinite="skip_batch", nonfinite_patience=4, progress_bar=False, loss_fn=always_nan)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.monitor=val/f1"], "trainer.monitor='val/f1' must be one of val/acc, val/loss, train/loss"),
        (["trainer.monitor_mode=up"], "trainer.monitor_mode='up' must be one of max, min"),
        (["trainer.on_nonfinite=ignore"], "trainer.on_nonfinite='ignore' must be one of stop, skip_batch"),
        (["trainer.nonfinite_patience=0"], "trainer.nonfinite_patience=0 must be an integer >= 1"),
        (["resume=''"], "resume='' must be null, auto, a run directory or a .pt file"),
        (["resume=/no/such/run"], "resume=/no/such/run: no such run directory or checkpoint file"),
    ],
)
def test_bad_checkpoint_settings(tmp_path, overrides, message):
    with pytest.raises((ConfigError, CheckpointError)) as info:
        run(tmp_path, "r", "trainer.max_epochs=1", *overrides)
    assert message in str(info.value)
    assert not (tmp_path / "r").exists(), "nothing written"


def train_subprocess(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigterm_mid_run_then_resume_gives_the_uninterrupted_numbers(tmp_path):
    # batches of 8: 180 steps an epoch, so the signal almost surely lands mid-epoch
    common = ["trainer.max_epochs=12", "data.batch_size=8", "trainer.progress_bar=false", "trainer.device=cpu"]
    full = train_subprocess([*common, "hydra.run.dir=full"], tmp_path)
    assert full.wait(timeout=300) == 0, full.stderr.read()

    proc = train_subprocess([*common, "hydra.run.dir=split"], tmp_path)
    last = tmp_path / "split" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM at epoch" in stderr
    resume_hint = next(line for line in stderr.splitlines() if line.startswith("resume with: python train.py"))
    interrupted = load_checkpoint(last)["progress"]
    assert 0 < interrupted["step"] < 12 * 180
    assert interrupted["batch"] > 0, "a stop on a signal saves mid-epoch, after the current step"

    resumed = train_subprocess([*common, "hydra.run.dir=split", "resume=auto"], tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert "resume=" in resume_hint and str(tmp_path / "split") in resume_hint

    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(last)
    assert b["metrics"] == a["metrics"]
    assert b["progress"] == a["progress"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert per_epoch_tags(tmp_path / "split") == per_epoch_tags(tmp_path / "full")


def per_epoch_tags(run_dir: Path):
    scalars = read_scalars(run_dir)
    return {tag: scalars[tag] for tag in ("val/loss", "val/acc", "train/epoch_loss", "epoch")}


@pytest.mark.slow
def test_resume_path_continues_in_that_run_dir_and_keeps_its_config(tmp_path):
    common = ["scheduler.warmup_epochs=1", "trainer.progress_bar=false"]
    first = train_subprocess([*common, "trainer.max_epochs=2"], tmp_path)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    (run_dir,) = [p.parent.parent for p in (tmp_path / "outputs").rglob(".hydra/config.yaml")]
    original = (run_dir / ".hydra" / "config.yaml").read_text()
    second = train_subprocess([*common, "trainer.max_epochs=3", f"resume={run_dir}"], tmp_path)
    assert second.wait(timeout=300) == 0, second.stderr.read()
    assert list((tmp_path / "outputs").glob("*/*")) == [run_dir], "no new run directory"
    assert (run_dir / ".hydra" / "config.yaml").read_text() == original
    assert len(list((run_dir / ".hydra").glob("resume-*/config.yaml"))) == 1
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]["epoch"] == 3


@pytest.mark.slow
def test_missing_resume_path_exits_non_zero_and_creates_nothing_there(tmp_path):
    proc = train_subprocess(["resume=runs/nope"], tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert stderr.strip() == "error: resume=runs/nope: no such run directory or checkpoint file"
    assert not (tmp_path / "runs").exists()


def test_a_fresh_run_never_overwrites_an_existing_one(tmp_path):
    run(tmp_path, "r", "trainer.max_epochs=1")
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    before = last.read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run .*; pass resume=auto to continue it"):
        run(tmp_path, "r", "trainer.max_epochs=2")
    assert last.read_bytes() == before


def test_resume_run_dir_mapping(tmp_path):
    from harness.experiment import resume_run_dir

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.pt").write_bytes(b"x")
    (tmp_path / "loose.pt").write_bytes(b"x")
    assert resume_run_dir(None, "new") == "new"
    assert resume_run_dir("auto", "new") == "new"
    assert resume_run_dir(str(run_dir), "new") == str(run_dir)
    assert resume_run_dir(str(run_dir / "checkpoints" / "best.pt"), "new") == str(run_dir)
    assert resume_run_dir(str(tmp_path / "loose.pt"), "new") == "new"
    assert resume_run_dir(str(tmp_path / "missing"), "new") == "new"


def test_checkpoint_cadence(tmp_path, monkeypatch):
    from harness.checkpoint import Checkpointer

    saved = []
    real_save = Checkpointer.save

    def spy(self, state, metrics=None):
        saved.append(state["progress"]["epoch"])
        return real_save(self, state, metrics)

    monkeypatch.setattr(Checkpointer, "save", spy)
    # train/loss with mode max improves only on the first epoch: the cadence alone decides the rest
    common = ["trainer.max_epochs=5", "trainer.monitor=train/loss", "trainer.monitor_mode=max"]
    every_epoch = "trainer.checkpoint_min_interval_s=0"
    run(tmp_path, "every", *common, every_epoch)
    assert saved == [1, 2, 3, 4, 5]
    saved.clear()
    run(tmp_path, "every2", *common, every_epoch, "trainer.checkpoint_every_n_epochs=2")
    assert saved == [1, 2, 4, 5]
    saved.clear()
    run(tmp_path, "end", *common, every_epoch, "trainer.checkpoint_every_n_epochs=0")
    assert saved == [1, 5]
    saved.clear()
    # the time floor: within an hour of the first checkpoint only the end writes ...
    run(tmp_path, "floor", *common, "trainer.checkpoint_min_interval_s=3600")
    assert saved == [1, 5]
    saved.clear()
    # ... and every new best (the training loss falls every epoch here)
    run(tmp_path, "floor_bests", "trainer.max_epochs=5", "trainer.monitor=train/loss", "trainer.monitor_mode=min",
        "trainer.checkpoint_min_interval_s=3600")
    assert saved == [1, 2, 3, 4, 5]
    full = run(tmp_path, "full", "trainer.max_epochs=6")
    run(tmp_path, "sparse", "trainer.max_epochs=6", "trainer.checkpoint_every_n_epochs=4")
    (tmp_path / "sparse" / "checkpoints" / "last.pt").unlink()
    (tmp_path / "sparse" / "checkpoints" / "best.pt").rename(tmp_path / "sparse" / "checkpoints" / "last.pt")
    assert run(tmp_path, "sparse", "trainer.max_epochs=6", "resume=auto") == full  # from an older one: still exact


def test_skip_batch_with_accumulation_steps_every_group_that_has_gradients():
    model, loader, val = toy_problem()  # 6 batches: groups of 2 are (1,2) (3,4) (5,6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    progress = Progress()
    metrics = fit(model, opt, ConstantScheduler(opt), loader, val, max_epochs=1, device=torch.device("cpu"),
                  accumulate_grad_batches=2, on_nonfinite="skip_batch", progress=progress, progress_bar=False,
                  loss_fn=nan_on_calls(4, 5, 6))
    # group (1,2): a step; group (3,4): batch 4 skipped, batch 3's gradients still step; group (5,6): nothing
    assert metrics["step"] == 2
    assert progress.skipped == 3


def test_a_skipped_batch_leaves_its_group_the_mean_of_the_batches_that_trained():
    model, loader, val = toy_problem()  # 6 batches: groups of 2 are (1,2) (3,4) (5,6); batch 4 turns NaN
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, opt, ConstantScheduler(opt), loader, val, max_epochs=1, device=torch.device("cpu"),
        accumulate_grad_batches=2, on_nonfinite="skip_batch", progress_bar=False, loss_fn=nan_on_calls(4))

    reference, same_batches, _ = toy_problem()  # same seed: the same weights and the same shuffle
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    batches = list(same_batches)
    for group in [(0, 1), (2,), (4, 5)]:  # batch 4 (index 3) dropped: group two is batch 3 alone
        ref_opt.zero_grad()
        for i in group:
            x, y = batches[i]
            (torch.nn.functional.cross_entropy(reference(x), y) / len(group)).backward()
        ref_opt.step()
    for trained, expected in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(trained, expected, rtol=1e-6, atol=1e-7)
