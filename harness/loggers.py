"""Metric loggers, all of one shape: ``log(metrics, step)``, ``log_hparams(hparams, metric_tags)``,
``close(status)`` and ``run_id``, the run a resume continues. TensorBoard, CSV, MLflow and W&B write what other
programs read; ``MemoryLogger`` keeps it for tests; ``LoggerGroup`` sends each call to several
(``logger=[tensorboard,csv]``)."""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Protocol, TypeVar

from harness.errors import ConfigError, Interrupted, RunDirError, Stopped

__all__ = ["CSVLogger", "Logger", "LoggerGroup", "MLflowLogger", "MemoryLogger", "TensorBoardLogger", "WandbLogger"]

log = logging.getLogger(__name__)

class Logger(Protocol):
    """What the loop logs to: scalars keyed by tag, at x = the global optimizer step."""

    run_id: str | None  # the logger's own run (MLflow's, W&B's), saved in checkpoints so a resume continues it

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_hparams(self, hparams: Mapping[str, object], metric_tags: list[str]) -> None: ...

    def close(self, status: str = "finished") -> None: ...  # how the run ended: finished, failed or interrupted


_Self = TypeVar("_Self", bound="_Closing")


class _Closing:
    """``with logger:`` closes it with the status its block ended in. After a failure or a stop, a close that
    fails too is a warning, so the block's own error is what propagates."""

    def close(self, status: str = "finished") -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close("finished")
            return
        try:
            self.close(_status(exc))
        except Exception as e:  # an MLflow server gone, say: the block's own error is the one to report
            log.warning("could not close %s: %s", type(self).__name__, _first_line(e)[:300])


def _status(exc: BaseException | None) -> str:
    if exc is None:
        return "finished"
    return "interrupted" if isinstance(exc, (Interrupted, Stopped, KeyboardInterrupt)) else "failed"


def _first_line(e: BaseException) -> str:
    return next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)


@contextmanager
def _writing(what: str) -> Iterator[None]:
    """A failed write (a full disk) is one line, not a traceback."""
    try:
        yield
    except OSError as e:
        raise RunDirError(f"could not write {what} ({e.strerror or e}); free some space, then resume the run") from e


class MemoryLogger(_Closing):
    """Keeps every logged row in ``rows``, the hyper-parameters and the closing status, for tests and notebooks."""

    run_id = None

    def __init__(self, run_dir: str | Path | None = None, purge_step: int | None = None,
                 run_id: str | None = None) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.hparams: dict[str, object] = {}
        self.metric_tags: list[str] = []
        self.status: str | None = None  # None until closed

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))

    def series(self, tag: str) -> list[tuple[int, float]]:
        """``(step, value)`` of every row that has ``tag``."""
        return [(step, m[tag]) for step, m in self.rows if tag in m]

    def log_hparams(self, hparams: Mapping[str, object], metric_tags: list[str]) -> None:
        self.hparams, self.metric_tags = dict(hparams), list(metric_tags)

    def close(self, status: str = "finished") -> None:
        self.status = status


def _wait_for_a_later_second(log_dir: Path) -> None:
    """TensorBoard reads a run's event files in name order, and a name starts with the second the file was
    made: a resumed run's file must not share the interrupted one's second, or it may be read first and its
    ``purge_step`` be undone."""
    names = [p.name.split(".") for p in log_dir.glob("events.out.tfevents.*")]
    stamps = [int(parts[3]) for parts in names if parts[3].isdigit()]
    if stamps and max(stamps) >= int(time.time()):
        time.sleep(max(stamps) + 1 - time.time())


