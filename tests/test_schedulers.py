import io
import math
import pickle
import warnings

import pytest
import torch

from harness.schedulers import ConstantScheduler, CosineWarmupScheduler, cosine_warmup_lr


def make_optimizer(*lrs: float) -> torch.optim.SGD:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)


def lrs_per_step(scheduler, n: int) -> list[list[float]]:
    """The LR of each group used by each of ``n`` epochs, stepping in the right order."""
    out = []
    for _ in range(n):
        out.append(scheduler.get_last_lr())
        scheduler.optimizer.step()
        scheduler.step()
    return out


# The reference table: SGD lr=0.1, warmup_epochs=5, total_epochs=50, min_lr=0.001.
REFERENCE = {0: 0.02, 1: 0.04, 4: 0.1, 5: 0.0998794, 25: 0.0556742, 48: 0.0011206, 49: 0.001, 50: 0.001, 80: 0.001}


@pytest.mark.parametrize("epoch, expected", sorted(REFERENCE.items()))
def test_reference_table(epoch, expected):
    sched = CosineWarmupScheduler(make_optimizer(0.1), warmup_epochs=5, total_epochs=50, min_lr=0.001)
    assert lrs_per_step(sched, epoch + 1)[epoch][0] == pytest.approx(expected, abs=5e-8)


def test_optimizer_lr_follows_the_schedule():
    opt = make_optimizer(0.1)
    sched = CosineWarmupScheduler(opt, warmup_epochs=5, total_epochs=50, min_lr=0.001)
    for e in range(60):
        assert opt.param_groups[0]["lr"] == pytest.approx(cosine_warmup_lr(e + 1, 0.1, 5, 50, 0.001), abs=1e-15)
        opt.step()
        sched.step()


@pytest.mark.parametrize(
    "t, args, expected",
    [
        # warmup=0: pure cosine from base_lr; the first epoch is already past the peak.
        (1, (1.0, 0, 4, 0.0), 0.5 * (1 + math.cos(math.pi / 4))),
        (4, (1.0, 0, 4, 0.0), 0.0),
        # warmup=1: the first epoch trains at base_lr exactly.
        (1, (0.5, 1, 3, 0.1), 0.5),
        (2, (0.5, 1, 3, 0.1), 0.3),
        (3, (0.5, 1, 3, 0.1), 0.1),
        # total = warmup + 1: the epoch after warmup is the last one, at min_lr.
        (3, (2.0, 3, 4, 0.5), 2.0),
        (4, (2.0, 3, 4, 0.5), 0.5),
        # fractional warmup (as interval=step produces): t=1 of a 2.5-step warmup.
        (1, (1.0, 2.5, 10, 0.0), 0.4),
        (3, (1.0, 2.5, 10, 0.0), 0.5 * (1 + math.cos(math.pi * 0.5 / 7.5))),
        # min_lr == base_lr: flat after warmup.
        (7, (0.3, 2, 10, 0.3), 0.3),
        # holds min_lr long after the end, where the naive cosine would turn back up.
        (1000, (1.0, 2, 10, 0.01), 0.01),
        (15, (1.0, 2, 10, 0.01), 0.01),
    ],
)
def test_pure_function_edge_cases(t, args, expected):
    assert cosine_warmup_lr(t, *args) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("warmup, total", [(0, 1), (0, 7), (3, 4), (5, 50), (2.5, 10), (0.5, 3)])
def test_schedule_properties(warmup, total):
    base, floor = 0.2, 0.002
    sched = CosineWarmupScheduler(make_optimizer(base), warmup, total, floor)
    lrs = [lr[0] for lr in lrs_per_step(sched, int(total) + 20)]
    assert lrs[0] > 0, "the first epoch never trains at LR 0"
    assert max(lrs) <= base + 1e-15
    assert min(lrs) >= floor - 1e-15
    assert lrs[int(total) - 1] == floor, "the last epoch trains at exactly min_lr"
    assert all(lr == floor for lr in lrs[int(total) - 1 :]), "holds min_lr after the end"
    peak = lrs.index(max(lrs))
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1 : peak + 1])), "warmup rises"
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :])), "decay never turns back up"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(warmup_epochs=10, total_epochs=10), "warmup_epochs=10 must be < total_epochs=10"),
        (dict(warmup_epochs=12, total_epochs=10), "warmup_epochs=12 must be < total_epochs=10"),
        (dict(warmup_epochs=-1, total_epochs=10), "warmup_epochs=-1 must be >= 0"),
        (dict(warmup_epochs=0, total_epochs=0), "total_epochs=0 must be > 0"),
        (dict(warmup_epochs=0, total_epochs=-5), "total_epochs=-5 must be > 0"),
        (dict(warmup_epochs=float("nan"), total_epochs=10), "warmup_epochs=nan must be a finite number"),
        (dict(warmup_epochs=1, total_epochs=float("inf")), "total_epochs=inf must be a finite number"),
        (dict(warmup_epochs="2", total_epochs=10), "warmup_epochs='2' must be a finite number"),
        (dict(warmup_epochs=1, total_epochs=10, min_lr=0.2), "min_lr=0.2 must be <= the base LR 0.1"),
        (dict(warmup_epochs=1, total_epochs=10, min_lr=-0.01), "min_lr=-0.01 must be >= 0"),
        (dict(warmup_epochs=1, total_epochs=10, steps_per_epoch=0), "steps_per_epoch=0 must be an integer >= 1"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError) as info:
        CosineWarmupScheduler(make_optimizer(0.1), **kwargs)
    assert message in str(info.value)


