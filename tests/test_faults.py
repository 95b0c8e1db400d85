"""The fault suite: bad input, damaged files and a hostile environment, one row per case.

Every row asserts the exit code ``train.py`` gives, its one line on stderr (no traceback), and that every file
that existed before is still there, unchanged, and every checkpoint among them still loads. Rows that need a
process of their own (the environment, closed streams, a signal during start-up) run ``train.py`` as a user
would, all at once; the others go through ``harness.run`` and the entry layer's error report in this process.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

import harness
from harness.checkpoint import load_checkpoint
from harness.cli import report_and_exit
from harness.errors import HarnessError, Stopped
from tests.conftest import FAST, ROOT, compose_config, train_command

QUICK = [*FAST, "trainer.max_epochs=2"]


def snapshot(folder: Path) -> dict[Path, str]:
    """Every file under ``folder`` with a digest of its bytes."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_nothing_lost(before: dict[Path, str]) -> None:
    for path, digest in before.items():
        assert path.is_file(), f"{path} was removed"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} was changed"
        if path.suffix == ".pt":
            load_checkpoint(path)


def exit_of(capsys, call) -> tuple[int, str]:
    """What ``train.py`` makes of ``call()``: its exit code and its stderr, through the entry layer's report."""
    try:
        call()
    except (HarnessError, Stopped) as error:
        with pytest.raises(SystemExit) as exited:
            report_and_exit(error)
        return exited.value.code, capsys.readouterr().err
    return 0, capsys.readouterr().err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 2-epoch run with last.pt and best.pt, copied by the cases that damage or resume it."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    harness.run(compose_config(QUICK), run_dir)
    return run_dir


# --- checkpoints that load but hold the wrong things -----------------------------------------------------

def _edit(checkpoint: dict, path: str, value) -> dict:
    *parents, leaf = path.split(".")
    node = checkpoint
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return checkpoint


DELETE = object()
DAMAGED_CHECKPOINTS = [  # (what is changed, the value, what the one line says)
    ("model", [1, 2, 3], "model is a list, not a state dict"),
    ("model", {"w": "weights"}, "model['w'] is a str, not a tensor"),
    ("optimizer", {"state": {}}, "optimizer is not an optimizer state dict"),
    ("scheduler", None, "scheduler is a NoneType, not a state dict"),
    ("rng", DELETE, "it has no rng"),
    ("train_state", DELETE, "it has no train_state"),
    ("train_state.step", -5, "train_state.step=-5 must be an integer >= 0"),
    ("train_state.epoch", 1.5, "train_state.epoch=1.5 must be an integer >= 0"),
    ("train_state.batch", 10_000, "train_state.batch=10000 is beyond the epoch's 17 batches"),
    ("train_state.best_epoch", 99, "train_state.best_epoch=99 is after its epoch=2"),
    ("train_state.metrics", {"val/acc": "high"}, "train_state.metrics={'val/acc': 'high'} must be a dict"),
    ("rng.torch", torch.zeros(7, dtype=torch.uint8), "rng.torch is not a torch CPU generator state"),
    ("rng.python.state", torch.arange(5), "rng.python.state is not a generator state"),
    ("rng.numpy.bit_generator", "PCG64", "rng.numpy is not a NumPy MT19937 generator state"),
    ("steps_per_epoch", 0, "steps_per_epoch=0 must be an integer >= 1"),
    ("train_state.top_k", [[0.5]], "train_state.top_k=[[0.5]] must be a list of [value, epoch] pairs"),
    ("train_state.early_stop", {"stale": -1}, "train_state.early_stop={'stale': -1} must be a dict with best"),
    ("ema", {"module.w": "weights"}, "ema['module.w'] is a str, not a tensor"),
    ("loggers", {"mlflow": 7}, "loggers is not a dict of logger names to run ids"),
]


@pytest.mark.parametrize("key, value, message", DAMAGED_CHECKPOINTS, ids=[c[0] for c in DAMAGED_CHECKPOINTS])
def test_a_checkpoint_holding_the_wrong_things_is_refused(tmp_path, capsys, finished_run, key, value, message):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    checkpoint = _edit(torch.load(last, weights_only=True), key, value)
    torch.save(checkpoint, last)
    before = snapshot(run_dir)
    code, err = exit_of(capsys, lambda: harness.run(compose_config([*QUICK, "trainer.max_epochs=3", "resume=auto"]),
                                                     run_dir))
    assert code == 1
    assert err.count("\n") == 1 and err.startswith(f"error: resume={last} is not a harness checkpoint")
    assert message in err
    assert snapshot(run_dir) == before, "nothing written, nothing changed"


