"""Sweeps: each job records how it ended in ``result.json``; at the end of a multirun a Hydra callback
writes ``summary.csv`` and ``summary.md`` in the sweep directory, prints the table and names the best job.

Part of the entry layer: it knows Hydra's callback interface and sweep layout.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from harness.checkpoint import write_atomic
from harness.cli import hydra_value
from harness.config import metric_direction_of
from harness.errors import ConfigError

__all__ = ["write_result", "read_jobs", "summarize", "SweepSummary", "RESULT"]

log = logging.getLogger(__name__)
RESULT = "result.json"


def write_result(run_dir: str | Path, status: str, overrides: list[str], elapsed_s: float,
                 metrics: dict[str, float] | None = None, error: str | None = None) -> Path:
    """Writes ``run_dir/result.json``: how this invocation of a run ended.

    ``elapsed_s`` adds to the time a previous invocation in the same directory recorded, so a resumed
    run reports its whole wall time.
    """
    path = Path(run_dir) / RESULT
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: this invocation's record stands alone
        previous = {}
    if not isinstance(previous, dict):
        previous = {}
    record = {
        "status": status,
        "overrides": overrides,
        "elapsed_s": round(previous.get("elapsed_s", 0.0) + elapsed_s, 3),
        "metrics": metrics or previous.get("metrics", {}),
        "error": error,
    }
    write_atomic(path, json.dumps(record, indent=2).encode())
    return path


def _read_checkpoint_summary(job_dir: Path) -> dict[str, Any]:
    last = job_dir / "checkpoints" / "last.pt"
    if not last.exists():
        return {}
    try:
        # mmap: only the small entries are read, not the weights
        ckpt = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a damaged checkpoint is reported as missing data, not a failed summary
        return {}
    state, trainer = ckpt["train_state"], ckpt.get("config", {}).get("trainer", {})
    return {"epochs": state["epoch"], "best": {"monitor": trainer.get("monitor"), "value": state["best"],
                                              "epoch": state["best_epoch"]}}


def _read_result(path: Path) -> tuple[dict[str, Any], str]:
    """A job's ``result.json``, or ``{}`` and why not (a missing file is no problem: the job did not end)."""
    if not path.exists():
        return {}, ""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {}, f"{RESULT} unreadable ({' '.join(str(e).split())[:80]})"
    if not isinstance(result, dict) or not isinstance(result.get("metrics", {}), dict) or not isinstance(
            result.get("overrides", []), list):
        return {}, f"{RESULT} is not a result record"
    return result, ""


def read_jobs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One record per job folder of a sweep (a folder with ``.hydra/``), from its result and checkpoint."""
    jobs = []
    for job_dir in sorted(Path(sweep_dir).iterdir(), key=lambda p: (_job_number(p.name), p.name)):
        if not (job_dir / ".hydra").is_dir():
            continue
        result, problem = _read_result(job_dir / RESULT)
        if not result:
            try:
                overrides = (job_dir / ".hydra" / "overrides.yaml").read_text().splitlines()
            except OSError:
                overrides = []
            result = {"status": "incomplete", "overrides": [o.lstrip("- ").strip() for o in overrides],
                      **({"error": problem} if problem else {})}
        jobs.append({"job": job_dir.name, "dir": str(job_dir), **result, **_read_checkpoint_summary(job_dir)})
    return jobs


def _job_number(name: str) -> int:
    """The number a job folder's name starts with (``3_optimizer.lr=0.05``: 3); -1 without one."""
    digits = re.match(r"\d+", name)
    return int(digits.group()) if digits else -1


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return "" if value is None else str(value)


def summarize(sweep_dir: str | Path, metric: str, monitor: str = "val/acc", direction: str | None = None,
              ) -> list[dict[str, str]]:
    """Writes ``summary.csv`` and ``summary.md`` for a sweep, best job first, and returns the rows.

    Rows are sorted by the final value of ``metric``, the better first (``direction``: ``"max"`` or ``"min"``;
    by default ``"min"`` for a loss, else ``"max"``);
    jobs that failed or did not finish come last. ``monitor`` is the metric checkpoints track as best
    (``trainer.monitor``). The ``test/`` value of ``metric`` (``test/acc`` for ``val/acc``) is shown where
    the jobs report one: the test of their ``best.pt``.
    """
    jobs = read_jobs(sweep_dir)
    sign = 1.0 if (direction or ("min" if metric.endswith("/loss") else "max")) == "min" else -1.0
    test = "test/" + metric.split("/", 1)[-1]

    def key(job: dict) -> tuple:
        value = job.get("metrics", {}).get(metric)
        ok = job.get("status") == "finished" and value is not None and math.isfinite(value)
        return (not ok, sign * value if ok else 0.0, _job_number(job["job"]), job["job"])

    # The overrides column shows what tells the jobs apart, not the options every job shares.
    shared = set.intersection(*(set(job.get("overrides", [])) for job in jobs)) if len(jobs) > 1 else set()
    rows = []
    for job in sorted(jobs, key=key):
        best = job.get("best") or {}
        rows.append({
            "job": job["job"],
            "status": job.get("status", ""),
            metric: _fmt(job.get("metrics", {}).get(metric)),
            test: _fmt(job.get("metrics", {}).get(test)),
            f"best {monitor}": _fmt(best.get("value")) if best.get("monitor") == monitor else "",
            "best epoch": _fmt(best.get("epoch")),
            "epochs": _fmt(job.get("epochs")),
            "wall s": f"{job['elapsed_s']:.1f}" if "elapsed_s" in job else "",
            "overrides": " ".join(o for o in job.get("overrides", []) if o not in shared),
            "error": job.get("error") or "",
            "dir": job["dir"],
        })
    if not any(row[test] for row in rows):  # the jobs ran no test (trainer.test_at_end=false)
        for row in rows:
            del row[test]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    sweep_dir = Path(sweep_dir)
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    shown = [c for c in columns if c != "dir"]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(row.get(c, "").replace("|", "\\|") for c in shown) + " |" for row in rows]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return rows


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, summarises the sweep and exits 1 if a job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        metric = config.optimized_metric
        try:
            direction = metric_direction_of(config, metric)
        except ConfigError as e:  # the jobs reported it; the summary still lists them
            log.warning("sweep summary sorted with higher values first: %s", e)
            direction = "max"
        rows = summarize(sweep_dir, metric, monitor=config.trainer.monitor, direction=direction)
        if not rows:
            return
        table = (sweep_dir / "summary.md").read_text()
        print(f"\nsweep summary ({sweep_dir / 'summary.csv'}):\n{table}", flush=True)
        best = rows[0]
        if best["status"] == "finished":
            print(f"best job: {best['job']} ({metric} {best[metric]}) in {best['dir']}", flush=True)
        failed = [row["job"] for row in rows if row["status"] != "finished"]
        if failed:
            again = shlex.quote(f"hydra.sweep.dir={hydra_value(str(sweep_dir))}")
            print(f"error: {len(failed)} of {len(rows)} jobs did not finish: {', '.join(failed)} "
                  f"(see summary.md and their train.log); rerun the same command with {again} to finish "
                  "the ones that can", file=sys.stderr, flush=True)
            sys.exit(1)

