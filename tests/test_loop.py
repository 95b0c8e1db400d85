"""The loop on plain torch objects, no Hydra: order of calls, logging points, faults, the NaN policy."""

import logging
import math
import re

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from harness.errors import TrainingError
from harness.loggers import MemoryLogger
from harness.loop import TrainerConfig, TrainState, evaluate, fit
from harness.schedulers import ConstantScheduler, CosineWarmupScheduler, cosine_warmup_lr
from tests.conftest import nan_on_calls, toy_problem

CPU = torch.device("cpu")


def settings(**kwargs) -> TrainerConfig:
    return TrainerConfig(**{"progress_bar": False, **kwargs})


def accuracy() -> dict:
    from torchmetrics.classification import MulticlassAccuracy

    return {"acc": MulticlassAccuracy(num_classes=2, average="micro")}


def train(interval="epoch", epochs=5, log_every=1, **kwargs):
    kwargs.setdefault("metrics", accuracy())
    model, loader, val = toy_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    spe = len(loader) if interval == "step" else 1
    sched = CosineWarmupScheduler(opt, warmup_epochs=2, total_epochs=epochs, min_lr=0.01, steps_per_epoch=spe)
    logger = MemoryLogger()
    metrics = fit(model, opt, sched, loader, val, settings(max_epochs=epochs, log_every_n_steps=log_every),
                  device=CPU, interval=interval, logger=logger, **kwargs)
    return metrics, logger


def test_learns_and_returns_final_metrics():
    metrics, _ = train(epochs=8)
    assert metrics["val/acc"] > 0.9
    assert metrics["epoch"] == 8 and metrics["step"] == 8 * 6
    assert set(metrics) == {"train/loss", "val/loss", "val/acc", "lr/group0", "epoch", "step"}


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_logged_lr_is_the_lr_each_step_used(interval):
    epochs, steps_per_epoch = 5, 6
    _, logger = train(interval=interval, epochs=epochs)
    lrs = logger.series("lr/group0")
    assert [step for step, _ in lrs] == list(range(1, epochs * steps_per_epoch + 1))
    for step, lr in lrs:
        if interval == "epoch":
            expected = cosine_warmup_lr((step - 1) // steps_per_epoch + 1, 0.5, 2, epochs, 0.01)
        else:
            expected = cosine_warmup_lr(step, 0.5, 2 * steps_per_epoch, epochs * steps_per_epoch, 0.01)
        assert lr == pytest.approx(expected, abs=1e-12)
    assert lrs[-1][1] == pytest.approx(0.01)


def test_epoch_scalars_at_the_epochs_last_step_and_loss_every_n_steps():
    _, logger = train(epochs=3, log_every=4)
    assert [s for s, _ in logger.series("train/loss")] == [4, 8, 12, 16]
    assert logger.series("epoch") == [(6, 1), (12, 2), (18, 3)]
    assert [s for s, _ in logger.series("val/acc")] == [6, 12, 18]
    assert all(0 <= acc <= 1 for _, acc in logger.series("val/acc"))


def test_train_loss_is_the_mean_since_the_last_point():
    # With a zero LR nothing changes, so every window mean equals the fixed model's batch losses' mean.
    model, _, loader = toy_problem()  # the unshuffled loader, so the batches can be replayed
    opt = torch.optim.SGD(model.parameters(), lr=1e-30)
    logger = MemoryLogger()
    fit(model, opt, ConstantScheduler(opt), loader, loader, settings(max_epochs=1, log_every_n_steps=3), device=CPU,
        logger=logger)
    batches = [torch.nn.functional.cross_entropy(model(x), y).item() for x, y in loader]
    assert len(batches) == 6
    series = [v for _, v in logger.series("train/loss")]
    assert series == pytest.approx([sum(batches[:3]) / 3, sum(batches[3:]) / 3], rel=1e-5)


def test_epoch_loss_is_the_sample_weighted_mean_over_many_batches():
    n, batch_size = 2500 * 4 - 1, 4  # the last batch is short, so the mean must weight by batch size
    model, _, _ = toy_problem()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 2, 2, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=1e-30)  # nothing changes: the mean is the fixed model's
    metrics = fit(model, opt, ConstantScheduler(opt), loader, loader, settings(max_epochs=1, log_every_n_steps=10**6),
                  device=CPU)
    expected = torch.nn.functional.cross_entropy(model(x), y, reduction="sum").double().item() / n
    assert metrics["train/loss"] == pytest.approx(expected, rel=1e-6)


def test_epoch_loss_does_not_depend_on_where_the_logging_points_fall():
    means = {log_every: train(epochs=3, log_every=log_every)[1].series("train/epoch_loss")
             for log_every in (1, 4, 1000)}
    assert means[1] == means[4] == means[1000]


def test_same_seed_same_numbers():
    a, la = train(epochs=4)
    b, lb = train(epochs=4)
    assert a == b
    assert la.rows == lb.rows


def test_nan_loss_stops_with_a_clear_error():
    model, loader, val = toy_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    message = r"the training loss is nan at epoch 1, step 2. Lower optimizer.lr, set trainer.grad_clip"
    with pytest.raises(TrainingError, match=message):
        fit(model, opt, ConstantScheduler(opt), loader, val, settings(max_epochs=2, log_every_n_steps=2), device=CPU,
            loss_fn=nan_on_calls(1))


def test_nan_between_logging_points_is_caught_at_the_epoch_end():
    model, loader, val = toy_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.no_grad():
        model[1].weight.fill_(math.inf)
    with pytest.raises(TrainingError, match="epoch's mean training loss is nan at epoch 1, step 6"):
        fit(model, opt, ConstantScheduler(opt), loader, val, settings(max_epochs=1, log_every_n_steps=1000),
            device=CPU)


