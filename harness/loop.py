"""The training loop: plain torch objects and plain values in, final metrics out. No Hydra here."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from harness.checkpoint import Checkpointer, capture_rng, loader_rng_state, restore_rng
from harness.distributed import any_rank, is_distributed, sum_over_ranks
from harness.errors import Interrupted, TrainingError
from harness.signals import StopOnSignal

__all__ = ["fit", "evaluate", "autocast", "unwrap", "Logger", "Progress"]

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


AUTOCAST_DTYPES = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}
_NO_AUTOCAST = nullcontext()  # reusable, unlike torch.autocast
EPOCH_LINES_EVERY_S = 0.5  # shortest time between two writes of epoch log lines


def _weighted_losses(losses: list[torch.Tensor], sizes: list[int]) -> list[float]:
    """``loss * batch size`` for each kept per-batch loss, brought to the host with one stack and one copy
    (the only sync); empties both lists."""
    weighted = [value * n for value, n in zip(torch.stack(losses).tolist(), sizes)] if losses else []
    losses.clear()
    sizes.clear()
    return weighted


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision``: ``32`` (none), ``bf16`` or ``16-mixed`` (fp16)."""
    dtype = AUTOCAST_DTYPES[precision]
    # no torch.autocast for fp32: building a disabled one costs more than a tiny model's step
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else _NO_AUTOCAST


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under ``DistributedDataParallel`` and ``torch.compile`` wrappers (for state dicts)."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


