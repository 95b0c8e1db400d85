"""Resume: exact continuation, resume=auto, config changes, faults that must lose nothing."""

import logging
import signal
from pathlib import Path

import pytest
import torch

import harness
from harness.checkpoint import load_checkpoint
from harness.errors import CheckpointError, TrainingError
from tests.conftest import STEPS_PER_EPOCH, compose_config, read_scalars, train

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
    assert load_checkpoint(tmp_path / "new" / "checkpoints" / "last.pt")["train_state"]["epoch"] == 2


def test_resume_of_a_finished_run_trains_nothing(tmp_path, caplog):
    first = run(tmp_path, "done", "trainer.max_epochs=2")
    before = (tmp_path / "done" / "checkpoints" / "last.pt").read_bytes()
    with caplog.at_level(logging.INFO):
        again = run(tmp_path, "done", "trainer.max_epochs=2", "resume=auto")
    assert again == first
    assert "nothing to train; testing best.pt again" in caplog.text
    assert (tmp_path / "done" / "checkpoints" / "last.pt").read_bytes() == before


def test_training_longer_stretches_the_schedule_and_reports_the_change(tmp_path, caplog):
    epochs = ["scheduler.total_epochs=${trainer.max_epochs}", "scheduler.interval=epoch"]
    run(tmp_path, "r", "trainer.max_epochs=3", *epochs)
    with caplog.at_level(logging.WARNING):
        run(tmp_path, "r", "trainer.max_epochs=5", *epochs, "resume=auto")
    assert "scheduler.total_epochs: 3 -> 5" in caplog.text
    assert "trainer.max_epochs: 3 -> 5" in caplog.text
    lrs = dict(read_scalars(tmp_path / "r")["lr/group0"])
    steps_per_epoch = STEPS_PER_EPOCH
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
    with pytest.raises(CheckpointError, match="an epoch is now 9 steps, in the checkpoint 17"):
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


@pytest.mark.slow
def test_sigterm_mid_epoch_then_the_printed_resume_command_gives_the_uninterrupted_numbers(tmp_path):
    # batches of 16: 68 steps an epoch, so step 120 is batch 52 of epoch 2
    common = ["trainer.max_epochs=2", "scheduler.warmup_epochs=1", "data.batch_size=16", "trainer.progress_bar=false"]
    harness.run(compose_config(common), tmp_path / "full")  # the uninterrupted run, in this process
    stopped = train(common, tmp_path, signal_at_step=120)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert "stopped by SIGTERM at epoch 2, step 120" in stopped.stderr and "Traceback" not in stopped.stderr
    (run_dir,) = [p.parent.parent for p in (tmp_path / "outputs").rglob(".hydra/config.yaml")]
    last = run_dir / "checkpoints" / "last.pt"
    interrupted = load_checkpoint(last)["train_state"]
    assert (interrupted["epoch"], interrupted["step"], interrupted["batch"]) == (1, 120, 52)
    hint = next(line for line in stopped.stderr.splitlines() if line.startswith("resume with: "))
    assert hint == f"resume with: python train.py {' '.join(common)} resume={run_dir}"

    original = (run_dir / ".hydra" / "config.yaml").read_text()
    resumed = train(hint.split()[4:], tmp_path)  # the printed command, as a user pastes it
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert list((tmp_path / "outputs").glob("*/*")) == [run_dir], "it continued in the same run directory"
    assert (run_dir / ".hydra" / "config.yaml").read_text() == original, "the run's first config is kept"
    assert len(list((run_dir / ".hydra").glob("resume-*/config.yaml"))) == 1
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(last)
    assert b["train_state"] == a["train_state"]  # metrics, loss sums, best: all to the bit
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert per_epoch_tags(run_dir) == per_epoch_tags(tmp_path / "full")


def per_epoch_tags(run_dir: Path):
    scalars = read_scalars(run_dir)
    return {tag: scalars[tag] for tag in ("val/loss", "val/acc", "train/epoch_loss", "epoch", "train/loss")}


