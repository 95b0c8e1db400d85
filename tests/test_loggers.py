"""The loggers: another program (TensorBoard, the csv module, an MLflow client, W&B's record format) reads back
what was logged; a resumed run's points go on from its checkpoint."""

import csv
import errno
import json
import os
from pathlib import Path

import pytest

from harness.errors import ConfigError, Interrupted, RunDirError, TrainingError
from harness.loggers import CSVLogger, LoggerGroup, MemoryLogger, MLflowLogger, TensorBoardLogger, WandbLogger
from tests.conftest import event_files, read_scalars


def test_logged_scalars_read_back_in_order(tmp_path):
    with TensorBoardLogger(tmp_path) as logger:
        for step in range(1, 4):
            logger.log({"train/loss": 1.0 / step, "lr/group0": 0.1 * step}, step)
    read = read_scalars(tmp_path)
    assert read["train/loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert [step for step, _ in read["lr/group0"]] == [1, 2, 3]


def test_a_resumed_logger_hides_the_points_after_its_purge_step(tmp_path):
    with TensorBoardLogger(tmp_path) as first:  # an interrupted run logged steps 1-5, its checkpoint is at 3
        for step in range(1, 6):
            first.log({"train/loss": float(step)}, step)
    with TensorBoardLogger(tmp_path, purge_step=4) as resumed:
        for step in range(4, 7):
            resumed.log({"train/loss": 10.0 * step}, step)
    assert len(event_files(tmp_path)) == 2
    assert read_scalars(tmp_path)["train/loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]


def test_memory_logger_has_the_same_shape():
    logger = MemoryLogger()
    logger.log({"a": 1.0, "b": 2.0}, 3)
    logger.log({"a": 0.5}, 4)
    logger.log_hparams({"optimizer.lr": 0.1}, ["a"])
    assert logger.status is None and logger.run_id is None
    logger.close("failed")
    assert logger.series("a") == [(3, 1.0), (4, 0.5)]
    assert logger.rows == [(3, {"a": 1.0, "b": 2.0}), (4, {"a": 0.5})]
    assert logger.hparams == {"optimizer.lr": 0.1} and logger.metric_tags == ["a"] and logger.status == "failed"
    with pytest.raises(KeyboardInterrupt), MemoryLogger() as interrupted:  # ``with`` closes with how it ended
        raise KeyboardInterrupt
    assert interrupted.status == "interrupted"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_csv_rows_read_back_exactly_and_a_new_tag_widens_the_header(tmp_path):
    with CSVLogger(tmp_path) as logger:
        logger.log_hparams({"optimizer.lr": 0.1}, ["val/acc"])  # the run directory holds the config already
        logger.log({"train/loss": 1 / 3, "lr/group0": 0.1}, 1)
        logger.log({"train/loss": 0.25, "lr/group0": 0.2}, 2)
        assert [row["step"] for row in read_csv(tmp_path / "metrics.csv")] == ["1", "2"]  # while the run goes on
        logger.log({"train/epoch_loss": 0.3, "val/acc": 0.9, "epoch": 1}, 2)
    rows = read_csv(tmp_path / "metrics.csv")
    assert list(rows[0]) == ["step", "epoch", "train/loss", "lr/group0", "train/epoch_loss", "val/acc"]
    assert [list(row.values()) for row in rows] == [["1", "", repr(1 / 3), "0.1", "", ""],
                                                    ["2", "", "0.25", "0.2", "", ""],
                                                    ["2", "1", "", "", "0.3", "0.9"]]
    assert float(rows[0]["train/loss"]) == 1 / 3


def test_a_resumed_csv_logger_drops_the_rows_after_its_purge_step(tmp_path):
    with CSVLogger(tmp_path) as first:  # an interrupted run logged steps 1-5, its checkpoint is at 3
        for step in range(1, 6):
            first.log({"train/loss": float(step)}, step)
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("6,,6.")  # a row the crash cut short
    with CSVLogger(tmp_path, purge_step=4) as resumed:
        for step in range(4, 7):
            resumed.log({"train/loss": 10.0 * step, "val/acc": 0.5}, step)
    rows = [(row["step"], row["train/loss"], row["val/acc"]) for row in read_csv(tmp_path / "metrics.csv")]
    assert rows == [("1", "1.0", ""), ("2", "2.0", ""), ("3", "3.0", ""),
                    ("4", "40.0", "0.5"), ("5", "50.0", "0.5"), ("6", "60.0", "0.5")]


def test_a_full_disk_under_the_csv_logger_is_one_line(tmp_path, monkeypatch):
    def full_disk(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    logger = CSVLogger(tmp_path)
    logger.log({"train/loss": 1.0}, 1)
    monkeypatch.setattr("harness.checkpoint.write_atomic", full_disk)
    with pytest.raises(RunDirError, match="free some space, then resume the run") as e:
        logger.log({"val/acc": 0.5}, 1)  # a new tag: the file is rewritten with the wider header
    assert str(tmp_path / "metrics.csv") in str(e.value) and "\n" not in str(e.value)
    assert read_csv(tmp_path / "metrics.csv") == [{"step": "1", "epoch": "", "train/loss": "1.0"}]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One SQLite store for the module's tests: making its tables takes seconds."""
    pytest.importorskip("mlflow")
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def test_mlflow_run_reads_back_and_a_resume_continues_it(tmp_path, mlflow_uri, caplog):
    from mlflow.tracking import MlflowClient

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.pt").write_bytes(b"")
    first = MLflowLogger(tmp_path, tracking_uri=mlflow_uri, experiment="tests")
    first.log_hparams({"optimizer.lr": 0.1, "model._target_": "harness.models.CNN", "data.mean": [0.5]}, ["val/acc"])
    for step in range(1, 4):
        first.log({"train/loss": 1.0 / step}, step)
    first.close("interrupted")

    client = MlflowClient(tracking_uri=mlflow_uri)  # another program reads the store
    run = client.get_run(first.run_id)
    assert run.info.status == "KILLED" and run.info.run_name == tmp_path.name
    assert run.data.params == {"optimizer.lr": "0.1", "model._target_": "harness.models.CNN", "data.mean": "[0.5]"}
    assert run.data.tags["harness.run_dir"] == str(tmp_path.resolve())
    assert run.data.tags["harness.best_checkpoint"] == str((tmp_path / "checkpoints" / "best.pt").resolve())
    assert "harness.last_checkpoint" not in run.data.tags

    with MLflowLogger(tmp_path, purge_step=4, run_id=first.run_id, tracking_uri=mlflow_uri,
                      experiment="tests") as resumed:
        assert client.get_run(first.run_id).info.status == "RUNNING"
        resumed.log_hparams({"optimizer.lr": 0.2, "model._target_": "harness.models.CNN", "trainer.epochs": 5}, [])
        resumed.log({"train/loss": 0.2}, 4)
    assert resumed.run_id == first.run_id
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.lr"] == "0.1" and run.data.params["trainer.epochs"] == "5"
    assert "optimizer.lr" in caplog.text
    history = sorted((m.step, m.value) for m in client.get_metric_history(first.run_id, "train/loss"))
    assert history == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.2)]


def test_mlflow_starts_a_new_run_when_the_store_lacks_the_saved_one(tmp_path, mlflow_uri, caplog):
    missing = "0" * 32
    with MLflowLogger(tmp_path, run_id=missing, tracking_uri=mlflow_uri, experiment="tests") as logger:
        assert logger.run_id != missing
    assert f"MLflow run {missing} is not in" in caplog.text


def test_a_bad_mlflow_tracking_uri_is_one_line_naming_the_key(tmp_path):
    pytest.importorskip("mlflow")
    with pytest.raises(ConfigError, match="logger.mlflow.tracking_uri='bogus://x'") as e:
        MLflowLogger(tmp_path, tracking_uri="bogus://x")
    assert "\n" not in str(e.value)


def read_wandb(path: Path) -> list:
    """The records of a ``.wandb`` file, each a ``wandb_internal_pb2.Record``. wandb 0.31 reads these files in
    its Go core only; the format is LevelDB's log: a 7-byte file header, then in 32 KiB blocks, records behind a
    7-byte header (CRC, little-endian length, type), a record cut across blocks as FIRST, MIDDLE..., LAST."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, chunk, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST: the record is whole
            records.append(Record.FromString(chunk))
            chunk = b""
    return records


def test_wandb_offline_run_holds_the_logged_metrics_and_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with WandbLogger(tmp_path, project="tests") as logger:
        logger.log_hparams({"optimizer.lr": 0.1, "data.mean": [0.5]}, ["val/acc"])
        for step in range(1, 4):
            logger.log({"train/loss": 1.0 / step}, step)
    [wandb_file] = tmp_path.glob(f"wandb/offline-run-*/run-{logger.run_id}.wandb")
    records = read_wandb(wandb_file)
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.HasField("history")]
    assert [(row["_step"], row["train/loss"]) for row in history] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    config = {item.key: json.loads(item.value_json)
              for r in records if r.HasField("config") for item in r.config.update}
    assert config["optimizer.lr"] == 0.1 and config["data.mean"] == [0.5]
    assert [r.exit.exit_code for r in records if r.HasField("exit")] == [0]

    resumed = WandbLogger(tmp_path, run_id=logger.run_id, project="tests")
    resumed.close("failed")
    assert resumed.run_id == logger.run_id


def test_logger_group_fans_out_and_closes_every_logger():
    class FailsToClose(MemoryLogger):
        run_id = "abc"

        def close(self, status="finished"):
            super().close(status)
            raise RunDirError("disk full")

    first, second = FailsToClose(), MemoryLogger()
    group = LoggerGroup({"first": first, "second": second})
    group.log_hparams({"optimizer.lr": 0.1}, ["val/acc"])
    group.log({"a": 1.0}, 3)
    with pytest.raises(RunDirError, match="disk full"):
        group.close("interrupted")
    assert first.rows == second.rows == [(3, {"a": 1.0})]
    assert second.hparams == {"optimizer.lr": 0.1} and second.metric_tags == ["val/acc"]
    assert first.status == second.status == "interrupted"
    assert group.run_ids == {"first": "abc"} and len(group) == 2


def test_with_a_logger_the_block_s_own_error_wins_over_a_failing_close(caplog):
    class FailsToClose(MemoryLogger):
        def close(self, status="finished"):
            super().close(status)
            raise RunDirError("disk full")

    group = LoggerGroup({"mlflow": FailsToClose(), "csv": MemoryLogger()})
    with pytest.raises(TrainingError, match="loss is nan"), group:
        raise TrainingError("loss is nan")
    assert [logger.status for logger in group.loggers.values()] == ["failed", "failed"]
    assert "could not close LoggerGroup: disk full" in caplog.text
    stopped = FailsToClose()
    with pytest.raises(Interrupted), stopped:
        raise Interrupted("stopped by SIGTERM", 15)
    assert stopped.status == "interrupted"
    with pytest.raises(RunDirError, match="disk full"), FailsToClose():  # a run that ended well: the close fails it
        pass


def test_an_empty_logger_group_logs_nothing():
    with LoggerGroup({}) as group:
        group.log_hparams({"optimizer.lr": 0.1}, [])
        group.log({"a": 1.0}, 1)
    assert not group and group.run_ids == {}