@pytest.mark.parametrize("content", [b"", b"not a zip at all", None], ids=["empty", "garbage", "truncated"])
def test_a_damaged_checkpoint_file_is_refused(tmp_path, capsys, finished_run, content):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(content if content is not None else last.read_bytes()[:1000])
    before = snapshot(run_dir / "checkpoints")
    del before[last]  # the damaged file itself need not load
    code, err = exit_of(capsys, lambda: harness.run(compose_config([*QUICK, "resume=auto"]), run_dir))
    assert code == 1 and err.count("\n") == 1
    assert "is not a readable checkpoint (truncated or corrupt" in err and "best.pt" in err
    assert_nothing_lost(before)


def test_a_foreign_file_outside_a_run_names_no_checkpoint_that_does_not_exist(tmp_path, capsys):
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not a checkpoint\n")
    code, err = exit_of(capsys, lambda: harness.run(compose_config([*QUICK, f"resume={foreign}"]), tmp_path / "run"))
    assert code == 1 and err.count("\n") == 1 and "is not a readable checkpoint" in err
    assert "best.pt" not in err and "use another checkpoint, or start fresh" in err
    assert foreign.read_text() == "not a checkpoint\n" and not (tmp_path / "run").exists()


def test_a_resume_with_another_scheduler_is_refused(tmp_path, capsys, finished_run):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = snapshot(run_dir)
    overrides = [*QUICK, "trainer.max_epochs=3", "scheduler=step", "resume=auto"]
    code, err = exit_of(capsys, lambda: harness.run(compose_config(overrides), run_dir))
    assert code == 1 and err.count("\n") == 1
    assert "cannot resume: the scheduler differs from the checkpoint's" in err
    assert_nothing_lost(before)


# --- data must never be lost ------------------------------------------------------------------------------

def test_resuming_an_older_checkpoint_continues_elsewhere_and_keeps_the_newer_one(tmp_path, finished_run, caplog):
    from harness.experiment import resume_run_dir

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    best, last = run_dir / "checkpoints" / "best.pt", run_dir / "checkpoints" / "last.pt"
    torch.save(_edit(torch.load(best, weights_only=True), "train_state.epoch", 1), best)  # best is older
    torch.save(_edit(torch.load(best, weights_only=True), "train_state.best_epoch", 1), best)
    before = snapshot(run_dir)
    os.environ.pop("HARNESS_CLAIMED_DIRS", None)
    new_dir = Path(resume_run_dir(str(best), str(tmp_path / "new")))
    assert new_dir == tmp_path / "new"
    metrics = harness.run(compose_config([*QUICK, "trainer.max_epochs=3", f"resume={best}"]), new_dir)
    assert metrics["epoch"] == 3
    assert f"resuming from {best} in a new run directory, {new_dir}; {last}, which is newer, stays" in caplog.text
    assert_nothing_lost(before)
    assert load_checkpoint(new_dir / "checkpoints" / "last.pt")["train_state"]["epoch"] == 3


def test_resuming_an_older_checkpoint_in_place_is_refused(tmp_path, capsys, finished_run):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    best = run_dir / "checkpoints" / "best.pt"
    before = snapshot(run_dir)
    overrides = [*QUICK, "trainer.max_epochs=3", f"resume={best}"]
    code, err = exit_of(capsys, lambda: harness.run(compose_config(overrides), run_dir))
    assert code == 1 and err.count("\n") == 1 and "would overwrite its newer" in err
    assert_nothing_lost(before)


def test_a_full_disk_at_a_save_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    from harness import checkpoint

    run_dir = tmp_path / "run"
    harness.run(compose_config([*QUICK, "trainer.max_epochs=1"]), run_dir)
    before = snapshot(run_dir / "checkpoints")
    real = checkpoint.write_atomic

    def full(path, data):
        if Path(path).suffix == ".pt":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(checkpoint, "write_atomic", full)
    code, err = exit_of(capsys, lambda: harness.run(compose_config([*QUICK, "resume=auto"]), run_dir))
    assert code == 1 and err.count("\n") == 1
    assert f"could not write {run_dir / 'checkpoints' / 'last.pt'} (No space left on device); the previous last.pt " \
           "is intact" in err
    assert_nothing_lost(before)


