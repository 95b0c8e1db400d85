"""The event-file writer: TensorBoard's own reader sees what was logged, with valid record checksums."""

import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboards_crc

from harness.tensorboard import TensorBoardLogger, masked_crc32c


@pytest.mark.parametrize("size", [0, 1, 8, 63, 1000])
def test_record_checksum_matches_tensorboards(size):
    data = os.urandom(size)
    assert masked_crc32c(data) == tensorboards_crc(data)


def scalars(log_dir) -> dict:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_logged_scalars_read_back_in_order(tmp_path):
    with TensorBoardLogger(tmp_path) as logger:
        for step in range(1, 4):
            logger.log({"train/loss": 1.0 / step, "lr/group0": 0.1 * step}, step)
    read = scalars(tmp_path)
    assert read["train/loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert [step for step, _ in read["lr/group0"]] == [1, 2, 3]


def test_values_wait_in_memory_at_most_flush_secs(tmp_path):
    buffered = TensorBoardLogger(tmp_path / "buffered", flush_secs=3600)
    prompt = TensorBoardLogger(tmp_path / "prompt", flush_secs=0)
    for logger in (buffered, prompt):
        logger.log({"train/loss": 0.5}, 1)
    assert scalars(tmp_path / "buffered") == {}  # still in memory, not lost: close() writes it
    assert scalars(tmp_path / "prompt") == {"train/loss": [(1, 0.5)]}
    buffered.close(), prompt.close()
    assert scalars(tmp_path / "buffered") == {"train/loss": [(1, 0.5)]}


def test_two_loggers_in_one_second_write_two_files(tmp_path):
    with TensorBoardLogger(tmp_path) as first, TensorBoardLogger(tmp_path) as second:
        assert first.path != second.path


def test_events_keep_the_time_they_were_logged_not_the_flush_time(tmp_path, monkeypatch):
    clock = iter([1000.0, 1000.0, 2000.0, 3000.0, 9000.0, 9000.0])  # file name, version event, 2 logs, flush
    monkeypatch.setattr("harness.tensorboard.time.time", lambda: next(clock))
    logger = TensorBoardLogger(tmp_path, flush_secs=3600)
    logger.log({"train/loss": 0.5}, 1)
    logger.log({"train/loss": 0.25}, 2)
    logger.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.wall_time) for e in events.Scalars("train/loss")] == [(1, 2000.0), (2, 3000.0)]