class Timeline(logging.Handler):
    """Epoch log lines and logged epoch rows, in the order they happen."""

    def __init__(self):
        super().__init__()
        self.events: list[str] = []

    def emit(self, record):
        if record.getMessage().startswith("epoch "):
            self.events.append(record.getMessage())

    def log(self, metrics, step):
        if "epoch" in metrics:
            self.events.append(f"row {metrics['epoch']}")


def test_each_epochs_line_is_printed_when_it_ends_with_its_time():
    timeline = Timeline()
    logger = logging.getLogger("harness.loop")
    logger.addHandler(timeline)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        model, loader, val = toy_problem()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        fit(model, opt, ConstantScheduler(opt), loader, val, settings(max_epochs=3), device=CPU, logger=timeline)
    finally:
        logger.removeHandler(timeline)
        logger.setLevel(level)
    assert [e.split()[0] + " " + e.split()[1] for e in timeline.events] == [
        "row 1", "epoch 1/3", "row 2", "epoch 2/3", "row 3", "epoch 3/3"]
    lines = [e for e in timeline.events if e.startswith("epoch")]
    assert all(re.search(r"\(\d+ ms\)$", line) for line in lines), lines  # short epochs: milliseconds


def test_grad_clip_bounds_the_update():
    model, loader, val = toy_problem(n=16, batch_size=16)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    fit(model, opt, ConstantScheduler(opt), loader, val, settings(max_epochs=1, grad_clip=1e-3), device=CPU)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert step.norm().item() == pytest.approx(1e-3, rel=1e-4)


def test_evaluate_counts_every_sample():
    model, _, val = toy_problem(n=37, batch_size=10)
    out = evaluate(model, val, CPU, metrics=accuracy())
    with torch.no_grad():
        x, y = val.dataset.tensors
        logits = model(x)
    assert out["val/acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert out["val/loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)


def test_bad_interval_is_refused():
    model, loader, val = toy_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="interval='batch' must be 'epoch' or 'step'"):
        fit(model, opt, ConstantScheduler(opt), loader, val, settings(max_epochs=1), device=CPU, interval="batch")


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_epochs=0), "max_epochs=0 must be an integer >= 1"),
    (dict(precision="fp8"), "precision='fp8' must be one of 32, bf16, 16-mixed"),
    (dict(grad_clip=float("nan")), "grad_clip=nan must be a number >= 0"),
    (dict(device="gpu"), "device='gpu' must be auto, cpu, cuda or cuda:N"),
])
def test_trainer_config_checks_its_values(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainerConfig(**kwargs)
    assert TrainerConfig(precision=32).precision == "32"  # as `trainer.precision=32` arrives from the command line


def test_skip_batch_drops_bad_updates_and_stops_if_they_keep_coming():
    model, loader, val = toy_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainState()
    metrics = fit(model, opt, ConstantScheduler(opt), loader, val, settings(max_epochs=1, on_nonfinite="skip_batch"),
                  device=CPU, state=state, loss_fn=nan_on_calls(2, 3, 5))
    assert state.skipped == 3
    assert metrics["step"] == 6 - 3
    assert all(torch.isfinite(p).all() for p in model.parameters())

    always_nan = lambda logits, y: torch.nn.functional.cross_entropy(logits, y) * float("nan")  # noqa: E731
    with pytest.raises(TrainingError, match="the loss of 4 batches in a row is nan"):
        fit(model, opt, ConstantScheduler(opt), loader, val,
            settings(max_epochs=1, on_nonfinite="skip_batch", nonfinite_patience=4), device=CPU, loss_fn=always_nan)


def test_skip_batch_with_accumulation_steps_every_group_that_has_gradients():
    model, loader, val = toy_problem()  # 6 batches: groups of 2 are (1,2) (3,4) (5,6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainState()
    metrics = fit(model, opt, ConstantScheduler(opt), loader, val,
                  settings(max_epochs=1, accumulate_grad_batches=2, on_nonfinite="skip_batch"), device=CPU,
                  state=state, loss_fn=nan_on_calls(4, 5, 6))
    # group (1,2): a step; group (3,4): batch 4 skipped, batch 3's gradients still step; group (5,6): nothing
    assert metrics["step"] == 2
    assert state.skipped == 3


def test_a_skipped_batch_leaves_its_group_the_mean_of_the_batches_that_trained():
    model, loader, val = toy_problem()  # 6 batches: groups of 2 are (1,2) (3,4) (5,6); batch 4 turns NaN
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, opt, ConstantScheduler(opt), loader, val,
        settings(max_epochs=1, accumulate_grad_batches=2, on_nonfinite="skip_batch"), device=CPU,
        loss_fn=nan_on_calls(4))

    reference, same_batches, _ = toy_problem()  # same seed: the same weights and the same shuffle
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    batches = list(same_batches)
    for group in [(0, 1), (2,), (4, 5)]:  # batch 4 (index 3) dropped: group two is batch 3 alone
        ref_opt.zero_grad()
        for i in group:
            x, y = batches[i]
            (torch.nn.functional.cross_entropy(reference(x), y) / len(group)).backward()
        ref_opt.step()
    for trained, expected in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(trained, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda():
    model, loader, val = toy_problem()
    model = model.cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = CosineWarmupScheduler(opt, 1, 5, 0.01)
    metrics = fit(model, opt, sched, loader, val, settings(max_epochs=5), device=torch.device("cuda"))
    assert metrics["val/acc"] > 0.8