def test_a_run_directory_in_use_is_refused_naming_the_process(tmp_path, capsys, finished_run):
    from harness.rundir import RunLock

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = snapshot(run_dir)
    holder = RunLock(run_dir)  # a live run: flock conflicts between open files, even in one process
    try:
        for resume in ("resume=auto", "resume=null"):
            code, err = exit_of(capsys, lambda: harness.run(compose_config([*QUICK, "trainer.max_epochs=3", resume]),
                                                             run_dir))
            assert code == 1 and err.count("\n") == 1
            assert f"{run_dir} is in use by pid {os.getpid()} on " in err
    finally:
        holder.release()
    assert_nothing_lost({p: d for p, d in before.items() if p.name != ".lock"})


# --- every knob with its real bounds ----------------------------------------------------------------------

KNOBS = [
    (["trainer.num_threads=100000"], "trainer.num_threads=100000 must be at most"),
    (["scheduler=multistep", "scheduler.milestones=5"], "scheduler.milestones=5 must be a list of integers >= 1"),
    (["scheduler=multistep", "scheduler.milestones=[a,b]"], "scheduler.milestones=['a', 'b'] must be a list"),
    (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0 must be an integer >= 1"),
    (["scheduler=step", "scheduler.gamma=0"], "scheduler.gamma=0 must be a number > 0"),
    (["+trainer.max_epoch=2"], "trainer.max_epoch is not a trainer setting; did you mean trainer.max_epochs?"),
]


@pytest.mark.parametrize("overrides, message", KNOBS, ids=[" ".join(k[0]) for k in KNOBS])
def test_a_knob_out_of_bounds_fails_in_one_line_before_anything_is_written(tmp_path, capsys, overrides, message):
    code, err = exit_of(capsys, lambda: harness.run(compose_config([*QUICK, *overrides]), tmp_path / "run"))
    assert code == 1 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "run").exists()


TOOL_KNOBS = [
    ("lr_find.smoothing", 1.0, "lr_find.smoothing=1.0 must be in [0, 1)"),
    ("lr_find.num_steps", 10**9, "lr_find.num_steps=1000000000 must be an integer from 3 to 100000"),
    ("lr_find.diverge_factor", 0.5, "lr_find.diverge_factor=0.5 must be > 1"),
    ("lr_find.min_lr", 0.0, "lr_find.min_lr=0.0 must be > 0"),
]


@pytest.mark.parametrize("key, value, message", TOOL_KNOBS, ids=[k[0] for k in TOOL_KNOBS])
def test_lr_find_settings_are_checked_before_building(tmp_path, capsys, key, value, message):
    from harness.lr_find import run_lr_find

    cfg = compose_config([*FAST, f"{key}={value}"], name="lr_find")
    code, err = exit_of(capsys, lambda: run_lr_find(cfg, tmp_path / "run"))
    assert code == 1 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "run").exists()


def test_the_preview_refuses_a_simulation_of_minutes(tmp_path, capsys):
    from harness.schedule import _preview

    cfg = compose_config(["trainer.max_epochs=100000", "steps_per_epoch=1000", "scheduler.interval=step"],
                         name="preview")
    code, err = exit_of(capsys, lambda: _preview(cfg, tmp_path))
    assert code == 1 and "the preview would simulate 100000000 scheduler steps" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("run_dir", ["outputs/2026-12-03/13-21-22", "/tmp/my runs/exp 1", "runs/a,b=c'd"])
def test_the_resume_hint_pastes_back_as_it_is(run_dir):
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from harness.cli import resume_command

    command = resume_command(["model=cnn", "data.root='my data'", "resume=old"], run_dir)
    words = shlex.split(command)  # what the shell hands train.py
    assert words[:2] == ["python", "train.py"]
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(words[2:])}
    assert parsed == {"model": "cnn", "data.root": "my data", "resume": run_dir}
    assert resume_command([], run_dir, world_size=4).startswith("torchrun --nproc_per_node=4 train.py ")


def test_a_typo_added_with_plus_is_named(caplog):
    from harness.cli import warn_about_added_keys

    warn_about_added_keys(compose_config(["+optimizer.weight_decy=0.1"]), ["+optimizer.weight_decy=0.1"])
    assert "did you mean optimizer.weight_decay?" in caplog.text
    caplog.clear()
    warn_about_added_keys(compose_config(["+model.extra_layers=2"]), ["+model.extra_layers=2"])
    assert caplog.text == "", "a new key that resembles nothing is the user's business"


