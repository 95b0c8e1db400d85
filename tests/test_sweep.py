"""Sweeps: parallel jobs, Optuna, the summary, HParams, failing and interrupted sweeps."""

import csv
import json
import signal
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

import harness
from harness.sweep import summarize, write_result
from tests.conftest import FAST, compose_config, train

TINY = ["trainer.max_epochs=3", "scheduler.warmup_epochs=1", "trainer.progress_bar=false", "trainer.device=cpu"]


def sweep(args, cwd, **kwargs):
    result = train(["-m", *args], cwd, **kwargs)
    return result.returncode, result.stdout, result.stderr


def read_summary(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def job(sweep_dir: Path, number: int) -> Path:
    """The folder of job ``number``: ``<number>_<what it overrides>``."""
    (folder,) = [p for p in sweep_dir.iterdir() if p.name.split("_", 1)[0] == str(number)]
    return folder


def numbers(rows: list[dict]) -> list[int]:
    return sorted(int(r["job"].split("_", 1)[0]) for r in rows)


def only_sweep_dir(cwd: Path) -> Path:
    (sweep_dir,) = (cwd / "outputs" / "multirun").glob("*/*")
    return sweep_dir


def read_hparams(run_dir: Path) -> dict:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = HParamsPluginData.FromString(content).session_start_info
    out = {}
    for key, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        out[key] = getattr(value, kind)
    return out


def test_hparams_are_readable_from_the_event_files(tmp_path):
    harness.run(compose_config([*FAST, "optimizer.lr=0.05", "model=cnn", "model.channels=[4,8]"]), tmp_path)
    hparams = read_hparams(tmp_path)
    assert hparams["optimizer.lr"] == pytest.approx(0.05)
    assert hparams["model._target_"] == "harness.models.SmallCNN"
    assert hparams["model.channels"] == "[4, 8]"
    assert hparams["scheduler.warmup_epochs"] == pytest.approx(0.4)  # by default a tenth of the 4 epochs
    assert hparams["trainer.progress_bar"] == 0  # TensorBoard's HParams hold booleans as numbers


def fake_job(sweep_dir: Path, name: str, status: str, value=None, overrides=()):
    job = sweep_dir / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if status != "incomplete":
        metrics = {"val/acc": value, "val/loss": 1 - value} if value is not None else None
        write_result(job, status, list(overrides), 1.5, metrics=metrics, error="boom" if status == "failed" else None)


def test_summary_rows_are_sorted_by_the_metric_with_failures_last(tmp_path):
    fake_job(tmp_path, "0", "finished", 0.91, ["optimizer.lr=0.1"])
    fake_job(tmp_path, "1", "failed", None, ["optimizer.lr=9"])
    fake_job(tmp_path, "2", "finished", 0.97, ["optimizer.lr=0.05"])
    fake_job(tmp_path, "10", "finished", 0.93, ["optimizer.lr=0.2"])
    fake_job(tmp_path, "3", "incomplete", None, ["optimizer.lr=0.3"])
    (tmp_path / "not_a_job").mkdir()

    rows = summarize(tmp_path, "val/acc")
    assert [r["job"] for r in rows] == ["2", "10", "0", "1", "3"]
    assert [r["status"] for r in rows] == ["finished"] * 3 + ["failed", "incomplete"]
    assert rows[0]["val/acc"] == "0.9700" and rows[0]["overrides"] == "optimizer.lr=0.05"
    assert rows[3]["error"] == "boom"
    assert read_summary(tmp_path) == rows
    markdown = (tmp_path / "summary.md").read_text().splitlines()
    assert markdown[0].startswith("| job | status | val/acc |") and len(markdown) == 2 + 5

    by_loss = summarize(tmp_path, "val/loss")
    assert [r["job"] for r in by_loss][:3] == ["2", "10", "0"]  # lower loss first


def test_a_damaged_result_does_not_stop_the_summary_and_shared_overrides_are_left_out(tmp_path):
    fake_job(tmp_path, "0", "finished", 0.91, ["trainer.max_epochs=5", "optimizer.lr=0.1"])
    fake_job(tmp_path, "1", "finished", 0.95, ["trainer.max_epochs=5", "optimizer.lr=0.2"])
    fake_job(tmp_path, "2", "finished", 0.99, ["trainer.max_epochs=5", "optimizer.lr=0.3"])
    (tmp_path / "2" / "result.json").write_text('{"status": "fini')  # a job killed mid-write by another tool
    fake_job(tmp_path, "3", "finished", 0.5, ["trainer.max_epochs=5", "optimizer.lr=0.4"])
    (tmp_path / "3" / "result.json").write_text("[1, 2]")

    rows = summarize(tmp_path, "val/acc")
    assert [(r["job"], r["status"], r["overrides"]) for r in rows] == [
        ("1", "finished", "optimizer.lr=0.2"), ("0", "finished", "optimizer.lr=0.1"),
        ("2", "incomplete", "optimizer.lr=0.3"), ("3", "incomplete", "optimizer.lr=0.4")]
    assert rows[2]["error"].startswith("result.json unreadable")
    assert rows[3]["error"] == "result.json is not a result record"


def test_result_accumulates_wall_time_across_resumes(tmp_path):
    write_result(tmp_path, "interrupted", ["a=1"], 2.0, error="stopped")
    write_result(tmp_path, "finished", ["a=1"], 3.0, metrics={"val/acc": 0.9})
    record = json.loads((tmp_path / "result.json").read_text())
    assert record == {"status": "finished", "overrides": ["a=1"], "elapsed_s": 5.0,
                      "metrics": {"val/acc": 0.9}, "error": None}


def test_threads_are_split_between_parallel_jobs(monkeypatch):
    import os

    from omegaconf import OmegaConf

    from harness.cli import threads_per_job

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert threads_per_job(OmegaConf.create({"launcher": {"n_jobs": 4}})) == 2
    assert threads_per_job(OmegaConf.create({"launcher": {"n_jobs": -1}})) == 1
    assert threads_per_job(OmegaConf.create({"launcher": {}})) == 8
    assert threads_per_job(OmegaConf.create({"launcher": {"n_jobs": 16}})) == 1


@pytest.mark.slow
def test_optuna_search_survives_impossible_trials_and_matches_the_summary(tmp_path):
    # warmup is searched over 0..5 epochs of a 3-epoch run: the trials that sample 3 or more can't run
    searched = [o for o in TINY if not o.startswith("scheduler.warmup_epochs")]  # a fixed value would win
    rc, stdout, stderr = sweep(["hparams_search=optuna", "hydra.sweeper.n_trials=3", *searched], tmp_path)
    assert "Traceback" not in stderr
    sweep_dir = only_sweep_dir(tmp_path)
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    rows = read_summary(sweep_dir)
    assert len(rows) == 3, "the search ran all its trials"
    for row in rows:  # every trial stayed inside the search space, and failed exactly when it had to
        params = dict(o.split("=", 1) for o in row["overrides"].split())
        assert 0.01 <= float(params["optimizer.lr"]) <= 0.3
        warmup = int(params["scheduler.warmup_epochs"])
        assert 0 <= warmup <= 5
        assert row["status"] == ("failed" if warmup >= 3 else "finished"), row
        if warmup >= 3:
            assert row["error"].startswith(f"scheduler.warmup_epochs={warmup} must be < scheduler.total_epochs=3")
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed and len(failed) < 3, "seed 0 samples both kinds; pick another seed if the sampler changes"
    assert rc == 1 and f"error: {len(failed)} of 3 jobs did not finish" in stderr
    assert float(rows[0]["val/acc"]) == pytest.approx(result["best_value"], abs=5e-5)
    best_overrides = rows[0]["overrides"].split()
    for key, value in result["best_params"].items():
        assert f"{key}={value}" in best_overrides


@pytest.mark.slow
def test_a_parallel_sweep_records_failing_jobs_and_goes_on(tmp_path):
    # two jobs at a time; warmup 5 >= 3 epochs fails before training, 1e12 diverges to NaN in training
    rc, stdout, stderr = sweep(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "scheduler.warmup_epochs=1,5",
                                "optimizer.lr=0.1,1.0e12", "scheduler.min_lr=0.0", *TINY[:1], *TINY[2:]], tmp_path)
    assert rc == 1
    assert "Joblib.Parallel(n_jobs=2" in stdout + stderr
    rows = read_summary(only_sweep_dir(tmp_path))
    assert numbers(rows) == [0, 1, 2, 3]
    first = next(r["job"] for r in rows if r["job"].startswith("0_"))  # named by what it overrides, cut at 100
    assert first.startswith("0_optimizer.lr=0.1,scheduler.min_lr=0.0,scheduler.warmup_epochs=1,") and len(first) == 100
    ok = rows[0]
    assert {"scheduler.warmup_epochs=1", "optimizer.lr=0.1"} <= set(ok["overrides"].split())
    assert ok["status"] == "finished" and float(ok["val/acc"]) > 0.9
    job_dir = tmp_path / ok["dir"]  # relative to where the sweep was launched
    assert len(list(job_dir.glob("events.out.tfevents.*"))) == 1
    assert json.loads((job_dir / "result.json").read_text())["status"] == "finished"
    assert f"best job: {ok['job']}" in stdout
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 3
    assert any("is nan" in r["error"] or "is inf" in r["error"] for r in failed)
    assert any("scheduler.warmup_epochs=5 must be < scheduler.total_epochs=3" in r["error"] for r in failed)
    assert "error: 3 of 4 jobs did not finish" in stderr