class TensorBoardLogger(_Closing):
    """Scalars into ``run_dir`` through ``torch.utils.tensorboard.SummaryWriter``.

    Args:
        run_dir: the run directory.
        purge_step: on resume, the first step the resumed run will log: TensorBoard hides the points at or
            after it that the interrupted run wrote, so the curves go on without overlap.
        run_id: ignored: a resumed run writes a new event file beside the old ones.
        flush_secs: the longest a logged value waits in memory before it reaches the file.
    """

    run_id = None

    def __init__(self, run_dir: str | Path, purge_step: int | None = None, run_id: str | None = None,
                 flush_secs: int = 10) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported here: runs that log nothing don't pay for it

        run_dir = self.run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if purge_step is not None:
            _wait_for_a_later_second(run_dir)
        self.writer = SummaryWriter(str(run_dir), purge_step=purge_step, flush_secs=flush_secs)

    def _writing(self):
        """The writer's own thread reports a failed write (a full disk) at the next call."""
        return _writing(f"TensorBoard events in {self.run_dir}")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Records each scalar in ``metrics`` at x = ``step``."""
        with self._writing():
            for tag, value in metrics.items():
                self.writer.add_scalar(tag, value, step)

    def log_hparams(self, hparams: Mapping[str, object], metric_tags: list[str]) -> None:
        """Records the run's hyper-parameters for TensorBoard's HParams tab, with ``metric_tags`` (scalar tags this
        run logs) as the metrics to compare. Values other than numbers and strings are written as strings."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        values = {k: v if isinstance(v, (int, float, str)) else str(v) for k, v in hparams.items()}
        # The metrics' values come from their scalar curves; the summaries only name them.
        with self._writing():
            for summary in hparams_summaries(values, {tag: 0.0 for tag in metric_tags}):
                self.writer.file_writer.add_summary(summary)

    def close(self, status: str = "finished") -> None:
        """Writes everything logged to the file and closes it (``status`` aside: TensorBoard has no run state)."""
        with self._writing():
            self.writer.close()