def test_several_param_groups_each_from_its_own_base_lr():
    opt = make_optimizer(0.1, 0.01)
    sched = CosineWarmupScheduler(opt, warmup_epochs=2, total_epochs=6, min_lr=[0.001, 0.0])
    for e, (lr0, lr1) in enumerate(lrs_per_step(sched, 8)):
        assert lr0 == pytest.approx(cosine_warmup_lr(e + 1, 0.1, 2, 6, 0.001), abs=1e-15)
        assert lr1 == pytest.approx(cosine_warmup_lr(e + 1, 0.01, 2, 6, 0.0), abs=1e-15)
    assert sched.get_last_lr() == [0.001, 0.0]


def test_a_float_min_lr_applies_to_every_group():
    sched = CosineWarmupScheduler(make_optimizer(0.1, 0.05), warmup_epochs=0, total_epochs=3, min_lr=0.01)
    assert lrs_per_step(sched, 4)[-1] == [0.01, 0.01]


def test_min_lr_list_checked_against_groups():
    with pytest.raises(ValueError, match="min_lr has 3 values but the optimizer has 2 param groups"):
        CosineWarmupScheduler(make_optimizer(0.1, 0.05), 1, 5, min_lr=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="min_lr=0.06 must be <= the base LR 0.05 of param group 1"):
        CosineWarmupScheduler(make_optimizer(0.1, 0.05), 1, 5, min_lr=[0.0, 0.06])


def test_step_interval_converts_epochs_to_steps():
    steps_per_epoch = 4
    sched = CosineWarmupScheduler(make_optimizer(0.1), 0.5, 3, 0.0, steps_per_epoch=steps_per_epoch)
    lrs = [lr[0] for lr in lrs_per_step(sched, 14)]
    # 0.5 epochs of warmup = 2 steps; 3 epochs = 12 steps; the 12th step (index 11) is at min_lr.
    assert lrs[:2] == pytest.approx([0.05, 0.1])
    assert lrs[2] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 1 / 10)))
    assert lrs[11:] == [0.0, 0.0, 0.0]


def test_state_dict_round_trip_resumes_exactly():
    opt = make_optimizer(0.1, 0.02)
    sched = CosineWarmupScheduler(opt, 3, 20, [0.001, 0.0])
    lrs_per_step(sched, 7)
    state = sched.state_dict()

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # plain data only: no classes in the state

    opt2 = make_optimizer(0.1, 0.02)
    sched2 = CosineWarmupScheduler(opt2, 3, 20, [0.001, 0.0])
    sched2.load_state_dict(loaded)
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert lrs_per_step(sched2, 15) == lrs_per_step(sched, 15)


def test_resume_via_last_epoch_matches_an_uninterrupted_run():
    k = 9  # steps done before the "restart"
    full = lrs_per_step(CosineWarmupScheduler(make_optimizer(0.1), 4, 30, 0.001), 30)
    opt = make_optimizer(0.1)
    for group in opt.param_groups:
        group["initial_lr"] = 0.1  # as a loaded optimizer state dict would carry it
    resumed = CosineWarmupScheduler(opt, 4, 30, 0.001, last_epoch=k - 1)
    assert lrs_per_step(resumed, 30 - k) == full[k:]


def test_closed_form_equals_recursive_path():
    sched = CosineWarmupScheduler(make_optimizer(0.1), 5, 50, 0.001)
    for e in range(60):
        sched.last_epoch = e
        assert sched._get_closed_form_lr() == [cosine_warmup_lr(e + 1, 0.1, 5, 50, 0.001)]


def test_pickles_and_keeps_going():
    sched = CosineWarmupScheduler(make_optimizer(0.1), 2, 10, 0.01)
    lrs_per_step(sched, 3)
    clone = pickle.loads(pickle.dumps(sched))
    assert clone.get_last_lr() == sched.get_last_lr()
    assert lrs_per_step(clone, 10) == lrs_per_step(sched, 10)


