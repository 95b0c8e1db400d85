"""Learning-rate schedules: pure functions of the step, with thin ``LRScheduler`` adapters.

Conventions shared by every schedule here (and relied on by the tests):

* ``e`` counts ``scheduler.step()`` calls so far, so ``e = 0`` is the first epoch (or step) trained,
  and ``t = e + 1`` is its 1-based number. The math is written in ``t``.
* Warmup rises linearly from ``warmup_start_lr`` (default 0) to the base LR, which the last warmup epoch
  reaches; the first epoch never trains at LR 0.
* Schedules that decay reach ``min_lr`` on the last epoch (``e = total - 1``) exactly, and hold it from
  then on.
* Schedules are configured in epochs. With ``steps_per_epoch > 1`` (``interval: step`` in the config)
  the scheduler is stepped after every optimizer step and the epoch-valued settings are converted to
  steps, so ``warmup_epochs`` may be fractional.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "DECAY_SHAPES",
    "warmup_decay_lr",
    "cosine_warmup_lr",
    "cosine_restarts_lr",
    "constant_lr",
    "ClosedFormScheduler",
    "WarmupScheduler",
    "CosineWarmupScheduler",
    "LinearWarmupScheduler",
    "ConstantWarmupScheduler",
    "WSDScheduler",
    "CosineRestartsScheduler",
    "ConstantScheduler",
]

# Decay from 1 (progress 0) to 0 (progress 1).
DECAY_SHAPES: dict[str, Callable[[float], float]] = {
    "cosine": lambda q: 0.5 * (1.0 + math.cos(math.pi * q)),
    "linear": lambda q: 1.0 - q,
    "sqrt": lambda q: 1.0 - math.sqrt(q),
    "constant": lambda q: 1.0,
}


def warmup_decay_lr(
    t: float,
    base_lr: float,
    warmup: float,
    total: float,
    min_lr: float = 0.0,
    shape: str = "cosine",
    decay_start: float | None = None,
    warmup_start_lr: float = 0.0,
) -> float:
    """The LR of the ``t``-th epoch (1-based): linear warmup, a hold, then a decay of the given shape.

    Args:
        t: 1-based number of the epoch (or step) about to be trained, ``t >= 1``.
        base_lr: peak LR, reached on the last warmup epoch.
        warmup: warmup length, ``0 <= warmup < total``; may be fractional.
        total: schedule length; epoch ``t = total`` trains at ``min_lr`` (unless ``shape`` is constant).
        min_lr: floor of the decay, ``0 <= min_lr <= base_lr``.
        shape: ``cosine``, ``linear``, ``sqrt`` (``1 - sqrt(progress)``) or ``constant`` (no decay).
        decay_start: where the decay begins, ``warmup <= decay_start < total``; defaults to ``warmup``.
            Between the two the LR holds at ``base_lr`` (warmup-stable-decay).
        warmup_start_lr: the LR warmup rises from (``t = 0``).

    Returns:
        ``warmup_start_lr + (base_lr - warmup_start_lr) * t / warmup`` while ``t <= warmup``; ``base_lr``
        until ``decay_start``; then ``min_lr + (base_lr - min_lr) * shape(progress)`` with
        ``progress = (t - decay_start) / (total - decay_start)``, held at ``min_lr`` for ``t >= total``.
    """
    if t <= warmup:
        return warmup_start_lr + (base_lr - warmup_start_lr) * t / warmup
    if shape == "constant":
        return base_lr
    if t >= total:
        # The cosine turns back up after pi; every schedule holds its floor instead.
        return min_lr
    start = warmup if decay_start is None else decay_start
    if t <= start:
        return base_lr
    return min_lr + (base_lr - min_lr) * DECAY_SHAPES[shape]((t - start) / (total - start))


def cosine_warmup_lr(t: float, base_lr: float, warmup: float, total: float, min_lr: float = 0.0) -> float:
    """Linear warmup then cosine decay to ``min_lr``:
    ``min_lr + (base_lr - min_lr) * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2`` after warmup."""
    return warmup_decay_lr(t, base_lr, warmup, total, min_lr, "cosine")


def cosine_restarts_lr(
    t: float,
    base_lr: float,
    warmup: float,
    total: float,
    min_lr: float = 0.0,
    first_cycle: float | None = None,
    cycle_mult: float = 1.0,
    cycle_decay: float = 1.0,
    warmup_start_lr: float = 0.0,
) -> float:
    """Linear warmup, then cosine cycles from a peak down to ``min_lr``, restarting at a lower peak.

    Cycle ``i`` lasts ``first_cycle * cycle_mult**i`` epochs and starts at ``base_lr * cycle_decay**i``
    (never below ``min_lr``). ``first_cycle`` defaults to the whole post-warmup length (one cycle). The
    last epoch trains at ``min_lr`` and the LR holds there after it.
    """
    if t <= warmup or t >= total:
        return warmup_decay_lr(t, base_lr, warmup, total, min_lr, "cosine", warmup_start_lr=warmup_start_lr)
    length = total - warmup if first_cycle is None else first_cycle
    start, peak = warmup, base_lr
    while t > start + length:  # find the cycle t is in
        start += length
        length *= cycle_mult
        peak = max(min_lr, peak * cycle_decay)
    end = min(start + length, total)
    return min_lr + (peak - min_lr) * DECAY_SHAPES["cosine"]((t - start) / (end - start))


def constant_lr(t: float, base_lr: float) -> float:
    """The LR of the ``t``-th epoch under no schedule: always ``base_lr``."""
    return base_lr


def _check_number(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a float, if it is a finite number >= 0 (> 0 when ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name}={value!r} must be {'>' if positive else '>='} 0")
    return float(value)


def _per_group(name: str, value: float | Sequence[float], n_groups: int) -> list[float]:
    """Expands a float, or checks a list of one value per param group (as ``ReduceLROnPlateau`` does)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n_groups:
            raise ValueError(
                f"{name} has {len(value)} values but the optimizer has {n_groups} param groups; "
                "give one value, or one per group"
            )
        return [_check_number(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return [_check_number(name, value)] * n_groups


class ClosedFormScheduler(LRScheduler):
    """Base of the schedules here: the LR is a pure function of the step count, so resuming takes only the
    position from a checkpoint and keeps the settings it was built with (the current config's: a longer
    ``trainer.max_epochs`` stretches the schedule)."""

    def load_state_dict(self, state_dict: dict) -> None:
        """Takes the position (``last_epoch``) from ``state_dict``; the settings stay, and the LRs follow."""
        self.last_epoch = state_dict["last_epoch"]
        self._step_count = state_dict.get("_step_count", self.last_epoch + 1)
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr


class WarmupScheduler(ClosedFormScheduler):
    """Base of the warmup schedules: checks the shared settings, converts epochs to scheduler steps,
    and evaluates :meth:`lr` (a pure function of ``t``) per param group. Closed-form throughout.

    Args:
        optimizer: the wrapped optimizer.
        warmup_epochs: epochs of linear warmup, ``0 <= warmup_epochs < total_epochs``; 0 means none.
        total_epochs: epochs the schedule lasts; its last epoch trains at ``min_lr``.
        min_lr: final LR, a float or a list with one value per param group; at most each group's base LR.
        warmup_start_lr: the LR warmup starts from (reached at ``t = 0``, never trained at).
        last_epoch: index of the last epoch seen, in scheduler steps; ``-1`` starts fresh. To resume
            after ``k`` steps pass ``k - 1`` (torch's convention) or, better, load a ``state_dict``.
        steps_per_epoch: scheduler steps per epoch; the epoch-valued settings are multiplied by it.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_epochs: float,
        total_epochs: float,
        min_lr: float | Sequence[float] = 0.0,
        warmup_start_lr: float = 0.0,
        last_epoch: int = -1,
        steps_per_epoch: int = 1,
    ) -> None:
        warmup_epochs = _check_number("warmup_epochs", warmup_epochs)
        total_epochs = _check_number("total_epochs", total_epochs, positive=True)
        if warmup_epochs >= total_epochs:
            raise ValueError(f"warmup_epochs={warmup_epochs:g} must be < total_epochs={total_epochs:g}")
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={steps_per_epoch!r} must be an integer >= 1")
        min_lrs = _per_group("min_lr", min_lr, len(optimizer.param_groups))
        warmup_start_lr = _check_number("warmup_start_lr", warmup_start_lr)
        for i, (group, floor) in enumerate(zip(optimizer.param_groups, min_lrs)):
            base = group.get("initial_lr", group["lr"])
            if floor > base:
                raise ValueError(f"min_lr={floor:g} must be <= the base LR {base:g} of param group {i}")
            if warmup_start_lr > base:
                raise ValueError(
                    f"warmup_start_lr={warmup_start_lr:g} must be <= the base LR {base:g} of param group {i}"
                )
        self.warmup_epochs = warmup_epochs
        self.total_epochs = total_epochs
        self.min_lrs = min_lrs
        self.warmup_start_lr = warmup_start_lr
        self.steps_per_epoch = steps_per_epoch
        super().__init__(optimizer, last_epoch)

    def lr(self, t: float, base_lr: float, min_lr: float, warmup: float, total: float) -> float:
        """The schedule: LR of step ``t`` (1-based) for one group, lengths already in scheduler steps."""
        raise NotImplementedError

    def _get_closed_form_lr(self) -> list[float]:
        t = self.last_epoch + 1
        warmup = self.warmup_epochs * self.steps_per_epoch
        total = self.total_epochs * self.steps_per_epoch
        return [self.lr(t, base, floor, warmup, total) for base, floor in zip(self.base_lrs, self.min_lrs)]

    def get_lr(self) -> list[float]:
        """The LR of each param group for step ``last_epoch``: the schedule is closed-form."""
        return self._get_closed_form_lr()


class CosineWarmupScheduler(WarmupScheduler):
    """Linear warmup from ``base_lr / warmup`` to ``base_lr``, then cosine decay to ``min_lr``, then hold.

    Step it once per epoch after that epoch's ``optimizer.step()`` calls (or, with ``steps_per_epoch``
    set to the loader length, once per optimizer step). Each param group decays from its own base LR.

    Example, SGD ``lr=0.1``, ``warmup_epochs=5``, ``total_epochs=50``, ``min_lr=0.001``:
    epoch 0 trains at 0.02, epoch 4 at 0.1, epoch 25 at 0.0556742, epoch 49 and later at 0.001.
    Arguments as for :class:`WarmupScheduler`.
    """

    def lr(self, t, base_lr, min_lr, warmup, total):
        return warmup_decay_lr(t, base_lr, warmup, total, min_lr, "cosine", warmup_start_lr=self.warmup_start_lr)


class LinearWarmupScheduler(WarmupScheduler):
    """Linear warmup, then linear decay to ``min_lr`` on the last epoch, then hold."""

    def lr(self, t, base_lr, min_lr, warmup, total):
        return warmup_decay_lr(t, base_lr, warmup, total, min_lr, "linear", warmup_start_lr=self.warmup_start_lr)


class ConstantWarmupScheduler(WarmupScheduler):
    """Linear warmup, then the base LR for good (``min_lr`` is not used)."""

    def lr(self, t, base_lr, min_lr, warmup, total):
        return warmup_decay_lr(t, base_lr, warmup, total, min_lr, "constant", warmup_start_lr=self.warmup_start_lr)


class WSDScheduler(WarmupScheduler):
    """Warmup-stable-decay: warmup, hold the base LR, then decay to ``min_lr`` over the last
    ``decay_fraction`` of the run (the schedule of recent LLM pre-training).

    Args:
        decay_fraction: share of ``total_epochs`` spent decaying, in (0, 1]; the decay must not start
            before warmup ends.
        decay_shape: ``linear``, ``cosine`` or ``sqrt`` (``1 - sqrt(progress)``).
        Other arguments as for :class:`WarmupScheduler`.
    """

    def __init__(self, optimizer: Optimizer, warmup_epochs: float, total_epochs: float,
                 min_lr: float | Sequence[float] = 0.0, decay_fraction: float = 0.2, decay_shape: str = "linear",
                 warmup_start_lr: float = 0.0, last_epoch: int = -1, steps_per_epoch: int = 1) -> None:
        if decay_shape not in ("linear", "cosine", "sqrt"):
            raise ValueError(f"decay_shape={decay_shape!r} must be linear, cosine or sqrt")
        decay_fraction = _check_number("decay_fraction", decay_fraction, positive=True)
        if decay_fraction > 1:
            raise ValueError(f"decay_fraction={decay_fraction:g} must be in (0, 1]")
        if isinstance(total_epochs, (int, float)) and isinstance(warmup_epochs, (int, float)) and (
            total_epochs * (1 - decay_fraction) < warmup_epochs
        ):
            raise ValueError(
                f"decay_fraction={decay_fraction:g} starts the decay at epoch {total_epochs * (1 - decay_fraction):g}, "
                f"inside the warmup (warmup_epochs={warmup_epochs:g}); lower one of them"
            )
        self.decay_fraction, self.decay_shape = decay_fraction, decay_shape
        super().__init__(optimizer, warmup_epochs, total_epochs, min_lr, warmup_start_lr, last_epoch, steps_per_epoch)

    def lr(self, t, base_lr, min_lr, warmup, total):
        decay_start = total * (1 - self.decay_fraction)
        return warmup_decay_lr(t, base_lr, warmup, total, min_lr, self.decay_shape, decay_start, self.warmup_start_lr)


class CosineRestartsScheduler(WarmupScheduler):
    """Linear warmup, then cosine cycles down to ``min_lr`` with restarts (SGDR).

    Args:
        cycles: number of cycles to fit after warmup (with ``cycle_mult``); or
        cycle_epochs: length of the first cycle in epochs (give one of the two).
        cycle_mult: each cycle is this many times longer than the one before (>= 1).
        cycle_decay: each restart's peak is this fraction of the one before, in (0, 1].
        Other arguments as for :class:`WarmupScheduler`.
    """

    def __init__(self, optimizer: Optimizer, warmup_epochs: float, total_epochs: float,
                 min_lr: float | Sequence[float] = 0.0, cycles: int | None = None, cycle_epochs: float | None = None,
                 cycle_mult: float = 1.0, cycle_decay: float = 1.0, warmup_start_lr: float = 0.0,
                 last_epoch: int = -1, steps_per_epoch: int = 1) -> None:
        if (cycles is None) == (cycle_epochs is None):
            raise ValueError(f"give one of cycles={cycles!r} and cycle_epochs={cycle_epochs!r}, not both or neither")
        if cycles is not None and (isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1):
            raise ValueError(f"cycles={cycles!r} must be an integer >= 1")
        if cycle_epochs is not None:
            _check_number("cycle_epochs", cycle_epochs, positive=True)
        if _check_number("cycle_mult", cycle_mult) < 1:
            raise ValueError(f"cycle_mult={cycle_mult!r} must be >= 1")
        if not 0 < _check_number("cycle_decay", cycle_decay) <= 1:
            raise ValueError(f"cycle_decay={cycle_decay!r} must be in (0, 1]")
        self.cycles, self.cycle_epochs = cycles, cycle_epochs
        self.cycle_mult, self.cycle_decay = cycle_mult, cycle_decay
        super().__init__(optimizer, warmup_epochs, total_epochs, min_lr, warmup_start_lr, last_epoch, steps_per_epoch)

    def lr(self, t, base_lr, min_lr, warmup, total):
        if self.cycle_epochs is not None:
            first = self.cycle_epochs * self.steps_per_epoch
        else:  # lengths L, L*m, L*m^2, ... that add up to the post-warmup span
            units = sum(self.cycle_mult**i for i in range(self.cycles))
            first = (total - warmup) / units
        return cosine_restarts_lr(t, base_lr, warmup, total, min_lr, first, self.cycle_mult, self.cycle_decay,
                                  self.warmup_start_lr)


class ConstantScheduler(ClosedFormScheduler):
    """No schedule: every param group trains at its base LR. For comparison runs.

    Takes the same ``steps_per_epoch`` as the other schedulers (and ignores it) so that any
    scheduler option can be swapped in with ``interval: epoch`` or ``step``.
    """

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1, steps_per_epoch: int = 1) -> None:
        self.steps_per_epoch = steps_per_epoch
        super().__init__(optimizer, last_epoch)

    def _get_closed_form_lr(self) -> list[float]:
        return [constant_lr(self.last_epoch + 1, base) for base in self.base_lrs]

    def get_lr(self) -> list[float]:
        """The base LR of each param group."""
        return self._get_closed_form_lr()
