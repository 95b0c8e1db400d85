"""Evaluates a saved checkpoint with the config it was trained with (the core of ``eval.py``).

The checkpoint holds its run's resolved config; the data, the task and the model are built from it as
training built them, the weights loaded, and one split evaluated with :func:`harness.loop.evaluate`, so the
numbers are the ones the run logged for that checkpoint (to the last digit on CPU). The results go into
``eval.json`` beside the checkpoint, added to what is there.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from harness.build import build_data, build_task, instantiate_group, resolve_device, seed_everything
from harness.checkpoint import BEST, LAST, load_checkpoint, write_atomic
from harness.config import validate
from harness.distributed import World
from harness.ema import evaluation_weights
from harness.errors import CheckpointError, ConfigError
from harness.loop import evaluate

__all__ = ["find_checkpoint", "evaluate_checkpoint", "record_evaluation", "EVAL", "SPLITS"]

log = logging.getLogger(__name__)
EVAL = "eval.json"
SPLITS = ("test", "val")


def find_checkpoint(ckpt_path: str) -> Path:
    """The checkpoint ``ckpt_path`` names: a ``.pt`` file, or a run directory's ``checkpoints/best.pt``
    (the one its final test used; ``last.pt`` where there is no ``best.pt``).

    Raises:
        CheckpointError: nothing to evaluate there.
    """
    path = Path(ckpt_path)
    if path.is_dir():
        found = next((path / "checkpoints" / name for name in (BEST, LAST) if (path / "checkpoints" / name).is_file()),
                     None)
        if found is None:
            raise CheckpointError(f"ckpt_path={ckpt_path}: no checkpoints/best.pt or last.pt in that directory; "
                                  "pass a run directory or a .pt file")
        return found
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={ckpt_path}: no such run directory or checkpoint file")
    return path


def _with_data_changes(config: dict[str, Any], changes: dict[str, Any]) -> Any:
    """The checkpoint's config with ``data.<key>`` changes (a moved ``data.root``, another batch size) applied.

    Raises:
        ConfigError: a key the checkpoint's data settings don't have.
    """
    cfg = OmegaConf.create(config)
    known = [key for key in cfg.data if key != "_target_"]
    for key, value in changes.items():
        if key not in known:
            raise ConfigError(f"data.{key} is not a setting of the checkpoint's data ({cfg.data._target_}); "
                              f"it has {', '.join(known)}")
        if key in ("split_seed", "val_fraction", "test_fraction", "train_size", "val_size", "test_size"):
            log.warning("data.%s=%s: the splits are no longer the ones the run was trained and tested on", key, value)
        cfg.data[key] = value
    return cfg


def evaluate_checkpoint(path: Path, split: str = "test", data_changes: dict[str, Any] | None = None,
                        device: str | None = None) -> dict[str, float]:
    """Evaluates the checkpoint at ``path`` on ``split`` (``test`` or ``val``).

    Args:
        path: a checkpoint the harness wrote.
        split: which split of the run's data.
        data_changes: ``data.<key>`` settings to change from the checkpoint's (``{"root": "/data"}``).
        device: where to evaluate; ``None``: the run's ``trainer.device``.

    Returns:
        ``{f"{split}/loss": ..., f"{split}/<metric>": ...}``.

    Raises:
        CheckpointError: a missing, damaged or foreign checkpoint (the same messages as ``resume=``).
        ConfigError: a wrong ``split`` or ``data`` key; HarnessError: the data set is missing.
    """
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} must be one of {', '.join(SPLITS)}")
    checkpoint = load_checkpoint(path, key="ckpt_path")
    config = checkpoint.get("config")
    if not isinstance(config, dict) or not all(isinstance(config.get(k), dict) for k in ("data", "model", "task")):
        raise CheckpointError(f"ckpt_path={path} holds no data, model and task config (written by an older "
                              "harness?); evaluate a checkpoint of this version")
    cfg = _with_data_changes(config, data_changes or {})
    trainer = validate(cfg)  # the checks a training run makes, the data changes among them
    torch_device = resolve_device(device or trainer.device)
    seed_everything(cfg.seed)
    splits, (_, val_loader, test_loader) = build_data(cfg, torch_device, World())
    task = build_task(cfg.task, splits, torch_device)
    model = instantiate_group("model", cfg.model, input_shape=splits.input_shape, num_classes=splits.num_classes)
    model.load_state_dict(evaluation_weights(checkpoint))
    loader = test_loader if split == "test" else val_loader
    return evaluate(model.to(torch_device), loader, torch_device, task.loss, task.metrics, trainer.precision, split)


def record_evaluation(path: Path, split: str, metrics: dict[str, float], data_changes: dict[str, Any]) -> Path:
    """Adds ``metrics`` to ``eval.json`` beside the checkpoint ``path``, under its file name and ``split``
    (earlier evaluations of other checkpoints or splits stay); returns the file."""
    target = path.parent / EVAL
    try:
        records = json.loads(target.read_text())
    except (OSError, ValueError):
        records = {}
    records = records if isinstance(records, dict) else {}
    records.setdefault(path.name, {})[split] = {
        "metrics": metrics, "data_changes": data_changes, "time": datetime.now().isoformat(timespec="seconds")}
    write_atomic(target, json.dumps(records, indent=2).encode())
    return target