class Logger(Protocol):
    """Anything with ``log(metrics, step)``, e.g. :class:`harness.tensorboard.TensorBoardLogger`."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...


@dataclass
class Progress:
    """Where training stands; with the model, optimizer, scheduler and RNG state, enough to go on exactly.

    ``batch`` is non-zero only in a checkpoint written mid-epoch (on SIGINT/SIGTERM): the loop then
    replays that epoch's shuffle and skips the batches already trained.
    """

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    batch: int = 0  # batches of the current epoch consumed so far
    epoch_loss: float = 0.0  # sum of loss * batch size over the current epoch's trained batches
    epoch_samples: int = 0  # samples in those batches
    window_loss: float = 0.0  # sum of loss * batch size since the last train/loss point
    window_samples: int = 0  # samples since the last train/loss point
    skipped: int = 0  # non-finite batches skipped so far (on_nonfinite="skip_batch")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    loss_fn: LossFn = F.cross_entropy,
    precision: str = "32",
) -> dict:
    """Mean loss and accuracy of ``model`` over ``loader`` (summed over all processes in a distributed run).

    Each batch's loss and count of correct predictions stay on the device; they come to the host
    together at the end (and every 1024 batches), where the sums go on in Python (float64 and int).

    Returns:
        ``{"val/loss": float, "val/acc": float}``.
    """
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    losses: list[torch.Tensor] = []
    hits: list[torch.Tensor] = []
    sizes: list[int] = []

    def add_up() -> None:
        nonlocal loss_sum, correct
        if hits:
            correct += int(torch.stack(hits).sum())
            hits.clear()
            for weighted in _weighted_losses(losses, sizes):
                loss_sum += weighted

    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(x)
            loss = loss_fn(logits, y)
        losses.append(loss)
        hits.append((logits.argmax(dim=1) == y).sum())
        sizes.append(y.shape[0])  # not len(y): Tensor.__len__ is Python, shape is not
        seen += y.shape[0]
        if len(losses) == 1024:
            add_up()  # bounded memory however long the validation set
    add_up()
    loss_sum, correct, seen = sum_over_ranks([loss_sum, correct, seen], device)
    if seen == 0:
        raise ValueError("the validation loader is empty")
    return {"val/loss": loss_sum / seen, "val/acc": correct / seen}


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
    accumulate_grad_batches: int = 1,
    checkpoint_every_n_epochs: int = 1,
    checkpoint_min_interval_s: float = 1.0,
    precision: str = "32",
    scaler: torch.amp.GradScaler | None = None,
    on_nonfinite: str = "stop",
    nonfinite_patience: int = 10,
    logger: Logger | None = None,
    checkpointer: Checkpointer | None = None,
    stop: StopOnSignal | None = None,
    progress: Progress | None = None,
    rng: Mapping[str, Any] | None = None,
    progress_bar: bool = True,
    loss_fn: LossFn = F.cross_entropy,
) -> dict[str, float]:
    """Trains ``model`` up to ``max_epochs`` epochs and returns the last epoch's metrics.

    The loop, in order::

        for epoch in range(progress.epoch, max_epochs):
            for x, y in train_loader (skipping the batches a mid-epoch checkpoint already trained):
                loss = loss_fn(model(x), y)                 # under autocast for bf16 / 16-mixed
                non-finite loss: stop, or skip the batch (on_nonfinite; its group then averages the rest)
                (loss / accumulate_grad_batches).backward()  # scaled by the GradScaler for 16-mixed
                every accumulate_grad_batches batches (and at the epoch's end):
                    clip grad norm to grad_clip (if > 0)
                    optimizer.step(); zero_grad
                    if the optimizer really stepped (fp16 skips steps with inf grads):
                        scheduler.step()                    # if interval == "step"
                        every log_every_n_steps steps: log train/loss (mean since the last point), lr/group<i>
                    stop requested (SIGINT/SIGTERM on any rank): save last.pt mid-epoch, raise Interrupted
            evaluate on val_loader; log train/epoch_loss, val/loss, val/acc, epoch at the epoch's last step
            scheduler.step()                                # if interval == "epoch"
            save last.pt every checkpoint_every_n_epochs epochs (at most once per checkpoint_min_interval_s)
            and at the end, and last.pt and best.pt whenever the monitored metric improves
            log the epoch's line (those of epochs under EPOCH_LINES_EVERY_S go out together, twice a second)

    x of every logged scalar is the global optimizer step. ``lr/group<i>`` is the LR group ``i`` used
    for the logged step. Losses stay on the device between logging points: ``.item()`` (a host-device
    sync) happens only there and at the end of each epoch, except with ``on_nonfinite="skip_batch"`` or
    fp16 (``16-mixed``), which must look at every step. In a distributed run (torchrun) the logged losses
    and metrics are over all processes, and only the process given a ``logger``/``checkpointer`` writes;
    the processes agree on a requested stop at the next logging point (or the epoch's end), where they
    sync anyway, so the stop is a collective that costs no extra sync per step.

    Args:
        model: the model, already on ``device`` (possibly wrapped in DDP or ``torch.compile``).
        optimizer: its optimizer.
        scheduler: the LR scheduler, stepped per ``interval``, only after real optimizer steps.
        train_loader: training batches ``(x, y)``; its ``generator`` drives the shuffle, and a
            ``sampler.set_epoch`` (``DistributedSampler``) is called every epoch.
        val_loader: validation batches ``(x, y)``.
        max_epochs: train until this many epochs are done.
        device: where batches go (``non_blocking`` copies; pin the loader's memory for CUDA).
        interval: ``"epoch"`` or ``"step"``: when ``scheduler.step()`` is called.
        log_every_n_steps: optimizer steps between ``train/loss`` points.
        grad_clip: max global grad norm; 0 turns clipping off.
        accumulate_grad_batches: batches whose gradients add up to one optimizer step.
        checkpoint_every_n_epochs: epochs between ``last.pt`` writes (0: only at the end, on a stop, and
            when the monitored metric improves, which always writes ``best.pt``).
        checkpoint_min_interval_s: a due ``last.pt`` write is skipped if the previous checkpoint was written
            less than this many seconds ago, so tiny epochs don't spend their time on checkpoints (0: every
            due epoch); the final epoch, a stop and a new best always write.
        precision: ``"32"``, ``"bf16"`` or ``"16-mixed"`` (autocast dtype of forward and loss).
        scaler: the ``GradScaler`` for ``16-mixed``; ``None`` for the others.
        on_nonfinite: ``"stop"`` raises on a NaN/inf loss; ``"skip_batch"`` drops that batch's update,
            counts and warns, and stops after ``nonfinite_patience`` such batches in a row.
        nonfinite_patience: see ``on_nonfinite``.
        logger: receives the scalars; ``None`` logs nothing.
        checkpointer: saves ``last.pt``/``best.pt``; ``None`` saves nothing.
        stop: a :class:`StopOnSignal` whose request ends training after the current step.
        progress: where to start, from a checkpoint; ``None`` starts at epoch 0.
        rng: the checkpoint's RNG states, restored where the interrupted run stood.
        progress_bar: show a progress bar per epoch (on terminals only).
        loss_fn: ``loss_fn(logits, targets)``, cross-entropy by default.

    Returns:
        The last epoch's ``train/loss`` (its mean), ``val/loss``, ``val/acc``, ``lr/group<i>``,
        and the ``epoch`` and ``step`` counts; empty if no epoch was left to train.

    Raises:
        TrainingError: the loss became NaN or infinite.
        Interrupted: ``stop`` was requested; ``last.pt`` holds the state after the last step.
    """
    if interval not in ("epoch", "step"):
        raise ValueError(f"interval={interval!r} must be 'epoch' or 'step'")
    if on_nonfinite not in ("stop", "skip_batch"):
        raise ValueError(f"on_nonfinite={on_nonfinite!r} must be 'stop' or 'skip_batch'")
    if len(train_loader) == 0:
        raise ValueError("the training loader is empty")
    p = progress if progress is not None else Progress()
    plain = unwrap(model)
    generator = train_loader.generator if train_loader.generator is not None else torch.Generator()
    sampler = getattr(train_loader, "sampler", None)
    scaler = scaler if scaler is not None else torch.amp.GradScaler(device.type, enabled=False)
    use_scaler, skip_nonfinite, distributed = scaler.is_enabled(), on_nonfinite == "skip_batch", is_distributed()
    last_good = "no checkpoint yet" if checkpointer is None or not checkpointer.last_path.exists() else (
        f"last good checkpoint: {checkpointer.last_path}"
    )

    def check_finite(value: float, what: str) -> None:
        if not math.isfinite(value):
            if checkpointer is not None:
                checkpointer.wait()  # the last good checkpoint is on disk before anyone looks for it
            raise TrainingError(
                f"{what} is {value} at epoch {p.epoch + 1}, step {p.step}; {last_good}. Lower optimizer.lr, "
                f"set trainer.grad_clip (e.g. 1.0) or trainer.on_nonfinite=skip_batch, or check the data"
            )

    def state() -> dict[str, Any]:
        return {
            "model": plain.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if use_scaler else {},
            "progress": dict(vars(p)),
            "rng": capture_rng(epoch_start_rng),
        }

    metrics: dict[str, float] = {}
    last_saved = -math.inf  # time.monotonic() of the last checkpoint
    lrs = [group["lr"] for group in optimizer.param_groups]
    amp = autocast(device, precision)  # entered once a step; it saves and restores the state each time
    # batches of an on-device loader are already where they go: skip two no-op copies a step
    batches_on_device = getattr(train_loader, "device", None) == device
    # one bar, restarted every epoch; tqdm turns itself off where stderr is not a terminal
    bar = tqdm(total=len(train_loader), leave=False, disable=None if progress_bar else True, dynamic_ncols=True)
    # Epoch lines wait and go out together, at most every EPOCH_LINES_EVERY_S: one log call costs a tenth
    # of a millisecond between training steps, several in a row far less each; longer epochs log at once.
    epoch_lines: list[tuple] = []
    lines_written = -math.inf  # time.monotonic() of the last write

    def write_epoch_lines() -> None:
        nonlocal lines_written
        if epoch_lines:
            if not bar.disable:
                bar.clear()  # the bar's line makes way for the log lines
            for line in epoch_lines:
                log.info("epoch %d/%d  train/loss %.4f  val/loss %.4f  val/acc %.4f  lr %.4g  (%.1fs)", *line)
            epoch_lines.clear()
            lines_written = time.monotonic()

    try:
        for epoch in range(p.epoch, max_epochs):
            started = time.perf_counter()
            model.train()
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle every epoch
            if rng is not None:
                generator.set_state(loader_rng_state(rng))
            epoch_start_rng = generator.get_state()
            n_batches = len(train_loader)
            batches: Iterator = iter(train_loader)
            if p.batch:
                batches = islice(batches, p.batch, None)  # a mid-epoch resume: the same shuffle, minus what's done
            if rng is not None:
                restore_rng(rng)  # after the skipped batches were drawn, exactly where the checkpoint stood
                rng = None
            # A step only appends its loss tensor to `losses` (no op, no sync). At logging points and at the
            # epoch's end one stack and one copy to the host bring them over, and the sums of loss * batch size
            # go on in Python floats (float64), batch by batch: the same additions wherever the flushes fall.
            losses: list[torch.Tensor] = []
            sizes: list[int] = []

            def add_up_losses() -> None:
                for weighted in _weighted_losses(losses, sizes):
                    p.epoch_loss += weighted
                    p.window_loss += weighted

            consecutive_nonfinite = 0
            accumulated = False  # gradients waiting for an optimizer step
            skipped_in_group = 0  # batches of the current accumulation group skipped for a non-finite loss
            if not bar.disable:  # restarted by hand: reset() would redraw, which costs more than a tiny epoch
                bar.set_description(f"epoch {epoch + 1}/{max_epochs}", refresh=False)
                bar.total, bar.n, bar.last_print_n = n_batches, p.batch, p.batch
                bar.start_t = bar.last_print_t = time.time()
            for x, y in batches:
                p.batch += 1
                if not bar.disable:
                    bar.update()
                if not batches_on_device:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with amp:
                    loss = loss_fn(model(x), y)
                group_size = 1  # batches in this batch's accumulation group
                if accumulate_grad_batches > 1:
                    group_start = (p.batch - 1) // accumulate_grad_batches * accumulate_grad_batches
                    group_size = min(accumulate_grad_batches, n_batches - group_start)  # the last may be short
                if skip_nonfinite and not torch.isfinite(loss).item():
                    p.skipped += 1
                    skipped_in_group += 1
                    consecutive_nonfinite += 1
                    log.warning("non-finite loss at epoch %d, batch %d: batch skipped (%d so far)",
                                epoch + 1, p.batch, p.skipped)
                    if consecutive_nonfinite >= nonfinite_patience:
                        check_finite(loss.item(), f"the loss of {consecutive_nonfinite} batches in a row")
                else:
                    consecutive_nonfinite = 0
                    scaled = loss / group_size if group_size > 1 else loss
                    (scaler.scale(scaled) if use_scaler else scaled).backward()
                    accumulated = True
                    n = y.shape[0]  # not len(y): Tensor.__len__ runs Python code
                    losses.append(loss.detach())
                    sizes.append(n)
                    if len(losses) == 1024:
                        add_up_losses()  # bounded memory however far apart the logging points are
                    p.epoch_samples += n
                    p.window_samples += n
                if p.batch % accumulate_grad_batches and p.batch < n_batches:
                    continue  # gradients add up until the group of batches is complete
                group_skipped, skipped_in_group = skipped_in_group, 0
                if not accumulated:
                    continue  # every batch of the group was skipped: nothing to step
                accumulated = False
                if group_skipped:  # the mean over the group's batches that trained, not over all of them
                    for param in model.parameters():
                        if param.grad is not None:
                            param.grad.mul_(group_size / (group_size - group_skipped))

                if grad_clip > 0:
                    if use_scaler:
                        scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                lrs = [group["lr"] for group in optimizer.param_groups]
                if use_scaler:
                    scale = scaler.get_scale()
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    if scaler.get_scale() < scale:
                        continue  # inf/NaN gradients: the scaler skipped this optimizer step, so the schedule waits
                else:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if interval == "step":
                    scheduler.step()
                p.step += 1
                logging_point = p.step % log_every_n_steps == 0
                if logging_point:
                    # host-device sync: logging points only; the mean over every process's batches
                    add_up_losses()
                    window_sum, window_samples = sum_over_ranks([p.window_loss, p.window_samples], device)
                    train_loss = window_sum / window_samples
                    check_finite(train_loss, "the training loss")
                    if logger is not None:
                        lr_values = {f"lr/group{i}": lr for i, lr in enumerate(lrs)}
                        logger.log({"train/loss": train_loss, **lr_values}, p.step)
                    if not bar.disable:
                        bar.set_postfix_str(f"loss={train_loss:.4f}, lr={lrs[0]:.3g}", refresh=False)
                    p.window_loss, p.window_samples = 0.0, 0
                # Ranks agree on a stop with a collective, so in a distributed run they ask only at logging
                # points and at the epoch's end, where the loss is synced anyway.
                if stop is not None and (
                    stop.requested if not distributed
                    else (logging_point or p.batch == n_batches) and any_rank(stop.requested, device)
                ):
                    add_up_losses()
                    check_finite(p.epoch_loss, "the epoch's training loss")  # never save a diverged model
                    saved = "nothing on this rank"
                    if checkpointer is not None:
                        saved = checkpointer.save(state())
                        checkpointer.wait()
                    raise Interrupted(
                        f"stopped by {stop.name or 'a signal to another rank'} at epoch {epoch + 1}, "
                        f"step {p.step}; saved {saved}",
                        stop.received or 15,
                    )

            add_up_losses()
            loss_sum, samples = sum_over_ranks([p.epoch_loss, p.epoch_samples], device)
            if samples == 0:
                raise TrainingError(f"every batch of epoch {epoch + 1} had a non-finite loss and was skipped")
            train_loss = loss_sum / samples
            check_finite(train_loss, "the epoch's mean training loss")
            val = evaluate(model, val_loader, device, loss_fn, precision)
            check_finite(val["val/loss"], "the validation loss")
            if logger is not None:
                logger.log({"train/epoch_loss": train_loss, **val, "epoch": epoch + 1}, p.step)
            metrics = {
                "train/loss": train_loss,
                **val,
                **{f"lr/group{i}": lr for i, lr in enumerate(lrs)},
                "epoch": epoch + 1,
                "step": p.step,
            }
            if interval == "epoch":
                scheduler.step()
            p.epoch, p.batch, p.epoch_loss, p.epoch_samples = epoch + 1, 0, 0.0, 0
            due = (checkpoint_every_n_epochs and p.epoch % checkpoint_every_n_epochs == 0
                   and time.monotonic() - last_saved >= checkpoint_min_interval_s)
            if checkpointer is not None and (due or p.epoch == max_epochs or checkpointer.improved(metrics)):
                epoch_start_rng = generator.get_state()  # the next epoch starts from here
                checkpointer.save({**state(), "metrics": metrics}, metrics)
                last_saved = time.monotonic()
                last_good = f"last good checkpoint: {checkpointer.last_path} (epoch {epoch + 1})"
            epoch_lines.append((epoch + 1, max_epochs, train_loss, val["val/loss"], val["val/acc"], lrs[0],
                                time.perf_counter() - started))
            if time.monotonic() - lines_written >= EPOCH_LINES_EVERY_S or p.epoch == max_epochs:
                write_epoch_lines()
    finally:
        write_epoch_lines()  # also when training fails or stops: every finished epoch has its line
        bar.close()
    return metrics
