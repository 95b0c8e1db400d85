"""The training loop: plain torch objects and plain values in, final metrics out. No Hydra here."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm

from harness.data import set_epoch
from harness.debug import check_limit
from harness.distributed import any_rank, is_distributed, sum_over_ranks
from harness.early_stopping import EarlyStopping
from harness.errors import Interrupted, TrainingError
from harness.loggers import Logger
from harness.tasks import metric_direction

__all__ = ["TrainerConfig", "TrainState", "fit", "evaluate", "monitorable", "monitor_direction", "checked_direction",
           "finished_reason"]

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SaveFn = Callable[["TrainState", bool], str]  # save(state, is_best) -> a description of what was written

Metrics = Mapping[str, Any]  # name -> torchmetrics.Metric: update(output, targets), compute(), reset()

AUTOCAST_DTYPES = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}


def monitorable(metrics: Metrics) -> list[str]:
    """The metrics every epoch produces, and so can pick ``best.pt``: ``train/loss``, ``val/loss``, ``val/<name>``."""
    return ["train/loss", "val/loss", *(f"val/{name}" for name in metrics)]


def monitor_direction(monitor: str, mode: str, metrics: Metrics) -> str:
    """``"max"`` or ``"min"``: ``mode`` itself, or with ``"auto"`` what ``monitor``'s metric says (see
    :func:`harness.tasks.metric_direction`; raises ``ValueError`` where it can't)."""
    return mode if mode != "auto" else metric_direction(monitor, metrics)


def _integer(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} must be one of {', '.join(allowed)}")


@dataclass
class TrainerConfig:
    """The loop's settings: the ``trainer`` config group, one field per key, checked when made.

    ``fit`` reads all of them but ``device``, ``compile``, ``num_threads``, ``test_at_end``, ``deterministic``,
    the ``limit_*``, ``overfit_batches`` and ``profile_steps``, which the entry layer uses to build the run
    (``fit`` takes the ``torch.device``, the loaders and the profiler themselves).
    """

    max_epochs: int = 30  # epochs to train
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    log_every_n_steps: int = 10  # optimizer steps between train/loss and lr points
    grad_clip: float = 0.0  # max global gradient norm; 0 = no clipping
    accumulate_grad_batches: int = 1  # batches whose gradients add up to one optimizer step
    precision: str = "32"  # 32, bf16 or 16-mixed
    compile: bool = False  # torch.compile the model
    progress_bar: bool = True  # a progress bar per epoch (terminals only)
    checkpoint_every_n_epochs: int = 1  # epochs between last.pt writes; 0 = only at the end, stops, new bests
    monitor: str = "val/loss"  # the metric that picks best.pt: train/loss, val/loss or val/<metric>
    monitor_mode: str = "auto"  # max or min: which way the monitored metric is better; auto: the metric says
    test_at_end: bool = True  # evaluate best.pt on the test split when training ends (the entry layer does)
    on_nonfinite: str = "stop"  # NaN/inf loss: stop, or skip_batch
    nonfinite_patience: int = 10  # with skip_batch: stop after this many non-finite batches in a row
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    early_stopping: EarlyStopping | dict = field(default_factory=EarlyStopping)  # off while its patience is 0
    save_top_k: int = 0  # also keep the k best checkpoints by monitor, named by epoch and value; 0 = only best.pt
    ema_decay: float = 0.0  # validate, test and keep as best.pt an EMA of the weights; 0 = off
    deterministic: bool = False  # torch.use_deterministic_algorithms and cuDNN's deterministic flags
    limit_train_batches: int | float = 1.0  # batches per epoch: a count (int) or a fraction (float); 1.0 = all
    limit_val_batches: int | float = 1.0  # the same for each validation
    limit_test_batches: int | float = 1.0  # the same for the final test
    overfit_batches: int = 0  # train and validate on the same first N training batches; 0 = off
    profile_steps: int = 0  # record a torch.profiler trace of this many steps into <run dir>/profile; 0 = off

    def __post_init__(self) -> None:
        self.precision = str(self.precision)  # `trainer.precision=32` arrives as an int
        for name, minimum in (("max_epochs", 1), ("log_every_n_steps", 1), ("accumulate_grad_batches", 1),
                              ("checkpoint_every_n_epochs", 0), ("nonfinite_patience", 1), ("num_threads", 0),
                              ("save_top_k", 0), ("overfit_batches", 0), ("profile_steps", 0)):
            _integer(name, getattr(self, name), minimum)
        decay = self.ema_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
            raise ValueError(f"ema_decay={decay!r} must be a number in [0, 1), e.g. 0.999; 0 = off")
        for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            check_limit(name, getattr(self, name))
        clip = self.grad_clip
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip >= 0 or math.isinf(clip):
            raise ValueError(f"grad_clip={clip!r} must be a number >= 0")
        _choice("precision", self.precision, tuple(AUTOCAST_DTYPES))
        if not isinstance(self.monitor, str) or not self.monitor.startswith(("train/", "val/")):
            raise ValueError(f"monitor={self.monitor!r} must be a train/ or val/ metric, e.g. val/loss (the test "
                             "split only reports, it never picks a checkpoint)")
        _choice("monitor_mode", self.monitor_mode, ("auto", "max", "min"))
        _choice("on_nonfinite", self.on_nonfinite, ("stop", "skip_batch"))
        for name in ("compile", "progress_bar", "test_at_end", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if self.num_threads > cores:
            raise ValueError(f"num_threads={self.num_threads} must be at most {cores}, the CPUs this process may use "
                             "(0 = torch's default)")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:") and self.device[5:].isdigit()
        ):
            raise ValueError(f"device={self.device!r} must be auto, cpu, cuda or cuda:N")
        if isinstance(self.early_stopping, Mapping):  # after monitor, whose value it takes by default
            self.early_stopping = EarlyStopping.from_config(self.early_stopping)
        elif not isinstance(self.early_stopping, EarlyStopping):
            raise ValueError(f"early_stopping={self.early_stopping!r} must be a group of settings, e.g. "
                             "trainer.early_stopping.patience=5")
        if self.early_stopping.monitor is None:
            self.early_stopping.monitor = self.monitor


