"""`python train.py` as a user runs it: a subprocess, Hydra's run dirs, exit codes, messages."""

import pytest

from tests.conftest import ROOT, event_files, train

README = (ROOT / "README.md").read_text()


# Commands the README shows; each must appear there verbatim and run as written.
README_COMMANDS = [
    "python train.py",
    "python train.py scheduler.warmup_epochs=5 optimizer.lr=0.05 trainer.max_epochs=30",
    "python train.py model=cnn optimizer=adamw scheduler.interval=step",
    "python train.py -m scheduler.warmup_epochs=0,2,5",
]


@pytest.mark.slow
@pytest.mark.parametrize("command", README_COMMANDS)
def test_readme_command(command, tmp_path):
    assert command in README, "the README no longer shows this command"
    result = train(command.split()[2:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    runs = event_files(tmp_path / "outputs")
    if "-m" in command:
        assert len(runs) == 3
        assert sorted(p.parent.name for p in runs) == ["0", "1", "2"]
        assert all(p.parent.parent.parent.parent.name == "multirun" for p in runs)
    else:
        assert len(runs) == 1
        run_dir = runs[0].parent
        assert run_dir.parent.parent == tmp_path / "outputs"  # outputs/<date>/<time>/
        assert (run_dir / ".hydra" / "config.yaml").exists()
        assert f"run directory: {run_dir}" in result.stdout
        assert "epoch 30/30" in result.stdout
        val_acc = float(result.stdout.split("val/acc ")[-1].split()[0])
        assert val_acc >= 0.97


@pytest.mark.slow
def test_multirun_of_two_jobs_gets_two_run_dirs(tmp_path):
    result = train(["-m", "trainer.max_epochs=2", "scheduler.warmup_epochs=0,1", "trainer.progress_bar=false"],
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    dirs = sorted({p.parent for p in event_files(tmp_path / "outputs" / "multirun")})
    assert [d.name for d in dirs] == ["0", "1"]
    overrides = [(d / ".hydra" / "overrides.yaml").read_text() for d in dirs]
    assert "scheduler.warmup_epochs=0" in overrides[0] and "scheduler.warmup_epochs=1" in overrides[1]


@pytest.mark.slow
def test_bad_input_exits_1_with_one_line_and_writes_nothing(tmp_path):
    # tests/test_config.py checks every message; here, what the command line makes of them
    for args, message in [
        (["optimizer.lr=abc"], "error: optimizer.lr='abc' must be a number > 0"),
        (["resume=runs/nope"], "error: resume=runs/nope: no such run directory or checkpoint file"),
        (["data=mnist", "data.root=nowhere", "data.download=false"], "error: MNIST not found under"),
    ]:
        result = train(args, cwd=tmp_path)
        assert result.returncode == 1, args
        assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1, args
    assert not event_files(tmp_path), "nothing trained, nothing logged"
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_unknown_key_and_option_are_refused_by_hydra(tmp_path):
    result = train(["optimizer.lrr=0.1"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not override 'optimizer.lrr'" in result.stderr
    result = train(["model=transformer"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'model/transformer'" in result.stderr
    assert "mlp" in result.stderr  # Hydra lists the options there are
