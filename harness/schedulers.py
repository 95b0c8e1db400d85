"""Learning-rate schedules: pure functions of the step, with thin ``LRScheduler`` adapters.

Conventions shared by every schedule here (and relied on by the tests):

* ``e`` counts ``scheduler.step()`` calls so far, so ``e = 0`` is the first epoch (or step) trained,
  and ``t = e + 1`` is its 1-based number. The math is written in ``t``.
* The first epoch never trains at LR 0, the last one (``e = total - 1``) trains at exactly ``min_lr``,
  and the LR holds at ``min_lr`` from then on.
* Schedules are configured in epochs. With ``steps_per_epoch > 1`` (``interval: step`` in the config)
  the scheduler is stepped after every optimizer step and the epoch-valued settings are converted to
  steps, so ``warmup_epochs`` may be fractional.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["cosine_warmup_lr", "constant_lr", "CosineWarmupScheduler", "ConstantScheduler"]


def cosine_warmup_lr(t: float, base_lr: float, warmup: float, total: float, min_lr: float = 0.0) -> float:
    """The LR of the ``t``-th epoch (1-based) under linear warmup then cosine decay.

    Args:
        t: 1-based number of the epoch (or step) about to be trained, ``t >= 1``.
        base_lr: peak LR, reached on the last warmup epoch.
        warmup: warmup length, ``0 <= warmup < total``; may be fractional.
        total: schedule length; epoch ``t = total`` trains at ``min_lr``.
        min_lr: floor of the decay, ``0 <= min_lr <= base_lr``.

    Returns:
        ``base_lr * t / warmup`` while ``t <= warmup``; then
        ``min_lr + (base_lr - min_lr) * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2``,
        which is held at ``min_lr`` for every ``t >= total``.
    """
    if t <= warmup:
        return base_lr * t / warmup
    if t >= total:
        # The cosine turns back up after pi; the schedule must hold its floor instead.
        return min_lr
    progress = (t - warmup) / (total - warmup)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


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


class CosineWarmupScheduler(LRScheduler):
    """Linear warmup from ``base_lr / warmup`` to ``base_lr``, then cosine decay to ``min_lr``, then hold.

    Step it once per epoch after that epoch's ``optimizer.step()`` calls (or, with ``steps_per_epoch``
    set to the loader length, once per optimizer step). Each param group decays from its own base LR.

    Example, SGD ``lr=0.1``, ``warmup_epochs=5``, ``total_epochs=50``, ``min_lr=0.001``:
    epoch 0 trains at 0.02, epoch 4 at 0.1, epoch 25 at 0.0556742, epoch 49 and later at 0.001.

    Args:
        optimizer: the wrapped optimizer.
        warmup_epochs: epochs of linear warmup, ``0 <= warmup_epochs < total_epochs``; 0 means pure cosine.
        total_epochs: epochs until the LR reaches ``min_lr``; the last one trains at ``min_lr``.
        min_lr: final LR, a float or a list with one value per param group; at most each group's base LR.
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
        for i, (group, floor) in enumerate(zip(optimizer.param_groups, min_lrs)):
            base = group.get("initial_lr", group["lr"])
            if floor > base:
                raise ValueError(f"min_lr={floor:g} must be <= the base LR {base:g} of param group {i}")
        self.warmup_epochs = warmup_epochs
        self.total_epochs = total_epochs
        self.min_lrs = min_lrs
        self.steps_per_epoch = steps_per_epoch
        super().__init__(optimizer, last_epoch)

    def _get_closed_form_lr(self) -> list[float]:
        t = self.last_epoch + 1
        warmup = self.warmup_epochs * self.steps_per_epoch
        total = self.total_epochs * self.steps_per_epoch
        return [
            cosine_warmup_lr(t, base, warmup, total, floor)
            for base, floor in zip(self.base_lrs, self.min_lrs)
        ]

    def get_lr(self) -> list[float]:
        """The LR of each param group for step ``last_epoch``: the schedule is closed-form."""
        return self._get_closed_form_lr()


class ConstantScheduler(LRScheduler):
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
