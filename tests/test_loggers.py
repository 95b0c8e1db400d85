"""The loggers: TensorBoard's own reader sees what was logged; a resumed run's curves go on without overlap."""

import pytest

from harness.loggers import MemoryLogger, TensorBoardLogger
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
    logger.close()
    assert logger.series("a") == [(3, 1.0), (4, 0.5)]
    assert logger.rows == [(3, {"a": 1.0, "b": 2.0}), (4, {"a": 0.5})]
