"""What a harness checkpoint must hold, checked before anything is loaded from it.

``torch.load(weights_only=True)`` only promises tensors and plain data; a file that loads can still hold a
list where a state dict belongs, a negative step count or another program's RNG state, and torch would fail
on it later, deep in ``load_state_dict`` or ``set_rng_state``, with a traceback. :func:`check_checkpoint`
walks the layout :class:`harness.checkpoint.Checkpointer` writes and names the first thing that is wrong.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["REQUIRED_KEYS", "check_checkpoint"]

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "train_state", "rng")
MT_WORDS = 624  # Mersenne Twister state words, in Python's and NumPy's generators


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _state_dict(value: Any, where: str, tensors_only: bool = False) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{where} is a {type(value).__name__}, not a state dict")
    if tensors_only:
        bad = next((k for k, v in value.items() if not isinstance(v, torch.Tensor)), None)
        if bad is not None:
            raise ValueError(f"{where}[{bad!r}] is a {type(value[bad]).__name__}, not a tensor")


def _optimizer(value: Any) -> None:
    if not isinstance(value, dict) or not isinstance(value.get("state"), dict) or not isinstance(
            value.get("param_groups"), list):
        raise ValueError("optimizer is not an optimizer state dict (state and param_groups)")
    for i, group in enumerate(value["param_groups"]):
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            raise ValueError(f"optimizer param_groups[{i}] has no list of params")


# TrainState's fields: (check, what it must be). Epoch and step are required; the others have defaults.
_COUNT = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
_SUM = (lambda v: _is_number(v), "a finite number")
_TRAIN_STATE = {
    "epoch": _COUNT, "step": _COUNT, "batch": _COUNT, "epoch_samples": _COUNT, "window_samples": _COUNT,
    "skipped": _COUNT, "best_epoch": _COUNT, "epoch_loss": _SUM, "window_loss": _SUM,
    "best": (lambda v: v is None or _is_number(v), "a finite number or None"),
    "metrics": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_number(x) for k, x in v.items()),
                "a dict of metric names to numbers"),
    "top_k": (lambda v: isinstance(v, list) and all(
        isinstance(e, list) and len(e) == 2 and _is_number(e[0]) and _is_int(e[1]) and e[1] >= 1 for e in v),
              "a list of [value, epoch] pairs"),
    "early_stop": (lambda v: isinstance(v, dict) and _is_number(v.get("best", 0)) and all(
        _is_int(v.get(k, 0)) and v.get(k, 0) >= 0 for k in ("best_epoch", "stale")),
                   "a dict with best, best_epoch and stale"),
}


def _train_state(value: Any, steps_per_epoch: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"train_state is a {type(value).__name__}, not a dict")
    for key in ("epoch", "step"):
        if key not in value:
            raise ValueError(f"train_state has no {key}")
    for key, (ok, what) in _TRAIN_STATE.items():
        if key in value and not ok(value[key]):
            raise ValueError(f"train_state.{key}={value[key]!r} must be {what}")
    if value.get("best_epoch", 0) > value["epoch"]:
        raise ValueError(f"train_state.best_epoch={value['best_epoch']} is after its epoch={value['epoch']}")
    if _is_int(steps_per_epoch) and value.get("batch", 0) > steps_per_epoch:
        raise ValueError(f"train_state.batch={value['batch']} is beyond the epoch's {steps_per_epoch} batches")


def _words(value: Any, where: str, n: int) -> None:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.int64 or value.shape != (n,):
        raise ValueError(f"{where} is not a generator state ({n} words as a 1-D int64 tensor)")
    if bool(((value < 0) | (value >= 2**32)).any()):
        raise ValueError(f"{where} is not a generator state (words beyond 32 bits)")


def _rng(value: Any) -> None:
    if not isinstance(value, dict) or not {"python", "numpy", "torch", "cuda"} <= set(value):
        raise ValueError("rng does not hold the python, numpy, torch and cuda generator states")
    python, numpy_state = value["python"], value["numpy"]
    if not isinstance(python, dict) or not _is_int(python.get("version")) or not (
            python.get("gauss") is None or _is_number(python.get("gauss"))):
        raise ValueError("rng.python is not a Python generator state")
    _words(python.get("state"), "rng.python.state", MT_WORDS + 1)  # + the position
    if not isinstance(numpy_state, dict) or numpy_state.get("bit_generator") != "MT19937" or not isinstance(
            numpy_state.get("state"), dict) or not _is_int(numpy_state["state"].get("pos")):
        raise ValueError("rng.numpy is not a NumPy MT19937 generator state")
    _words(numpy_state["state"].get("key"), "rng.numpy.state.key", MT_WORDS)
    torch_state = value["torch"]
    if not isinstance(torch_state, torch.Tensor) or torch_state.dtype != torch.uint8 or (
            torch_state.shape != torch.get_rng_state().shape):
        raise ValueError("rng.torch is not a torch CPU generator state")
    if not isinstance(value["cuda"], list) or not all(
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in value["cuda"]):
        raise ValueError("rng.cuda is not a list of CUDA generator states")


def check_checkpoint(checkpoint: Any) -> None:
    """Raises ``ValueError`` naming the first part of ``checkpoint`` that is not what the harness writes."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f"it holds a {type(checkpoint).__name__}, not a dict of state dicts")
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise ValueError(f"it has no {', '.join(missing)}")
    _state_dict(checkpoint["model"], "model", tensors_only=True)
    if not checkpoint["model"]:
        raise ValueError("model is an empty state dict")
    _optimizer(checkpoint["optimizer"])
    _state_dict(checkpoint["scheduler"], "scheduler")
    _state_dict(checkpoint.get("scaler", {}), "scaler")
    _state_dict(checkpoint.get("ema", {}), "ema", tensors_only=True)
    steps_per_epoch = checkpoint.get("steps_per_epoch")
    if steps_per_epoch is not None and not (_is_int(steps_per_epoch) and steps_per_epoch >= 1):
        raise ValueError(f"steps_per_epoch={steps_per_epoch!r} must be an integer >= 1")
    _train_state(checkpoint["train_state"], steps_per_epoch)
    _rng(checkpoint["rng"])
    if not isinstance(checkpoint.get("config", {}), dict):
        raise ValueError("config is not a dict")
    loggers = checkpoint.get("loggers", {})
    if not isinstance(loggers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in loggers.items()):
        raise ValueError("loggers is not a dict of logger names to run ids")
