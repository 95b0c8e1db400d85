"""An exponential moving average of the weights (``trainer.ema_decay``), kept by torch's ``AveragedModel``.

After every optimizer step ``ema = decay * ema + (1 - decay) * weights``, parameters and buffers (batch-norm
statistics) alike; the first step copies the weights. With it on, validation picks ``best.pt`` by the
averaged weights and the final test and ``eval.py`` use them; training itself goes on with the raw ones.
A checkpoint keeps both (``model`` and ``ema``), so a resume goes on exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["build_ema", "evaluation_weights", "load_ema"]

log = logging.getLogger(__name__)

PREFIX = "module."  # AveragedModel's state dict: the averaged module's under this prefix, and n_averaged


def build_ema(module: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An EMA of ``module``'s parameters and buffers with ``decay``, on its device; ``None`` when ``decay`` is 0."""
    if not decay:
        return None
    return AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def load_ema(ema: AveragedModel | None, checkpoint: Mapping[str, Any]) -> None:
    """Puts a checkpoint's EMA into ``ema``. A checkpoint without one (EMA switched on at resume) leaves ``ema``
    to start from the next step's weights; an EMA the run no longer keeps is dropped. Both say so."""
    saved = checkpoint.get("ema") or {}
    if ema is None:
        if saved:
            log.info("the checkpoint's EMA weights are not used: trainer.ema_decay is 0 now")
        return
    if not saved:
        log.warning("the checkpoint has no EMA of the weights: the average starts at the next step")
        return
    ema.load_state_dict(saved)


def evaluation_weights(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a checkpoint is evaluated with: its EMA when it has one, else the trained weights."""
    ema = checkpoint.get("ema") or {}
    if not ema:
        return checkpoint["model"]
    return {key[len(PREFIX):]: value for key, value in ema.items() if key.startswith(PREFIX)}
