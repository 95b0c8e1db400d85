"""Checkpoint files: atomic writes, safe loads, RNG round trips, resume lookup, a full disk, graceful signals."""

import errno
import os
import random
import signal

import numpy as np
import pytest
import torch

from harness.checkpoint import (
    Checkpointer,
    capture_rng,
    load_checkpoint,
    resolve_resume,
    restore_rng,
    restore_training_state,
    save_atomic,
)
from harness.errors import CheckpointError, Stopped
from harness.loop import TrainState
from harness.schedulers import CosineWarmupScheduler
from harness.signals import StopOnSignal


def minimal_state(value: float = 1.0) -> dict:
    return {
        "model": {"w": torch.full((3,), value)},
        "optimizer": {"state": {}, "param_groups": [{"params": [0], "lr": 0.1}]},
        "scheduler": {},
        "train_state": {"epoch": 1, "step": 5},
        "rng": capture_rng(),
    }


def checkpointer(directory, lr=0.1):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return Checkpointer(directory, model, optimizer, CosineWarmupScheduler(optimizer, 1, 5, 0.0), extra={"config": {}})


def test_checkpoint_is_plain_data_that_loads_with_weights_only(tmp_path):
    path = save_atomic(minimal_state(), tmp_path / "last.pt")
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["model"]["w"], torch.ones(3))
    assert load_checkpoint(path)["train_state"] == {"epoch": 1, "step": 5}


def test_rng_round_trip_through_a_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_atomic({"rng": capture_rng()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2), np.random.randn())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(2), expected[2])
    assert np.random.randn() == expected[3]


@pytest.mark.parametrize("dies_in", ["fsync", "replace"])
def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch, dies_in):
    path = save_atomic(minimal_state(1.0), tmp_path / "last.pt")

    def die(*args):
        raise KeyboardInterrupt  # the process stops with the new file written, before the rename

    monkeypatch.setattr(os, dies_in, die)
    with pytest.raises(KeyboardInterrupt):
        save_atomic(minimal_state(2.0), path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"], "no temporary file left behind"


def test_a_full_disk_fails_in_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = checkpointer(tmp_path)
    ckpt.save(TrainState(epoch=1, step=5))
    before = (tmp_path / "last.pt").read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(CheckpointError) as info:
        ckpt.save(TrainState(epoch=2, step=10), is_best=True)
    assert f"could not write {tmp_path / 'last.pt'} (No space left on device); the previous last.pt is intact" in str(
        info.value)
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert (tmp_path / "last.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_temporary_files_of_a_killed_writer_are_cleared_on_resume(tmp_path):
    save_atomic(minimal_state(1.0), tmp_path / "last.pt")
    (tmp_path / ".last.pt.4242.tmp").write_bytes(b"half a checkpoint")
    checkpointer(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_best_gets_the_same_bytes_as_last_and_stays_until_the_next_best(tmp_path):
    ckpt = checkpointer(tmp_path)
    assert ckpt.save(TrainState(epoch=1, step=5), is_best=True) == f"{tmp_path / 'last.pt'} (epoch 1, step 5)"
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "last.pt").read_bytes()
    ckpt.save(TrainState(epoch=2, step=10))
    assert load_checkpoint(tmp_path / "best.pt")["train_state"]["epoch"] == 1
    assert load_checkpoint(tmp_path / "last.pt")["train_state"]["epoch"] == 2
    assert ckpt.latest == f"{tmp_path / 'last.pt'} (epoch 2, step 10)"


def test_restore_puts_back_weights_optimizer_position_and_state(tmp_path):
    ckpt = checkpointer(tmp_path)
    loss = ckpt.model(torch.ones(1, 2)).sum()
    loss.backward()
    ckpt.optimizer.step()
    ckpt.scheduler.step()
    state = TrainState(epoch=1, step=1, batch=3, epoch_loss=1.5, epoch_samples=2, best=0.5, best_epoch=1)
    ckpt.save(state)
    fresh = checkpointer(tmp_path / "other")
    restored = restore_training_state(load_checkpoint(tmp_path / "last.pt"), fresh.model, fresh.optimizer,
                                      fresh.scheduler)
    assert restored == state
    assert all(torch.equal(a, b) for a, b in zip(ckpt.model.parameters(), fresh.model.parameters()))
    assert fresh.scheduler.last_epoch == 1 and fresh.scheduler.get_last_lr() == ckpt.scheduler.get_last_lr()
    assert torch.equal(fresh.optimizer.state_dict()["state"][0]["momentum_buffer"],
                       ckpt.optimizer.state_dict()["state"][0]["momentum_buffer"])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "is not a readable checkpoint"),
        (lambda p: p.write_bytes(b""), "is not a readable checkpoint"),
        (lambda p: p.write_text("hello, I am a text file"), "is not a readable checkpoint"),
        (lambda p: torch.save({"weights": torch.ones(2)}, p), "is not a harness checkpoint (it has no model"),
        (lambda p: torch.save([1, 2, 3], p), "is not a harness checkpoint"),
        (lambda p: p.unlink(), "no such checkpoint file"),
    ],
)
def test_damaged_files_fail_in_one_line(tmp_path, damage, message):
    path = save_atomic(minimal_state(), tmp_path / "last.pt")
    damage(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_code_in_a_checkpoint_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, path)
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        load_checkpoint(path)


def test_resolve_resume(tmp_path):
    run_dir = tmp_path / "run"
    assert resolve_resume(None, run_dir) is None
    assert resolve_resume("auto", run_dir) is None  # nothing yet: start fresh
    with pytest.raises(CheckpointError, match="no such run directory or checkpoint file"):
        resolve_resume(str(tmp_path / "nope"), run_dir)
    run_dir.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        resolve_resume(str(run_dir), run_dir)
    (run_dir / "checkpoints").mkdir()
    last = save_atomic(minimal_state(), run_dir / "checkpoints" / "last.pt")
    assert resolve_resume("auto", run_dir) == last
    assert resolve_resume(str(run_dir), tmp_path) == last
    assert resolve_resume(str(last), tmp_path) == last


def test_best_follows_the_monitored_direction():
    state = TrainState()
    assert state.improves(0.9, "min")
    state.best = 0.5
    assert state.improves(0.4, "min") and not state.improves(0.6, "min")
    assert state.improves(0.6, "max") and not state.improves(0.5, "max")


def test_first_signal_asks_to_stop_second_stops_at_once():
    with StopOnSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM"
        with pytest.raises(Stopped) as info:
            os.kill(os.getpid(), signal.SIGINT)
        assert info.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers put back


def test_sighup_stops_like_sigterm():
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop.requested and stop.name == "SIGHUP"
