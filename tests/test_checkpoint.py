"""Checkpoint files: atomic writes, safe loads, RNG round trips, resume lookup, graceful signals."""

import os
import random
import signal
import threading

import numpy as np
import pytest
import torch

from harness.checkpoint import (
    Checkpointer,
    capture_rng,
    load_checkpoint,
    resolve_resume,
    restore_rng,
    save_atomic,
    write_atomic,
)
from harness.errors import CheckpointError
from harness.signals import StopOnSignal


def minimal_state(value: float = 1.0) -> dict:
    return {
        "model": {"w": torch.full((3,), value)},
        "optimizer": {},
        "scheduler": {},
        "progress": {"epoch": 1},
        "rng": capture_rng(torch.Generator().manual_seed(0).get_state()),
    }


def test_checkpoint_is_plain_data_that_loads_with_weights_only(tmp_path):
    path = save_atomic(minimal_state(), tmp_path / "last.pt")
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["model"]["w"], torch.ones(3))
    assert load_checkpoint(path)["progress"] == {"epoch": 1}


def test_rng_round_trip_through_a_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    loader = torch.Generator().manual_seed(4)
    save_atomic({"rng": capture_rng(loader.get_state())}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2), np.random.randn())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(2), expected[2])
    assert np.random.randn() == expected[3]


@pytest.mark.parametrize("dies_in", ["write", "replace"])
def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch, dies_in):
    path = save_atomic(minimal_state(1.0), tmp_path / "last.pt")
    real_write = os.write

    def write_half_then_die(fd, data):
        real_write(fd, data[: len(data) // 2])  # a partial file on disk...
        raise KeyboardInterrupt  # ...and the process stops

    def die(*args):
        raise KeyboardInterrupt  # written and synced, stopped before the rename

    monkeypatch.setattr(os, dies_in, write_half_then_die if dies_in == "write" else die)
    with pytest.raises(KeyboardInterrupt):
        save_atomic(minimal_state(2.0), path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"], "no temporary file left behind"


def test_the_writer_thread_ends_with_close(tmp_path):
    before = {t.ident for t in threading.enumerate()}
    ckpt = Checkpointer(tmp_path)
    assert [t.name for t in threading.enumerate() if t.ident not in before] == ["checkpoint-writer"]
    ckpt.close()
    ckpt.close()
    assert {t.ident for t in threading.enumerate()} <= before


def test_temporary_files_of_a_killed_writer_are_cleared_on_resume(tmp_path):
    save_atomic(minimal_state(1.0), tmp_path / "last.pt")
    (tmp_path / ".last.pt.4242.tmp").write_bytes(b"half a checkpoint")
    Checkpointer(tmp_path).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_one_payload_under_two_names_survives_a_file_system_without_hard_links(tmp_path, monkeypatch):
    def no_links(*args):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    write_atomic(tmp_path, ["last.pt", "best.pt"], b"payload")
    assert (tmp_path / "last.pt").read_bytes() == (tmp_path / "best.pt").read_bytes() == b"payload"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_saving_never_waits_for_a_slow_disk_and_the_newest_state_wins(tmp_path, monkeypatch):
    import harness.checkpoint as checkpoint_module

    disk_busy, disk_free, writes = threading.Event(), threading.Event(), []
    real_write_atomic = checkpoint_module.write_atomic

    def slow_write_atomic(directory, names, data, **kwargs):
        disk_busy.set()
        assert disk_free.wait(10)
        writes.append(sorted(names))
        real_write_atomic(directory, names, data, **kwargs)

    directory_syncs = []
    monkeypatch.setattr(checkpoint_module, "write_atomic", slow_write_atomic)
    monkeypatch.setattr(checkpoint_module, "_fsync_dir", directory_syncs.append)
    with Checkpointer(tmp_path) as ckpt:
        for epoch, acc in enumerate([0.5, 0.7, 0.6], 1):  # epochs 1 and 2 improve, 3 does not
            ckpt.save(minimal_state(epoch), {"val/acc": acc, "epoch": epoch})  # returns at once
            assert disk_busy.wait(10)  # epoch 1 is being written from here on
        assert writes == []
        disk_free.set()
    # epoch 1 was already being written; epoch 2's last.pt was replaced by epoch 3's before it reached disk
    assert writes == [["best.pt", "last.pt"], ["last.pt"], ["best.pt"]]
    assert directory_syncs == [tmp_path], "the renames are made durable once, when the writes are waited for"
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model"]["w"], torch.full((3,), 3.0))
    assert torch.equal(load_checkpoint(tmp_path / "best.pt")["model"]["w"], torch.full((3,), 2.0))


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
    last = save_atomic(minimal_state(), run_dir / "checkpoints" / "last.pt")
    assert resolve_resume("auto", run_dir) == last
    assert resolve_resume(str(run_dir), tmp_path) == last
    assert resolve_resume(str(last), tmp_path) == last


def test_best_follows_the_monitored_metric(tmp_path):
    ckpt = Checkpointer(tmp_path, monitor="val/loss", mode="min")
    for epoch, loss in enumerate([0.9, 0.5, 0.7, 0.4], 1):
        ckpt.save(minimal_state(epoch), {"val/loss": loss, "epoch": epoch})
    ckpt.wait()  # writes happen on a background thread
    assert load_checkpoint(tmp_path / "best.pt")["best"] == {
        "monitor": "val/loss", "mode": "min", "value": 0.4, "epoch": 4
    }
    assert torch.equal(load_checkpoint(tmp_path / "best.pt")["model"]["w"], torch.full((3,), 4.0))
    ckpt.save(minimal_state(5), {"val/loss": 0.6, "epoch": 5})
    ckpt.close()
    assert torch.equal(load_checkpoint(tmp_path / "best.pt")["model"]["w"], torch.full((3,), 4.0))
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model"]["w"], torch.full((3,), 5.0))
    resumed = Checkpointer(tmp_path, monitor="val/loss", mode="min", best=load_checkpoint(tmp_path / "last.pt")["best"])
    assert not resumed.improved({"val/loss": 0.45}) and resumed.improved({"val/loss": 0.39})


def test_first_signal_asks_to_stop_second_stops_at_once():
    with StopOnSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers put back


def test_a_failed_background_write_is_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    ckpt = Checkpointer(blocker / "checkpoints")  # its parent is a file: the write must fail
    ckpt.save(minimal_state())
    with pytest.raises(OSError):
        ckpt.close()