def test_a_fresh_run_never_overwrites_an_existing_one(tmp_path):
    run(tmp_path, "r", "trainer.max_epochs=1")
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    before = last.read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run .*; pass resume=auto to continue it"):
        run(tmp_path, "r", "trainer.max_epochs=2")
    assert last.read_bytes() == before


def test_resume_run_dir_mapping(tmp_path, monkeypatch):
    from harness.experiment import resume_run_dir

    monkeypatch.delenv("HARNESS_CLAIMED_DIRS", raising=False)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.pt").write_bytes(b"x")
    (tmp_path / "loose.pt").write_bytes(b"x")
    new = str(tmp_path / "new")
    assert resume_run_dir(None, new) == new
    assert Path(new).is_dir(), "claimed: made here, so no other process can take it"
    assert resume_run_dir("auto", new) == new, "the same launch resolves the same directory"
    assert resume_run_dir(str(run_dir), new) == str(run_dir)
    assert resume_run_dir(str(run_dir / "checkpoints" / "best.pt"), new) == str(run_dir)  # no last.pt there
    assert resume_run_dir(str(tmp_path / "loose.pt"), new) == new
    assert resume_run_dir(str(tmp_path / "missing"), new) == new
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"x")
    assert resume_run_dir(str(run_dir / "checkpoints" / "last.pt"), new) == str(run_dir)
    assert resume_run_dir(str(run_dir / "checkpoints" / "best.pt"), new) == new, "never over a newer last.pt"


def test_two_launches_in_the_same_second_get_two_directories(tmp_path, monkeypatch):
    from harness.rundir import claim

    default = str(tmp_path / "outputs" / "13-21-22")
    monkeypatch.delenv("HARNESS_CLAIMED_DIRS", raising=False)
    first = claim(default)
    monkeypatch.delenv("HARNESS_CLAIMED_DIRS")  # another process: it does not inherit the first one's claim
    second = claim(default)
    assert (first, second) == (default, f"{default}-1")


def test_checkpoint_cadence(tmp_path, monkeypatch):
    from harness.checkpoint import Checkpointer

    saved = []
    real_save = Checkpointer.save

    def spy(self, state, is_best=False):
        saved.append((state.epoch, is_best))
        return real_save(self, state, is_best)

    monkeypatch.setattr(Checkpointer, "save", spy)
    # train/loss with mode max improves only on the first epoch: the cadence alone decides the rest
    common = ["trainer.max_epochs=5", "trainer.monitor=train/loss", "trainer.monitor_mode=max"]
    run(tmp_path, "every", *common)
    assert saved == [(1, True), (2, False), (3, False), (4, False), (5, False)]
    saved.clear()
    run(tmp_path, "every2", *common, "trainer.checkpoint_every_n_epochs=2")
    assert [epoch for epoch, _ in saved] == [1, 2, 4, 5]
    saved.clear()
    run(tmp_path, "end", *common, "trainer.checkpoint_every_n_epochs=0")
    assert [epoch for epoch, _ in saved] == [1, 5]
    saved.clear()
    # every new best writes (the training loss falls every epoch here)
    run(tmp_path, "bests", "trainer.max_epochs=5", "trainer.monitor=train/loss", "trainer.monitor_mode=min",
        "trainer.checkpoint_every_n_epochs=0")
    assert saved == [(e, True) for e in range(1, 6)]
    full = run(tmp_path, "full", "trainer.max_epochs=6")
    run(tmp_path, "sparse", "trainer.max_epochs=6", "trainer.checkpoint_every_n_epochs=4")
    (tmp_path / "sparse" / "checkpoints" / "last.pt").unlink()
    (tmp_path / "sparse" / "checkpoints" / "best.pt").rename(tmp_path / "sparse" / "checkpoints" / "last.pt")
    resumed = run(tmp_path, "sparse", "trainer.max_epochs=6", "resume=auto")  # from an older one: still exact
    trained = {k: v for k, v in resumed.items() if not k.startswith("test/")}  # best.pt was moved away above
    assert trained == {k: v for k, v in full.items() if not k.startswith("test/")}