@pytest.mark.parametrize(
    "make", [lambda opt: CosineWarmupScheduler(opt, 2, 10, 0.01), lambda opt: ConstantScheduler(opt)]
)
def test_no_warnings_in_the_right_order(make):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrs_per_step(make(make_optimizer(0.1, 0.2)), 12)


def test_constant_scheduler_keeps_every_group_at_its_base_lr():
    sched = ConstantScheduler(make_optimizer(0.1, 0.3), steps_per_epoch=7)
    assert lrs_per_step(sched, 5) == [[0.1, 0.3]] * 5


# ---- the family: every schedule of ours through the same checks, plus a literal table each ----

from harness.schedulers import (  # noqa: E402
    ConstantWarmupScheduler,
    CosineRestartsScheduler,
    LinearWarmupScheduler,
    WSDScheduler,
    cosine_restarts_lr,
    warmup_decay_lr,
)

FAMILY = {
    "cosine_warmup": (CosineWarmupScheduler, {}),
    "cosine_warmup_from_floor": (CosineWarmupScheduler, {"warmup_start_lr": 0.05}),
    "linear_warmup": (LinearWarmupScheduler, {}),
    "constant_warmup": (ConstantWarmupScheduler, {}),
    "wsd_linear": (WSDScheduler, {"decay_fraction": 0.3}),
    "wsd_cosine": (WSDScheduler, {"decay_fraction": 0.5, "decay_shape": "cosine"}),
    "wsd_sqrt": (WSDScheduler, {"decay_fraction": 0.6, "decay_shape": "sqrt"}),
    "cosine_restarts": (CosineRestartsScheduler, {"cycles": 3, "cycle_decay": 0.6}),
    "cosine_restarts_mult": (CosineRestartsScheduler, {"cycles": 2, "cycle_mult": 2.0}),
    "cosine_restarts_epochs": (CosineRestartsScheduler, {"cycle_epochs": 4}),
}


@pytest.mark.parametrize("name", sorted(FAMILY))
@pytest.mark.parametrize("warmup, total", [(0, 12), (3, 12), (2.5, 20)])
def test_family_properties(name, warmup, total):
    cls, kwargs = FAMILY[name]
    base, floor = (0.2, 0.1), (0.002, 0.0)
    sched = cls(make_optimizer(*base), warmup, total, list(floor), **kwargs)
    lrs = lrs_per_step(sched, total + 10)
    last = total - 1
    for g in range(2):
        series = [lr[g] for lr in lrs]
        assert series[0] > 0, "the first epoch never trains at LR 0"
        assert max(series) <= base[g] + 1e-15
        if cls is ConstantWarmupScheduler:
            assert series[last:] == [base[g]] * (len(series) - last), "constant after warmup"
            continue
        assert min(series) >= floor[g] - 1e-15
        assert series[last] == floor[g], "the last epoch trains at exactly min_lr"
        assert all(lr == floor[g] for lr in series[last:]), "holds min_lr after the end"
        if warmup:
            ramp = series[: int(warmup)]
            assert all(a < b for a, b in zip(ramp, ramp[1:])), "warmup rises"


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_family_state_round_trip_and_step_interval(name):
    cls, kwargs = FAMILY[name]
    sched = cls(make_optimizer(0.1), 2, 10, 0.001, **kwargs)
    lrs_per_step(sched, 4)
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    buffer.seek(0)
    clone = cls(make_optimizer(0.1), 2, 10, 0.001, **kwargs)
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    assert lrs_per_step(clone, 12) == lrs_per_step(sched, 12)
    # interval=step: the same curve in steps, sampled at each epoch's first step
    per_epoch = [lr[0] for lr in lrs_per_step(cls(make_optimizer(0.1), 2, 10, 0.001, **kwargs), 10)]
    per_step = [lr[0] for lr in lrs_per_step(cls(make_optimizer(0.1), 2, 10, 0.001, steps_per_epoch=5, **kwargs), 50)]
    assert per_step[4::5] == pytest.approx(per_epoch, abs=1e-12)  # an epoch's last step = that epoch's value