# --- the process: its environment, its streams, its signals -----------------------------------------------

def _launch(cwd: Path, args: list[str], env: dict, close_std: bool = False) -> subprocess.Popen:
    """``train.py <args>`` in ``cwd`` with ``env`` on top of a clean environment; optionally with stdin and
    stdout closed, as some daemons start processes."""
    inherited = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "HARNESS_CLAIMED_DIRS",
                 "HARNESS_RUN_STAMP")
    env = {**{k: v for k, v in os.environ.items() if k not in inherited}, "PYTHONPATH": str(ROOT), **env}

    def close_streams() -> None:
        os.close(0)
        os.close(1)

    return subprocess.Popen(train_command(args, cwd), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=close_streams if close_std else None)


PROCESS_CASES = {  # name: (args, environment, exit code, the stderr line (or "" for none), files to find)
    "empty run dir": (["hydra.run.dir="], {}, 1, "error: hydra.run.dir='' is empty", []),
    "run dir is a file": (["hydra.run.dir=taken"], {}, 1, "error: hydra.run.dir=taken is a file, not a directory", []),
    "RANK not a number": ([], {"RANK": "abc", "WORLD_SIZE": "2"}, 1,
                          "error: environment variable RANK='abc' must be an integer >= 0", []),
    "RANK beyond WORLD_SIZE": ([], {"RANK": "3", "WORLD_SIZE": "2"}, 1, "must be < WORLD_SIZE=2", []),
    "WORLD_SIZE without torchrun": ([], {"WORLD_SIZE": "2"}, 1,
                                    "error: environment: WORLD_SIZE=2 but MASTER_ADDR and MASTER_PORT not set", []),
    "HARNESS_RUN_STAMP garbage": ([], {"HARNESS_RUN_STAMP": "yesterday"}, 1,
                                  "error: environment variable HARNESS_RUN_STAMP='yesterday' is not an ISO date", []),
    "a resume of nothing": (["resume=runs/nope"], {}, 1,
                            "error: resume=runs/nope: no such run directory or checkpoint file", []),
    "a wrong value": (["optimizer.lr=-1"], {}, 1, "error: optimizer.lr=-1 must be a number > 0", []),
    "a missing data set": (["data=mnist", "data.root=nowhere", "data.download=false"], {}, 1, "MNIST not found", []),
    "closed stdin and stdout": ([*FAST, "trainer.max_epochs=1", "hydra.run.dir=r"], {}, 0, "",
                                ["r/checkpoints/last.pt"]),
    "SIGTERM during start-up": ([*FAST, "hydra.run.dir=r"], {}, 128 + signal.SIGTERM,
                                "stopped by SIGTERM before training started; nothing to resume", []),
}


@pytest.fixture(scope="module")
def process_outcomes(tmp_path_factory) -> dict[str, tuple[int, str, Path]]:
    """Runs every process case at once (each is mostly Python start-up) and collects how it ended."""
    root = tmp_path_factory.mktemp("processes")
    running = {}
    for i, (name, (args, env, *_)) in enumerate(PROCESS_CASES.items()):
        cwd = root / str(i)
        cwd.mkdir()
        (cwd / "taken").write_text("a file that is not a run directory\n")
        running[name] = (_launch(cwd, args, env, close_std=name.startswith("closed")), cwd)
    time.sleep(1.5)  # train.py's first line has run: start-up (imports, composition, data) takes seconds more
    running["SIGTERM during start-up"][0].send_signal(signal.SIGTERM)
    outcomes = {}
    for name, (process, cwd) in running.items():
        _, err = process.communicate(timeout=240)
        outcomes[name] = (process.returncode, err, cwd)
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize("name", PROCESS_CASES)
def test_the_process_ends_as_expected(process_outcomes, name):
    _, _, code, line, files = PROCESS_CASES[name]
    returncode, err, cwd = process_outcomes[name]
    assert returncode == code, err[-2000:]
    assert "Traceback" not in err
    if line:
        assert err.strip().count("\n") == 0 and line in err, err
    assert (cwd / "taken").read_text() == "a file that is not a run directory\n"
    for file in files:
        load_checkpoint(cwd / file)
    if code != 0:
        leftovers = [p for p in cwd.rglob("*") if p.name != "taken"]
        assert leftovers == [], "a failed start leaves nothing behind, not even an empty outputs/<date>/"
