"""The training loop: plain torch objects and plain values in, final metrics out. No Hydra here."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from harness.errors import TrainingError

__all__ = ["fit", "evaluate", "Logger"]

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Logger(Protocol):
    """Anything with ``log(metrics, step)``, e.g. :class:`harness.tensorboard.TensorBoardLogger`."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...


def _check_finite(value: float, what: str, epoch: int, step: int) -> None:
    if not math.isfinite(value):
        raise TrainingError(
            f"{what} is {value} at epoch {epoch + 1}, step {step}; lower optimizer.lr, "
            f"set trainer.grad_clip (e.g. 1.0), or check the data for NaNs"
        )


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, loss_fn: LossFn = F.cross_entropy) -> dict:
    """Mean loss and accuracy of ``model`` over ``loader``; one host-device sync at the end.

    Returns:
        ``{"val/loss": float, "val/acc": float}``.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss_sum += loss_fn(logits, y) * len(y)
        correct += (logits.argmax(dim=1) == y).sum()
        seen += len(y)
    if seen == 0:
        raise ValueError("the validation loader is empty")
    return {"val/loss": loss_sum.item() / seen, "val/acc": correct.item() / seen}


def fit(
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    max_epochs: int,
    device: torch.device,
    interval: str = "epoch",
    log_every_n_steps: int = 10,
    grad_clip: float = 0.0,
    logger: Logger | None = None,
    progress: bool = True,
    loss_fn: LossFn = F.cross_entropy,
) -> dict[str, float]:
    """Trains ``model`` for ``max_epochs`` epochs and returns the final metrics.

    The loop, in order::

        for epoch in range(max_epochs):
            for x, y in train_loader:
                zero_grad; loss = loss_fn(model(x), y); loss.backward()
                clip grad norm to grad_clip (if > 0)
                optimizer.step()
                scheduler.step()                      # if interval == "step"
                every log_every_n_steps steps: log train/loss (mean since last log), lr/group<i>
            evaluate on val_loader; log val/loss, val/acc, epoch at the epoch's last step
            scheduler.step()                          # if interval == "epoch"

    x of every logged scalar is the global optimizer step. ``lr/group<i>`` is the LR group ``i`` used
    for the logged step. The loss stays on the device between logging points: ``.item()`` (a host-device
    sync) happens only there and at the end of each epoch.

    Args:
        model: the model, already on ``device``.
        optimizer: its optimizer.
        scheduler: the LR scheduler, stepped per ``interval``.
        train_loader: training batches ``(x, y)``.
        val_loader: validation batches ``(x, y)``.
        max_epochs: epochs to train.
        device: where batches go (``non_blocking`` copies; pin the loader's memory for CUDA).
        interval: ``"epoch"`` or ``"step"``: when ``scheduler.step()`` is called.
        log_every_n_steps: optimizer steps between ``train/loss`` points.
        grad_clip: max global grad norm; 0 turns clipping off.
        logger: receives the scalars; ``None`` logs nothing.
        progress: show a progress bar per epoch (on terminals only).
        loss_fn: ``loss_fn(logits, targets)``, cross-entropy by default.

    Returns:
        The last epoch's ``train/loss`` (its mean), ``val/loss``, ``val/acc``, ``lr/group<i>``,
        and the ``epoch`` and ``step`` counts.

    Raises:
        TrainingError: the loss became NaN or infinite.
    """
    if interval not in ("epoch", "step"):
        raise ValueError(f"interval={interval!r} must be 'epoch' or 'step'")
    if len(train_loader) == 0:
        raise ValueError("the training loader is empty")
    step = 0
    metrics: dict[str, float] = {}
    for epoch in range(max_epochs):
        started = time.perf_counter()
        model.train()
        epoch_loss = torch.zeros((), device=device)
        window_loss = torch.zeros((), device=device)
        epoch_seen = window_steps = 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{max_epochs}", leave=False, disable=None if progress else True)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            lrs = [group["lr"] for group in optimizer.param_groups]
            optimizer.step()
            if interval == "step":
                scheduler.step()
            step += 1

            loss = loss.detach()
            epoch_loss += loss * len(y)
            epoch_seen += len(y)
            window_loss += loss
            window_steps += 1
            if step % log_every_n_steps == 0:
                train_loss = window_loss.item() / window_steps  # host-device sync: logging points only
                _check_finite(train_loss, "the training loss", epoch, step)
                lr_tags = {f"lr/group{i}": lr for i, lr in enumerate(lrs)}
                if logger is not None:
                    logger.log({"train/loss": train_loss, **lr_tags}, step)
                bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lrs[0]:.3g}", refresh=False)
                window_loss.zero_()
                window_steps = 0
        bar.close()

        train_loss = epoch_loss.item() / epoch_seen
        _check_finite(train_loss, "the epoch's mean training loss", epoch, step)
        val = evaluate(model, val_loader, device, loss_fn)
        _check_finite(val["val/loss"], "the validation loss", epoch, step)
        if logger is not None:
            logger.log({**val, "epoch": epoch + 1}, step)
        metrics = {
            "train/loss": train_loss,
            **val,
            **{f"lr/group{i}": lr for i, lr in enumerate(lrs)},
            "epoch": epoch + 1,
            "step": step,
        }
        if interval == "epoch":
            scheduler.step()
        log.info(
            "epoch %d/%d  train/loss %.4f  val/loss %.4f  val/acc %.4f  lr %.4g  (%.1fs)",
            epoch + 1, max_epochs, train_loss, val["val/loss"], val["val/acc"], lrs[0],
            time.perf_counter() - started,
        )
    return metrics
