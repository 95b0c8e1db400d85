"""The metrics writer: scalars to TensorBoard event files, keyed by the global optimizer step."""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["TensorBoardLogger", "masked_crc32c"]

_FILE_IDS = itertools.count()  # two loggers of one process in one second still get two files


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli polynomial, reflected
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C that TFRecord framing stores after a record's length and after its data.

    Ours, not tensorboard's: importing that pulls in its TensorFlow stub, a fifth of a second of start-up.
    """
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _hparams_summaries(hparams: Mapping[str, bool | int | float | str], metric_tags: list[str]) -> list:
    """The three summaries of TensorBoard's HParams plugin: the experiment (which hyper-parameters and
    metrics exist), this run's values, and its status."""
    from google.protobuf.struct_pb2 import Value
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import DataType, Experiment, HParamInfo, MetricInfo, MetricName, Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo, SessionStartInfo

    def summary(tag: str, **data) -> Summary:
        content = HParamsPluginData(version=0, **data).SerializeToString()
        metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=content))
        return Summary(value=[Summary.Value(tag=tag, metadata=metadata)])

    infos, values = [], {}
    for name, value in hparams.items():
        if isinstance(value, bool):
            infos.append(HParamInfo(name=name, type=DataType.DATA_TYPE_BOOL))
            values[name] = Value(bool_value=value)
        elif isinstance(value, (int, float)):
            infos.append(HParamInfo(name=name, type=DataType.DATA_TYPE_FLOAT64))
            values[name] = Value(number_value=value)
        else:
            infos.append(HParamInfo(name=name, type=DataType.DATA_TYPE_STRING))
            values[name] = Value(string_value=str(value))
    metrics = [MetricInfo(name=MetricName(tag=tag)) for tag in metric_tags]
    return [
        summary("_hparams_/experiment", experiment=Experiment(hparam_infos=infos, metric_infos=metrics)),
        summary("_hparams_/session_start_info", session_start_info=SessionStartInfo(hparams=values)),
        summary("_hparams_/session_end_info", session_end_info=SessionEndInfo(status=Status.STATUS_SUCCESS)),
    ]


def _wait_for_a_later_second(log_dir: Path) -> None:
    """Event files are read in name order, and names start with the creation second: a resumed run's file
    must not share the interrupted one's second, or it could be read first and the purge undone."""
    names = [p.name.split(".") for p in log_dir.glob("events.out.tfevents.*")]
    stamps = [int(parts[3]) for parts in names if parts[3].isdigit()]
    if stamps and max(stamps) >= int(time.time()):
        time.sleep(max(stamps) + 1 - time.time())


class TensorBoardLogger:
    """Writes ``{tag: value}`` scalars at a step into an event file under ``log_dir``.

    Each ``log`` call becomes one event holding all its scalars. ``log`` only notes the values and the time;
    the events are built (directly as protobufs: torch's ``add_scalar`` costs tens of microseconds per
    value), framed and written in one go at each flush, every ``flush_secs`` and at ``close``. So a logging
    point costs training a list append, with no thread to hand it to (a writer thread would take the GIL
    from training to checksum each record) and no system call; encoding a batch of events at once also
    costs less than encoding each between two training steps. Use as a context manager (or call ``close``)
    so every event reaches the disk, even when training fails.

    Args:
        log_dir: the run directory.
        purge_step: on resume, the first step the resumed run will log: TensorBoard hides points at or
            after it that an interrupted run wrote, so curves continue without overlap.
        flush_secs: the longest that a logged value waits in memory before it is written to the file.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None, flush_secs: float = 10.0) -> None:
        # imported here: only runs that log pay for importing tensorboard
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if purge_step is not None:
            _wait_for_a_later_second(self.log_dir)
        self._event, self._summary = Event, Summary
        self.flush_secs = flush_secs
        self._pending: list[tuple[float, int, list[tuple[str, float]]]] = []  # (wall time, step, values)
        # the name TensorBoard's own writers use: events.out.tfevents.<second>.<host>.<pid>.<id>
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILE_IDS)}"
        self.path = self.log_dir / name
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        self._flushed = time.monotonic()
        self._write(Event(file_version="brain.Event:2"))
        if purge_step is not None:
            self._write(Event(step=purge_step, file_version="brain.Event:2"))
            self._write(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))
        self.flush()

    def _write(self, event, wall_time: float | None = None) -> None:
        event.wall_time = time.time() if wall_time is None else wall_time
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))  # TFRecord framing: length, its CRC, data, the data's CRC
        self._file.write(b"".join((header, struct.pack("<I", masked_crc32c(header)), data,
                                   struct.pack("<I", masked_crc32c(data)))))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Records each scalar in ``metrics`` at x = ``step`` (written at the next flush)."""
        self._pending.append((time.time(), step, [(tag, float(v)) for tag, v in metrics.items()]))
        if time.monotonic() - self._flushed > self.flush_secs:
            self.flush()

    def _write_pending(self) -> None:
        value = self._summary.Value
        for wall_time, step, values in self._pending:
            summary = self._summary(value=[value(tag=tag, simple_value=v) for tag, v in values])
            self._write(self._event(step=step, summary=summary), wall_time)
        self._pending.clear()

    def log_hparams(self, hparams: Mapping[str, object], metric_tags: list[str]) -> None:
        """Records the run's hyper-parameters for TensorBoard's HParams tab, with ``metric_tags`` (scalar tags
        this run logs) as the metrics to compare. Values that are not numbers, strings or bools are written
        as strings."""
        self._write_pending()  # events stay in the order they were logged
        for summary in _hparams_summaries(hparams, metric_tags):
            self._write(self._event(summary=summary))
        self.flush()

    def flush(self) -> None:
        """Writes everything logged so far to the file."""
        self._write_pending()
        self._file.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        """Flushes pending events to disk and closes the file."""
        if not self._file.closed:
            self.flush()
            self._file.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