@pytest.mark.parametrize(
    "lr_fn, t, expected",
    [
        # linear_warmup: base 1, warmup 2, total 6, min 0
        (lambda t: warmup_decay_lr(t, 1.0, 2, 6, 0.0, "linear"), 1, 0.5),
        (lambda t: warmup_decay_lr(t, 1.0, 2, 6, 0.0, "linear"), 3, 0.75),
        (lambda t: warmup_decay_lr(t, 1.0, 2, 6, 0.0, "linear"), 5, 0.25),
        (lambda t: warmup_decay_lr(t, 1.0, 2, 6, 0.0, "linear"), 6, 0.0),
        # constant_warmup from a floor: base 1, warmup 4, start 0.2
        (lambda t: warmup_decay_lr(t, 1.0, 4, 10, 0.0, "constant", warmup_start_lr=0.2), 1, 0.4),
        (lambda t: warmup_decay_lr(t, 1.0, 4, 10, 0.0, "constant", warmup_start_lr=0.2), 4, 1.0),
        (lambda t: warmup_decay_lr(t, 1.0, 4, 10, 0.0, "constant", warmup_start_lr=0.2), 40, 1.0),
        # cosine from a floor: base 1, warmup 2, start 0.5
        (lambda t: warmup_decay_lr(t, 1.0, 2, 10, 0.0, "cosine", warmup_start_lr=0.5), 1, 0.75),
        # wsd: base 1, min 0.1, warmup 2, total 10, decay over the last 30% (from t = 7)
        (lambda t: warmup_decay_lr(t, 1.0, 2, 10, 0.1, "linear", decay_start=7), 5, 1.0),
        (lambda t: warmup_decay_lr(t, 1.0, 2, 10, 0.1, "linear", decay_start=7), 7, 1.0),
        (lambda t: warmup_decay_lr(t, 1.0, 2, 10, 0.1, "linear", decay_start=7), 8, 0.7),
        (lambda t: warmup_decay_lr(t, 1.0, 2, 10, 0.1, "linear", decay_start=7), 9, 0.4),
        (lambda t: warmup_decay_lr(t, 1.0, 2, 10, 0.1, "sqrt", decay_start=7), 8, 0.1 + 0.9 * (1 - (1 / 3) ** 0.5)),
        (lambda t: warmup_decay_lr(t, 1.0, 2, 10, 0.1, "cosine", decay_start=7), 8, 0.1 + 0.9 * 0.75),
        (lambda t: warmup_decay_lr(t, 1.0, 2, 10, 0.1, "sqrt", decay_start=7), 10, 0.1),
        # cosine restarts: base 1, no warmup, total 8, two cycles of 4, peak halves
        (lambda t: cosine_restarts_lr(t, 1.0, 0, 8, 0.0, 4, 1.0, 0.5), 1, 0.5 * (1 + math.cos(math.pi / 4))),
        (lambda t: cosine_restarts_lr(t, 1.0, 0, 8, 0.0, 4, 1.0, 0.5), 4, 0.0),
        (lambda t: cosine_restarts_lr(t, 1.0, 0, 8, 0.0, 4, 1.0, 0.5), 5, 0.25 * (1 + math.cos(math.pi / 4))),
        (lambda t: cosine_restarts_lr(t, 1.0, 0, 8, 0.0, 4, 1.0, 0.5), 7, 0.25 * (1 + math.cos(3 * math.pi / 4))),
        (lambda t: cosine_restarts_lr(t, 1.0, 0, 8, 0.0, 4, 1.0, 0.5), 8, 0.0),
        # cycle_mult 2: warmup 1, total 7 -> cycles of 2 then 4 epochs
        (lambda t: cosine_restarts_lr(t, 1.0, 1, 7, 0.0, 2, 2.0, 1.0), 2, 0.5),
        (lambda t: cosine_restarts_lr(t, 1.0, 1, 7, 0.0, 2, 2.0, 1.0), 3, 0.0),
        (lambda t: cosine_restarts_lr(t, 1.0, 1, 7, 0.0, 2, 2.0, 1.0), 5, 0.5),
    ],
)
def test_family_tables(lr_fn, t, expected):
    assert lr_fn(t) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (WSDScheduler, {"decay_fraction": 0.0}, "decay_fraction=0.0 must be > 0"),
        (WSDScheduler, {"decay_fraction": 1.5}, "decay_fraction=1.5 must be in (0, 1]"),
        (WSDScheduler, {"decay_fraction": 0.9}, "starts the decay at epoch 1, inside the warmup"),
        (WSDScheduler, {"decay_shape": "exp"}, "decay_shape='exp' must be linear, cosine or sqrt"),
        (CosineRestartsScheduler, {}, "give one of cycles=None and cycle_epochs=None"),
        (CosineRestartsScheduler, {"cycles": 2, "cycle_epochs": 3}, "not both or neither"),
        (CosineRestartsScheduler, {"cycles": 0}, "cycles=0 must be an integer >= 1"),
        (CosineRestartsScheduler, {"cycles": 2, "cycle_mult": 0.5}, "cycle_mult=0.5 must be >= 1"),
        (CosineRestartsScheduler, {"cycles": 2, "cycle_decay": 0}, "cycle_decay=0 must be in (0, 1]"),
        (LinearWarmupScheduler, {"warmup_start_lr": 0.5}, "warmup_start_lr=0.5 must be <= the base LR 0.1"),
    ],
)
def test_family_bad_arguments(cls, kwargs, message):
    with pytest.raises(ValueError) as info:
        cls(make_optimizer(0.1), 2, 10, 0.0, **kwargs)
    assert message in str(info.value)
