"""`python train.py` as a user runs it: a subprocess, Hydra's run dirs, exit codes, messages."""

import pytest

import harness
from tests.conftest import ROOT, compose_config, event_files, train

README = (ROOT / "README.md").read_text()


# Commands the README shows; each must appear there verbatim. The first two run as a user runs them (a
# process of their own); the others, whose only news is their overrides, train in this process.
README_COMMANDS = [
    "python train.py",
    "python train.py -m scheduler.warmup_epochs=0,2,5",
]
README_OVERRIDES = [
    "python train.py scheduler.warmup_epochs=5 optimizer.lr=0.05 trainer.max_epochs=30",
    "python train.py model=cnn optimizer=adamw scheduler.interval=step",
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
        assert sorted(p.parent.name for p in runs) == [f"{n}_scheduler.warmup_epochs={w}" for n, w in
                                                       enumerate((0, 2, 5))], "jobs told apart in TensorBoard"
        assert all(p.parent.parent.parent.parent.name == "multirun" for p in runs)
        overrides = [(p.parent / ".hydra" / "overrides.yaml").read_text() for p in runs]
        assert [f"scheduler.warmup_epochs={w}" in o for w, o in zip((0, 2, 5), overrides)] == [True] * 3
        assert (runs[0].parent.parent / "summary.md").exists()
    else:
        assert len(runs) == 1
        run_dir = runs[0].parent
        assert run_dir.parent.parent == tmp_path / "outputs"  # outputs/<date>/<time>/
        assert (run_dir / ".hydra" / "config.yaml").exists()
        assert f"run directory: {run_dir}" in result.stdout
        assert "epoch 30/30" in result.stdout
        test_acc = float(result.stdout.split("test/acc ")[-1].split()[0])
        assert test_acc >= 0.97, "the README's promise"
        assert "test (best.pt, epoch" in result.stdout


@pytest.mark.parametrize("command", README_OVERRIDES)
def test_readme_overrides_train(command, tmp_path):
    assert command in README, "the README no longer shows this command"
    metrics = harness.run(compose_config(command.split()[2:]), tmp_path)
    assert metrics["epoch"] == 30 and metrics["val/acc"] >= 0.95


def test_unknown_key_and_option_are_refused_when_the_config_is_composed():
    from hydra.errors import ConfigCompositionException, MissingConfigException

    with pytest.raises(ConfigCompositionException, match="Could not override 'optimizer.lrr'"):
        compose_config(["optimizer.lrr=0.1"])
    with pytest.raises(MissingConfigException, match="Could not find 'model/transformer'") as info:
        compose_config(["model=transformer"])
    assert "mlp" in str(info.value)  # Hydra lists the options there are