class CSVLogger(_Closing):
    """A row per ``log`` call in ``<run_dir>/metrics.csv``: ``step``, ``epoch`` (empty in rows without one),
    then a column per tag in the order the tags first came, empty where a row lacks the tag. Each row is flushed
    as it is written, so pandas or the ``csv`` module can read the file while the run goes on. A new tag
    rewrites the file, atomically, with the wider header. Values are ``repr(float)``: they read back exactly.

    Args:
        run_dir: the run directory.
        purge_step: on resume, the first step the resumed run will log: the rows at or after it, written by the
            interrupted run, are dropped, so the rows go on without overlap.
        run_id: ignored: a resumed run goes on in the same file.
        filename: the file's name in ``run_dir``.
    """

    run_id = None

    def __init__(self, run_dir: str | Path, purge_step: int | None = None, run_id: str | None = None,
                 filename: str = "metrics.csv") -> None:
        self.path = Path(run_dir) / filename
        self.columns = ["step", "epoch"]
        self.file = None
        with _writing(str(self.path)):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite(self._read(purge_step) if self.path.exists() else [])

    def _read(self, purge_step: int | None) -> list[dict[str, str]]:
        """The file's rows (those before ``purge_step`` when it is set); its header becomes ``columns``."""
        text = self.path.read_text(encoding="utf-8")
        reader = csv.DictReader(io.StringIO(text[:text.rfind("\n") + 1]))  # a row a crash cut short is dropped
        try:
            if reader.fieldnames is not None and reader.fieldnames[:2] != ["step", "epoch"]:
                raise ValueError("its header does not start with step,epoch")
            self.columns = list(reader.fieldnames or self.columns)
            return [row for row in reader if purge_step is None or int(row["step"]) < purge_step]
        except (ValueError, TypeError, csv.Error) as e:
            raise RunDirError(f"{self.path} is not a metrics file this logger can go on with ({e}); move it "
                              "away or set logger.csv.filename") from e

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        """Writes the header and ``rows`` atomically, then reopens the file to append to it."""
        from harness.checkpoint import write_atomic  # here: harness.checkpoint imports the loop, which imports us

        text = io.StringIO()
        writer = csv.DictWriter(text, self.columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.path, text.getvalue().encode("utf-8"))
        if self.file is not None:
            self.file.close()
        self.file = open(self.path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.file, self.columns, restval="", lineterminator="\n")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Appends a row: ``step``, ``metrics["epoch"]`` when there is one, and the other scalars."""
        row = {tag: repr(float(value)) for tag, value in metrics.items() if tag != "epoch"}
        row.update(step=str(step), epoch=str(metrics.get("epoch", "")))
        with _writing(str(self.path)):
            new = [tag for tag in row if tag not in self.columns]
            if new:
                rows = self._read(None)
                self.columns += new
                self._rewrite(rows)
            self.writer.writerow(row)
            self.file.flush()

    def log_hparams(self, hparams: Mapping[str, object], metric_tags: list[str]) -> None:
        """Writes nothing: the run directory already holds the config (``.hydra/config.yaml``)."""

    def close(self, status: str = "finished") -> None:
        """Closes the file (``status`` aside: a CSV file has no run state)."""
        with _writing(str(self.path)):
            self.file.close()


_MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


class MLflowLogger(_Closing):
    """An MLflow run per training run: the flattened config as params, every metric at its step, and the
    checkpoints' paths as tags (``harness.run_dir``, ``harness.checkpoints``, and at the end
    ``harness.best_checkpoint`` and ``harness.last_checkpoint``).

    MLflow keeps a run's history: a resumed run appends its points after the checkpoint's step, and the points the
    interrupted run logged after that step stay beside them. A remote server that can't be reached is retried for
    minutes before the run stops (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` shorten it).

    Args:
        run_dir: the run directory.
        purge_step: ignored (see above).
        run_id: on resume, the MLflow run to continue; a new run is started if the store does not have it.
        tracking_uri: where runs are stored: ``sqlite:///path.db`` (relative to the working directory), or a
            server, ``http://host:5000``.
        experiment: the experiment the run is grouped in; made if missing.
        run_name: the run's name; None = the run directory's name.
    """

    def __init__(self, run_dir: str | Path, purge_step: int | None = None, run_id: str | None = None,
                 tracking_uri: str = "sqlite:///outputs/mlflow.db", experiment: str = "harness",
                 run_name: str | None = None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ConfigError('logger=mlflow needs MLflow: pip install -e ".[mlflow]"') from e
        self.run_dir, self.tracking_uri = Path(run_dir).resolve(), tracking_uri
        with self._calling():
            self.client = MlflowClient(tracking_uri=_local_store(tracking_uri))
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            tags = {"harness.run_dir": str(self.run_dir), "harness.checkpoints": str(self.run_dir / "checkpoints")}
            run = self._continued(run_id) or self.client.create_run(
                experiment_id, tags=tags, run_name=run_name or self.run_dir.name)
        self.run_id: str = run.info.run_id
        self.params = dict(run.data.params)  # what the run holds: MLflow refuses to change a param

    @contextmanager
    def _calling(self) -> Iterator[None]:
        """A store that can't be reached or used is one line naming the key that points at it."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except (MlflowException, OSError) as e:
            raise ConfigError(f"MLflow at logger.mlflow.tracking_uri={self.tracking_uri!r} failed: "
                              f"{_first_line(e)}") from e

    def _continued(self, run_id: str | None):
        """The run ``run_id``, set running again; None when there is none or this store does not have it."""
        from mlflow.exceptions import MlflowException

        if run_id is None:
            return None
        try:
            run = self.client.get_run(run_id)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            log.warning("MLflow run %s is not in %s; starting a new run", run_id, self.tracking_uri)
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Records each scalar in ``metrics`` at ``step``, in one request."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._calling():
            self.client.log_batch(self.run_id, metrics=[Metric(tag, float(v), now, step) for tag, v in metrics.items()])

    def log_hparams(self, hparams: Mapping[str, object], metric_tags: list[str]) -> None:
        """Records ``hparams`` as the run's params, as strings cut to MLflow's limits. A continued run keeps the
        params it has: a value that changed since is not logged, with a warning. ``metric_tags`` is unused:
        MLflow compares runs by any metric."""
        from mlflow.entities import Param

        params = {str(key)[:250]: str(value)[:6000] for key, value in hparams.items()}
        changed = [key for key, value in params.items() if self.params.get(key, value) != value]
        if changed:
            log.warning("MLflow run %s keeps its first value of %s (MLflow params can't change)", self.run_id,
                        ", ".join(changed))
        new = [Param(key, value) for key, value in params.items() if key not in self.params]
        with self._calling():
            for i in range(0, len(new), 100):  # MLflow takes at most 100 params a request
                self.client.log_batch(self.run_id, params=new[i:i + 100])
        self.params.update((p.key, p.value) for p in new)

    def close(self, status: str = "finished") -> None:
        """Tags the run with its checkpoints' paths and ends it: FINISHED, FAILED or KILLED (interrupted)."""
        from mlflow.entities import RunTag

        checkpoints = self.run_dir / "checkpoints"
        tags = [RunTag(f"harness.{kind}_checkpoint", str(checkpoints / f"{kind}.pt")) for kind in ("best", "last")
                if (checkpoints / f"{kind}.pt").is_file()]
        with self._calling():
            if tags:
                self.client.log_batch(self.run_id, tags=tags)
            self.client.set_terminated(self.run_id, _MLFLOW_STATUS[status])


def _local_store(tracking_uri: str) -> str:
    """``tracking_uri``, once the folder of a local SQLite store exists and the packages it needs are there."""
    if tracking_uri.startswith("sqlite:///"):
        if find_spec("sqlalchemy") is None or find_spec("alembic") is None:
            raise ConfigError(f"logger.mlflow.tracking_uri={tracking_uri!r} needs SQLAlchemy and Alembic: "
                              "pip install sqlalchemy alembic (or point it at an MLflow server, http://host:5000)")
        Path(tracking_uri.removeprefix("sqlite:///").partition("?")[0]).parent.mkdir(parents=True, exist_ok=True)
    return tracking_uri


class WandbLogger(_Closing):
    """A Weights & Biases run per training run: the flattened config as its config, every metric at its step.
    Offline by default: the run is written under ``<run_dir>/wandb`` with no network, and
    ``wandb sync <run_dir>/wandb/offline-run-*`` uploads it later. W&B's console capture is off: the harness's
    progress bar and one-line errors stay as they are.

    W&B keeps each run's steps increasing: once a resumed run reaches the server, its points at steps the
    interrupted run had already logged past its checkpoint are ignored (W&B warns), so ``purge_step`` is unused.
    A resumed offline run is a second ``offline-run-*`` folder with the same run id; sync both, oldest first.

    Args:
        run_dir: the run directory.
        purge_step: ignored (see above).
        run_id: on resume, the W&B run to continue (``resume="allow"``: a new run with this id if there is none).
        project: the W&B project.
        entity: the W&B user or team; None = your default.
        mode: ``offline``, ``online`` (after ``wandb login``) or ``disabled``.
        name: the run's display name; None = the run directory's name.
        tags: labels for the run.
    """

    def __init__(self, run_dir: str | Path, purge_step: int | None = None, run_id: str | None = None,
                 project: str = "harness", entity: str | None = None, mode: str = "offline", name: str | None = None,
                 tags: list[str] | None = None) -> None:
        try:
            import wandb
        except ImportError as e:
            raise ConfigError('logger=wandb needs wandb: pip install -e ".[wandb]"') from e
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)  # W&B warns about a missing one, writes to /tmp if it can't make it
        # create_new: each logger its own run, never one an earlier, unclosed logger left active.
        settings = wandb.Settings(console="off", silent=True, reinit="create_new")
        try:
            self.run = wandb.init(dir=str(run_dir), project=project, entity=entity, mode=mode,
                                  name=name or run_dir.name, id=run_id, resume="allow" if run_id else None,
                                  tags=tags, settings=settings)
        except wandb.errors.Error as e:
            raise ConfigError(f"logger.wandb (mode={mode}): {_first_line(e)}") from e
        self.run_id: str = self.run.id

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Records each scalar in ``metrics`` at ``step``."""
        self.run.log(dict(metrics), step=step)

    def log_hparams(self, hparams: Mapping[str, object], metric_tags: list[str]) -> None:
        """Records ``hparams`` as the run's config; a continued run takes the new values. ``metric_tags`` is
        unused: W&B compares runs by any metric."""
        self.run.config.update(dict(hparams), allow_val_change=True)

    def close(self, status: str = "finished") -> None:
        """Ends the run: exit code 0 if it finished, 1 if it failed or was interrupted (W&B marks it failed)."""
        self.run.finish(exit_code=0 if status == "finished" else 1)


class LoggerGroup(_Closing):
    """Several loggers as one, by name (``logger=[tensorboard,csv]``). An empty group logs nothing and, like an
    empty list, is false."""

    run_id = None  # a group has no run of its own: see ``run_ids``

    def __init__(self, loggers: Mapping[str, Logger]) -> None:
        self.loggers = dict(loggers)

    @property
    def run_ids(self) -> dict[str, str]:
        """The loggers' own runs by logger name (MLflow's, W&B's), for the checkpoint: a resume continues them."""
        return {name: logger.run_id for name, logger in self.loggers.items() if logger.run_id is not None}

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for logger in self.loggers.values():
            logger.log(metrics, step)

    def log_hparams(self, hparams: Mapping[str, object], metric_tags: list[str]) -> None:
        for logger in self.loggers.values():
            logger.log_hparams(hparams, metric_tags)

    def close(self, status: str = "finished") -> None:
        """Closes every logger, even after one fails to close; then raises the first failure."""
        errors = []
        for logger in self.loggers.values():
            try:
                logger.close(status)
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]

    def __len__(self) -> int:
        return len(self.loggers)