@dataclass
class TrainState:
    """Where training stands; with the model, optimizer, scheduler and RNG states, enough to go on exactly.

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
    best: float | None = None  # best value of the monitored metric so far
    best_epoch: int = 0  # the epoch that reached it
    metrics: dict[str, float] = field(default_factory=dict)  # the last finished epoch's metrics
    top_k: list[list[float]] = field(default_factory=list)  # [value, epoch] of the save_top_k best, best first
    early_stop: dict[str, Any] = field(default_factory=dict)  # EarlyStopping's record: best, best_epoch, stale

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TrainState:
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})

    def improves(self, value: float, mode: str) -> bool:
        """Whether ``value`` of the monitored metric beats the best so far."""
        return self.best is None or (value > self.best if mode == "max" else value < self.best)

    def enters_top_k(self, value: float, mode: str, k: int) -> bool:
        """Records this epoch's ``value`` in ``top_k`` if it is among the ``k`` best so far; whether it is.
        Ties keep the earlier epoch."""
        if k == 0:
            return False
        ranked = sorted([*self.top_k, [value, self.epoch]], key=lambda entry: (-entry[0] if mode == "max" else
                                                                               entry[0], entry[1]))
        self.top_k = ranked[:k]
        return [value, self.epoch] in self.top_k


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    dtype = AUTOCAST_DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, loss_fn: LossFn = F.cross_entropy,
             metrics: Metrics | None = None, precision: str = "32", split: str = "val") -> dict[str, float]:
    """The mean loss and each metric of ``model`` over ``loader`` (over all processes in a distributed run).

    The loss sum and the metrics' states stay on the device until the end, where the loss and each metric
    come over to the host once (plus whatever input checks a metric makes per batch).

    Args:
        metrics: ``name -> torchmetrics.Metric`` on ``device``; each is reset, then updated with every
            batch's ``(model output, targets)``.
        split: the prefix of the names returned.

    Returns:
        ``{f"{split}/loss": float, f"{split}/<name>": float, ...}``.
    """
    model.eval()
    metrics = metrics or {}
    for metric in metrics.values():
        metric.reset()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, precision):
            output = model(x)
            loss = loss_fn(output, y)
        loss_sum += loss.double() * y.shape[0]
        for metric in metrics.values():
            metric.update(output.float(), y)
        seen += y.shape[0]
    loss_sum, seen = sum_over_ranks([loss_sum.item(), seen], device)
    if seen == 0:
        raise ValueError(f"the {split} loader is empty")
    return {f"{split}/loss": loss_sum / seen, **{f"{split}/{name}": float(m.compute()) for name, m in metrics.items()}}


def optimizer_step(model: nn.Module, optimizer: Optimizer, scaler: torch.amp.GradScaler, grad_clip: float) -> bool:
    """Clips, steps and zeroes the gradients; ``False`` when the fp16 scaler skipped the step (inf grads)."""
    if grad_clip > 0:
        scaler.unscale_(optimizer)  # a no-op without fp16
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if not scaler.is_enabled():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return True
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return scaler.get_scale() >= scale  # the scaler lowers its scale when it skips a step


class NonFinitePolicy:
    """``trainer.on_nonfinite``: ``stop`` raises on a NaN/inf loss (checked where the loss reaches the host
    anyway); ``skip_batch`` looks at every batch's loss (a host sync), drops non-finite ones and stops
    after ``patience`` in a row."""

    def __init__(self, mode: str, patience: int, state: TrainState) -> None:
        self.skip_batches, self.patience, self.state, self.in_a_row = mode == "skip_batch", patience, state, 0

    def check(self, value: float, what: str) -> None:
        """Raises :class:`TrainingError` if ``value`` (a loss on the host) is not finite."""
        if not math.isfinite(value):
            raise TrainingError(
                f"{what} is {value} at epoch {self.state.epoch + 1}, step {self.state.step}. Lower "
                f"optimizer.lr, set trainer.grad_clip (e.g. 1.0) or trainer.on_nonfinite=skip_batch, or check the data"
            )

    def skips(self, loss: torch.Tensor) -> bool:
        """With ``skip_batch``: whether this batch's loss is non-finite and the batch is to be skipped."""
        if not self.skip_batches:
            return False
        if torch.isfinite(loss).item():
            self.in_a_row = 0
            return False
        self.state.skipped += 1
        self.in_a_row += 1
        log.warning("non-finite loss at epoch %d, batch %d: batch skipped (%d so far)",
                    self.state.epoch + 1, self.state.batch, self.state.skipped)
        if self.in_a_row >= self.patience:
            self.check(loss.item(), f"the loss of {self.in_a_row} batches in a row")
        return True


