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