@pytest.mark.slow
def test_an_interrupted_sweep_is_finished_by_rerunning_the_command(tmp_path):
    args = ["scheduler.warmup_epochs=0,1,2", "trainer.max_epochs=3", "data.batch_size=16",
            "trainer.progress_bar=false", "trainer.device=cpu"]
    # 68 steps an epoch, 204 a job: step 204 + 110 is in the second epoch of the second job
    rc, _, stderr = sweep(args, tmp_path, signal_at_step=204 + 110)
    assert rc == 128 + signal.SIGTERM, stderr[-2000:]
    sweep_dir = only_sweep_dir(tmp_path)
    first_job = json.loads((job(sweep_dir, 0) / "result.json").read_text())
    assert first_job["status"] == "finished"
    assert json.loads((job(sweep_dir, 1) / "result.json").read_text())["status"] == "interrupted"
    assert not [p for p in sweep_dir.iterdir() if p.name.startswith("2_")]

    rc, stdout, stderr = sweep([*args, f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert rc == 0, stderr[-3000:]
    rows = read_summary(sweep_dir)
    assert numbers(rows) == [0, 1, 2], "the rerun found the jobs' folders by their names"
    assert all(r["status"] == "finished" and r["epochs"] == "3" for r in rows)
    assert "nothing to train" in (job(sweep_dir, 0) / "train.log").read_text()
    assert "resuming from" in (job(sweep_dir, 1) / "train.log").read_text()
    assert json.loads((job(sweep_dir, 0) / "result.json").read_text())["metrics"] == first_job["metrics"]


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    rc, stdout, stderr = sweep(["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", *TINY],
                               tmp_path)
    assert rc == 0, stderr[-3000:]
    rows = read_summary(only_sweep_dir(tmp_path))
    assert [r["status"] for r in rows] == ["finished"]


def test_a_missing_sweep_plugin_says_how_to_install_it(monkeypatch):
    import importlib.util

    from harness.cli import check_command_line
    from harness.errors import HarnessError

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(HarnessError, match="hparams_search=optuna needs a Hydra plugin that is not installed; "
                                           "install the sweep extra"):
        check_command_line(["trainer.max_epochs=3", "hparams_search=optuna"])
    check_command_line(["model=cnn"])  # nothing asked for: nothing checked


def test_hparams_put_the_keys_the_command_line_set_first(monkeypatch):
    from types import SimpleNamespace

    from harness import experiment

    overrides = ["scheduler.warmup_epochs=2", "model=cnn", "+optimizer.foo=1"]
    stub = SimpleNamespace(initialized=lambda: True,
                           get=lambda: SimpleNamespace(overrides=SimpleNamespace(task=overrides)))
    monkeypatch.setattr(experiment, "HydraConfig", stub)
    config = {"model": {"_target_": "SmallCNN", "channels": [4]}, "optimizer": {"lr": 0.1, "foo": 1},
              "scheduler": {"warmup_epochs": 2, "min_lr": 0.001}}
    flat = experiment.hparams_overridden_first(config)
    assert list(flat)[:3] == ["scheduler.warmup_epochs", "model._target_", "optimizer.foo"]
    assert set(flat) == {"model._target_", "model.channels", "optimizer.lr", "optimizer.foo",
                         "scheduler.warmup_epochs", "scheduler.min_lr"}


def test_job_folder_names_are_safe_and_short():
    from harness.experiment import job_name

    assert job_name(3, "data.root=/x/my data,optimizer.lr=0.1") == "3_data.root=_x_my_data,optimizer.lr=0.1"
    assert job_name(0, "") == "0"
    assert len(job_name(12, "k=" + "v" * 500)) == 100


def test_summary_shows_the_test_of_each_job_beside_the_optimized_metric(tmp_path):
    for name, (val, test) in {"0": (0.2, 0.3), "1": (0.1, 0.25)}.items():
        job = tmp_path / name
        (job / ".hydra").mkdir(parents=True)
        write_result(job, "finished", [f"optimizer.lr=0.{name}"], 1.0, metrics={"val/mae": val, "test/mae": test})
    rows = summarize(tmp_path, "val/mae", direction="min")
    assert [(r["job"], r["val/mae"], r["test/mae"]) for r in rows] == [("1", "0.1000", "0.2500"),
                                                                       ("0", "0.2000", "0.3000")]
    assert (tmp_path / "summary.md").read_text().startswith("| job | status | val/mae | test/mae |")