def checked_direction(key: str, monitor: str, mode: str, metrics: Metrics) -> str:
    """``monitor``'s direction (see :func:`monitor_direction`), after checking that every epoch produces it
    (see :func:`monitorable`); ``key`` names the setting in the error."""
    if monitor not in monitorable(metrics):
        raise ValueError(f"{key}={monitor!r} is not a metric of this run; choose one of "
                         f"{', '.join(monitorable(metrics))}")
    return monitor_direction(monitor, mode, metrics)


def finished_reason(state: TrainState, config: TrainerConfig) -> str | None:
    """Why a run at ``state`` has nothing left to train (all its epochs, or early stopping), or ``None``."""
    if state.epoch >= config.max_epochs:
        return f"{state.epoch} epochs already trained (trainer.max_epochs={config.max_epochs})"
    reason = config.early_stopping.reason(state.early_stop)
    return f"stopped early at epoch {state.epoch}: {reason}" if reason else None


def _early_stop(cfg: TrainerConfig, state: TrainState, results: dict[str, float], direction: str) -> str | None:
    """Records the epoch for early stopping; why the run stops now, or ``None``."""
    rule = cfg.early_stopping
    if not rule.enabled:
        return None
    rule.update(state.early_stop, results[rule.monitor], state.epoch, direction)
    return rule.reason(state.early_stop)


