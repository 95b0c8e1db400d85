"""The logger group through whole runs: several loggers see the same numbers; a resume continues the MLflow run."""

import csv
import re

import pytest

import harness
from harness.checkpoint import load_checkpoint
from tests.conftest import STEPS_PER_EPOCH, compose_config, read_scalars

BASE = ["trainer.device=cpu", "trainer.progress_bar=false", "trainer.log_every_n_steps=5"]


def run(run_dir, *overrides):
    return harness.run(compose_config([*BASE, *overrides]), run_dir)


def test_tensorboard_and_csv_at_once_hold_the_same_numbers(tmp_path):
    metrics = run(tmp_path / "run", "logger=[tensorboard,csv]", "trainer.max_epochs=2")
    scalars = read_scalars(tmp_path / "run")
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for tag in ("train/loss", "val/loss", "val/acc", "lr/group0", "test/acc"):
        from_csv = [(int(row["step"]), float(row[tag])) for row in rows if row[tag]]
        assert from_csv == [(step, pytest.approx(value, rel=1e-6)) for step, value in scalars[tag]], tag
    epoch_rows = [row for row in rows if row["val/loss"]]
    assert [(int(r["step"]), int(r["epoch"])) for r in epoch_rows] == [(STEPS_PER_EPOCH, 1), (2 * STEPS_PER_EPOCH, 2)]
    assert float(epoch_rows[-1]["val/acc"]) == metrics["val/acc"]  # exact: written as repr(float)


def test_no_logger_at_all_still_trains_and_checkpoints(tmp_path):
    metrics = run(tmp_path / "run", "logger=[]", "trainer.max_epochs=1")
    assert metrics["epoch"] == 1 and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_a_resumed_run_continues_its_mlflow_run(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["logger=[mlflow]", f"logger.mlflow.tracking_uri={uri}", "scheduler.total_epochs=3",
            "scheduler.warmup_epochs=1"]
    run(tmp_path / "run", *args, "trainer.max_epochs=2")
    run_id = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["loggers"]["mlflow"]
    metrics = run(tmp_path / "run", *args, "trainer.max_epochs=3", "resume=auto")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["loggers"]["mlflow"] == run_id

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    stored = client.get_run(run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.params["trainer.max_epochs"] == "2"  # MLflow keeps a param's first value
    assert stored.data.params["optimizer._target_"] == "torch.optim.SGD"
    assert stored.data.tags["harness.best_checkpoint"] == str((tmp_path / "run" / "checkpoints" / "best.pt").resolve())
    epochs = client.get_metric_history(run_id, "epoch")
    assert sorted((m.step, m.value) for m in epochs) == [(STEPS_PER_EPOCH * e, e) for e in (1, 2, 3)]
    assert client.get_metric_history(run_id, "val/acc")[-1].value == pytest.approx(metrics["val/acc"])
    experiment = client.get_experiment_by_name("harness")
    assert len(client.search_runs([experiment.experiment_id])) == 1  # one run, continued

    run(tmp_path / "fork", *args, "trainer.max_epochs=4", f"resume={tmp_path / 'run' / 'checkpoints' / 'best.pt'}")
    assert load_checkpoint(tmp_path / "fork" / "checkpoints" / "last.pt")["loggers"]["mlflow"] != run_id


@pytest.mark.parametrize("arg, hint", [("logger=null", "logger=[] logs nothing"), ("model=null", "cnn, mlp")])
def test_a_group_set_to_null_is_one_line_naming_its_options(arg, hint):
    from harness.cli import check_command_line
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match=rf"{arg}: a config group takes one of its options .*{re.escape(hint)}"):
        check_command_line(["trainer.max_epochs=3", arg])
    check_command_line(["optimizer.weight_decay=null"])  # a null value for a key is fine