def _stop_requested(stop, synced: bool, device: torch.device) -> bool:
    """Whether a stop was asked for. Under torchrun the ranks agree with a collective, so they ask only where
    they sync anyway (``synced``: a logging point or the epoch's last batch), and all stop at the same step."""
    if stop is None:
        return False
    if not is_distributed():
        return stop.requested
    return synced and any_rank(stop.requested, device)


def _scale_gradients(model: nn.Module, factor: float) -> None:
    for param in model.parameters():
        if param.grad is not None:
            param.grad.mul_(factor)


def _save_and_stop(state: TrainState, nonfinite: NonFinitePolicy, save: SaveFn | None, stop) -> None:
    """Saves the state mid-epoch (unless its loss diverged) and raises :class:`Interrupted`."""
    nonfinite.check(state.epoch_loss, "the epoch's training loss")  # never save a diverged model
    saved = save(state, False) if save is not None else "nothing on this rank"
    raise Interrupted(f"stopped by {stop.name or 'a signal to another rank'} at epoch {state.epoch + 1}, "
                      f"step {state.step}; saved {saved}", stop.received or 15)


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s" if seconds < 60 else (
        f"{int(seconds // 60)}m{seconds % 60:02.0f}s")


def fit(
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    train_loader,
    val_loader,
    config: TrainerConfig,
    *,
    device: torch.device,
    interval: str = "epoch",
    loss_fn: LossFn = F.cross_entropy,
    metrics: Metrics | None = None,
    scaler: torch.amp.GradScaler | None = None,
    logger: Logger | None = None,
    save: SaveFn | None = None,
    stop=None,
    state: TrainState | None = None,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    profiler: torch.profiler.profile | None = None,
) -> dict[str, float]:
    """Trains ``model`` up to ``config.max_epochs`` epochs and returns the last epoch's metrics.

    The loop, in order::

        for epoch in range(state.epoch, max_epochs):
            for x, y in train_loader (skipping the batches a mid-epoch checkpoint already trained):
                loss = loss_fn(model(x), y)                  # under autocast for bf16 / 16-mixed
                non-finite loss with on_nonfinite=skip_batch: skip the batch (its group averages the rest)
                (loss / batches in the accumulation group).backward()   # scaled by the GradScaler for fp16
                at the group's last batch: clip, optimizer.step(), zero_grad (optimizer_step)
                if the optimizer really stepped (fp16 skips steps with inf grads):
                    scheduler.step()                         # if interval == "step"
                    every log_every_n_steps steps: log train/loss (mean since the last point), lr/group<i>
                    stop requested (SIGINT/SIGTERM): save mid-epoch, raise Interrupted
                    ema.update_parameters(model)             # with trainer.ema_decay
                    profiler.step()                          # with trainer.profile_steps
            evaluate (the EMA if any) on val_loader: val/loss and val/<name> of every metric; log them,
                train/epoch_loss and epoch at the epoch's last step
            scheduler.step()                                 # if interval == "epoch"
            rank the epoch by config.monitor: a new best? among the save_top_k best?
            save every checkpoint_every_n_epochs epochs, at the end, on a new best or top-k entry, and on a stop
            log the epoch's line; stop here if early stopping says so

    x of every logged scalar is the global optimizer step; ``lr/group<i>`` is the LR the logged step used.
    Loss sums stay on the device between logging points, so a step has no host-device sync, except with
    ``on_nonfinite=skip_batch`` or fp16, which must look at every step. Under torchrun the logged losses and
    metrics are over all processes, and the processes agree on a stop where they sync anyway (logging
    points and the epoch's end); only the process given a ``logger``/``save`` writes.

    Args:
        model: the model, already on ``device`` (possibly wrapped in DDP or ``torch.compile``).
        optimizer, scheduler: its optimizer and LR scheduler (stepped only after real optimizer steps).
        train_loader: batches ``(x, y)``; its ``set_epoch`` (or its sampler's) is called every epoch.
        val_loader: validation batches ``(x, y)``.
        config: the loop's settings.
        device: where batches go.
        interval: ``"epoch"`` or ``"step"``: when ``scheduler.step()`` is called.
        loss_fn: ``loss_fn(model output, targets)``, cross-entropy by default.
        metrics: ``name -> torchmetrics.Metric`` on ``device``, computed on ``val_loader`` every epoch
            (:func:`evaluate`); none by default.
        scaler: the ``GradScaler`` for ``16-mixed``; ``None`` for the others.
        logger: receives the scalars (``log(metrics, step)``); ``None`` logs nothing.
        save: ``save(state, is_best)`` writes a checkpoint and says what it wrote; ``None`` saves nothing.
        stop: anything with ``requested`` and ``name`` (:class:`harness.signals.StopOnSignal`).
        state: where to start, from a checkpoint; updated as training goes. ``None`` starts at epoch 0.
        ema: an ``AveragedModel`` of ``model`` (:func:`harness.ema.build_ema`), updated after every
            optimizer step and validated instead of ``model``.
        profiler: a started ``torch.profiler.profile``, stepped after every optimizer step.

    Returns:
        The last epoch's ``train/loss`` (its mean), ``val/loss``, ``val/<name>`` of each metric,
        ``lr/group<i>``, ``epoch`` and ``step``; empty if no epoch was left to train (or early stopping
        had already stopped the run).

    Raises:
        ValueError: ``config.monitor`` (or the early stopping's) is not one of :func:`monitorable`, or its
            direction is unknown.
        TrainingError: the loss became NaN or infinite.
        Interrupted: ``stop`` was requested; ``save`` wrote the state after the last step.
    """
    if interval not in ("epoch", "step"):
        raise ValueError(f"interval={interval!r} must be 'epoch' or 'step'")
    if len(train_loader) == 0:
        raise ValueError("the training loader is empty")
    cfg, state, metrics = config, state if state is not None else TrainState(), metrics or {}
    mode = checked_direction("monitor", cfg.monitor, cfg.monitor_mode, metrics)
    stop_mode = checked_direction("early_stopping.monitor", cfg.early_stopping.monitor, cfg.early_stopping.mode,
                                  metrics)
    if (reason := finished_reason(state, cfg)) is not None:
        log.debug("nothing to train: %s", reason)
        return {}
    scaler = scaler if scaler is not None else torch.amp.GradScaler(device.type, enabled=False)
    nonfinite = NonFinitePolicy(cfg.on_nonfinite, cfg.nonfinite_patience, state)
    n_batches, results = len(train_loader), {}
    lrs = [group["lr"] for group in optimizer.param_groups]
    for epoch in range(state.epoch, cfg.max_epochs):
        started = time.perf_counter()
        model.train()
        set_epoch(train_loader, epoch)  # the epoch's shuffle, replayed exactly by a mid-epoch resume
        # [epoch sum, window sum] of loss * batch size, on the device: adding to it needs no host sync
        sums = torch.tensor([state.epoch_loss, state.window_loss], dtype=torch.float64, device=device)
        trained_in_group = skipped_in_group = 0
        with tqdm(total=n_batches, initial=state.batch, desc=f"epoch {epoch + 1}/{cfg.max_epochs}", leave=False,
                  disable=None if cfg.progress_bar else True, dynamic_ncols=True) as bar:  # None: terminals only
            for x, y in islice(train_loader, state.batch, None):
                state.batch += 1
                bar.update()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with _autocast(device, cfg.precision):
                    loss = loss_fn(model(x), y)
                group_start = (state.batch - 1) // cfg.accumulate_grad_batches * cfg.accumulate_grad_batches
                group_size = min(cfg.accumulate_grad_batches, n_batches - group_start)  # the last may be short
                if nonfinite.skips(loss):
                    skipped_in_group += 1
                else:
                    scaler.scale(loss / group_size).backward()
                    sums.add_(loss.detach(), alpha=y.shape[0])
                    state.epoch_samples += y.shape[0]
                    state.window_samples += y.shape[0]
                    trained_in_group += 1
                if state.batch < group_start + group_size:
                    continue  # gradients add up until the accumulation group is complete
                if trained_in_group and skipped_in_group:  # the mean over the group's batches that trained
                    _scale_gradients(model, group_size / trained_in_group)
                stepped = trained_in_group > 0 and optimizer_step(model, optimizer, scaler, cfg.grad_clip)
                trained_in_group = skipped_in_group = 0
                if not stepped:
                    continue  # nothing trained, or fp16 skipped the step: the schedule waits
                lrs = [group["lr"] for group in optimizer.param_groups]
                if interval == "step":
                    scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                if profiler is not None:
                    profiler.step()
                state.step += 1
                logging_point = state.step % cfg.log_every_n_steps == 0
                if logging_point:  # a host-device sync: the loss sums come over
                    state.epoch_loss, state.window_loss = sums.tolist()
                    window_sum, window_samples = sum_over_ranks([state.window_loss, state.window_samples], device)
                    train_loss = window_sum / window_samples
                    nonfinite.check(train_loss, "the training loss")
                    if logger is not None:
                        logger.log({"train/loss": train_loss, **{f"lr/group{i}": lr for i, lr in enumerate(lrs)}},
                                   state.step)
                    bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lrs[0]:.3g}", refresh=False)
                    sums[1] = 0.0  # a new window starts
                    state.window_loss, state.window_samples = 0.0, 0
                if _stop_requested(stop, logging_point or state.batch == n_batches, device):
                    state.epoch_loss, state.window_loss = sums.tolist()
                    _save_and_stop(state, nonfinite, save, stop)
        state.epoch_loss, state.window_loss = sums.tolist()
        loss_sum, samples = sum_over_ranks([state.epoch_loss, state.epoch_samples], device)
        if samples == 0:
            raise TrainingError(f"every batch of epoch {epoch + 1} had a non-finite loss and was skipped")
        train_loss = loss_sum / samples
        nonfinite.check(train_loss, "the epoch's mean training loss")
        val = evaluate(ema if ema is not None else model, val_loader, device, loss_fn, metrics, cfg.precision)
        nonfinite.check(val["val/loss"], "the validation loss")
        if logger is not None:
            logger.log({"train/epoch_loss": train_loss, **val, "epoch": epoch + 1}, state.step)
        results = {"train/loss": train_loss, **val, **{f"lr/group{i}": lr for i, lr in enumerate(lrs)},
                   "epoch": epoch + 1, "step": state.step}
        state.metrics = results
        if interval == "epoch":
            scheduler.step()
        state.epoch, state.batch, state.epoch_loss, state.epoch_samples = epoch + 1, 0, 0.0, 0
        if is_best := state.improves(results[cfg.monitor], mode):
            state.best, state.best_epoch = results[cfg.monitor], epoch + 1
        in_top_k = state.enters_top_k(results[cfg.monitor], mode, cfg.save_top_k)
        stop_reason = _early_stop(cfg, state, results, stop_mode)
        every = cfg.checkpoint_every_n_epochs
        due = (every and state.epoch % every == 0) or state.epoch == cfg.max_epochs or stop_reason
        if save is not None and (due or is_best or in_top_k):
            save(state, is_best)
        log.info("epoch %d/%d  train/loss %.4f  %s  lr %.4g  (%s)", epoch + 1, cfg.max_epochs, train_loss,
                 "  ".join(f"{k} {v:.4f}" for k, v in val.items()), lrs[0], _duration(time.perf_counter() - started))
        if stop_reason:
            log.info("early stopping at epoch %d: %s", epoch + 1, stop_reason)
            break
    return results
