"""The loop on plain torch objects, no Hydra: order of calls, logging points, faults."""

import logging
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from harness.errors import TrainingError
from harness.loop import evaluate, fit
from harness.schedulers import ConstantScheduler, CosineWarmupScheduler, cosine_warmup_lr


class MemoryLogger:
    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def log(self, metrics, step):
        self.rows.append((step, dict(metrics)))

    def series(self, tag):
        return [(step, m[tag]) for step, m in self.rows if tag in m]


def toy_problem(n=96, batch_size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 2, 2, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=g)
    val = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    return model, loader, val


def train(interval="epoch", epochs=5, log_every=1, **kwargs):
    model, loader, val = toy_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    spe = len(loader) if interval == "step" else 1
    sched = CosineWarmupScheduler(opt, warmup_epochs=2, total_epochs=epochs, min_lr=0.01, steps_per_epoch=spe)
    logger = MemoryLogger()
    metrics = fit(
        model, opt, sched, loader, val, max_epochs=epochs, device=torch.device("cpu"), interval=interval,
        log_every_n_steps=log_every, logger=logger, progress_bar=False, **kwargs,
    )
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
    fit(model, opt, ConstantScheduler(opt), loader, loader, max_epochs=1, device=torch.device("cpu"),
        log_every_n_steps=3, logger=logger, progress_bar=False)
    batches = [torch.nn.functional.cross_entropy(model(x), y).item() for x, y in loader]
    assert len(batches) == 6
    series = [v for _, v in logger.series("train/loss")]
    assert series == pytest.approx([sum(batches[:3]) / 3, sum(batches[3:]) / 3], rel=1e-5)


def test_epoch_loss_is_the_sample_weighted_mean_over_many_batches_between_logging_points():
    # 2500 batches with no logging point in between: the losses are added up along the way, in bounded memory
    n, batch_size = 2500 * 4 - 1, 4  # the last batch is short, so the mean must weight by batch size
    model, _, _ = toy_problem()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 2, 2, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=1e-30)  # nothing changes: the mean is the fixed model's
    metrics = fit(model, opt, ConstantScheduler(opt), loader, loader, max_epochs=1, device=torch.device("cpu"),
                  log_every_n_steps=10**6, progress_bar=False)
    expected = torch.nn.functional.cross_entropy(model(x), y, reduction="sum").double().item() / n
    assert metrics["train/loss"] == pytest.approx(expected, rel=1e-6)


def test_epoch_loss_does_not_depend_on_where_the_logging_points_fall():
    # the sums go batch by batch wherever the losses are brought over, so the epoch means agree to the bit
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

    def poisoned(logits, y):
        return torch.nn.functional.cross_entropy(logits, y) * float("nan")

    message = r"the training loss is nan at epoch 1, step 2; no checkpoint yet. Lower optimizer.lr"
    with pytest.raises(TrainingError, match=message):
        fit(model, opt, ConstantScheduler(opt), loader, val, max_epochs=2, device=torch.device("cpu"),
            log_every_n_steps=2, progress_bar=False, loss_fn=poisoned)


def test_nan_between_logging_points_is_caught_at_the_epoch_end():
    model, loader, val = toy_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.no_grad():
        model[1].weight.fill_(math.inf)
    with pytest.raises(TrainingError, match="epoch's mean training loss is nan at epoch 1, step 6"):
        fit(model, opt, ConstantScheduler(opt), loader, val, max_epochs=1, device=torch.device("cpu"),
            log_every_n_steps=1000, progress_bar=False)


class Timeline(logging.Handler):
    """Epoch log lines and TensorBoard epoch rows in the order they happen."""

    def __init__(self):
        super().__init__()
        self.events: list[str] = []

    def emit(self, record):
        if record.getMessage().startswith("epoch "):
            self.events.append("line " + record.getMessage().split()[1])

    def log(self, metrics, step):
        if "epoch" in metrics:
            self.events.append(f"epoch {metrics['epoch']} done")


@pytest.fixture
def timeline():
    handler = Timeline()
    logger = logging.getLogger("harness.loop")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.mark.parametrize("every_s", [0.0, 3600.0])
def test_epoch_lines_of_short_epochs_go_out_together(timeline, monkeypatch, every_s):
    monkeypatch.setattr("harness.loop.EPOCH_LINES_EVERY_S", every_s)
    model, loader, val = toy_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, opt, ConstantScheduler(opt), loader, val, max_epochs=4, device=torch.device("cpu"),
        logger=timeline, progress_bar=False)
    if every_s == 0:  # each epoch's line as it ends
        expected = [event for e in range(1, 5) for event in (f"epoch {e} done", f"line {e}/4")]
    else:  # the first at once, the rest at the end
        expected = ["epoch 1 done", "line 1/4", "epoch 2 done", "epoch 3 done", "epoch 4 done",
                    "line 2/4", "line 3/4", "line 4/4"]
    assert timeline.events == expected


def test_every_finished_epoch_has_its_line_when_training_fails(timeline, monkeypatch):
    monkeypatch.setattr("harness.loop.EPOCH_LINES_EVERY_S", 3600.0)
    model, loader, val = toy_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trained = 0

    def fails_in_epoch_4(logits, y):
        nonlocal trained
        trained += logits.requires_grad  # training batches only, not validation
        loss = torch.nn.functional.cross_entropy(logits, y)
        return loss * math.nan if trained > 3 * len(loader) else loss

    with pytest.raises(TrainingError, match="at epoch 4"):
        fit(model, opt, ConstantScheduler(opt), loader, val, max_epochs=6, device=torch.device("cpu"),
            logger=timeline, progress_bar=False, loss_fn=fails_in_epoch_4)
    assert [e for e in timeline.events if e.startswith("line")] == ["line 1/6", "line 2/6", "line 3/6"]


def test_grad_clip_bounds_the_update():
    model, loader, val = toy_problem(n=16, batch_size=16)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    fit(model, opt, ConstantScheduler(opt), loader, val, max_epochs=1, device=torch.device("cpu"),
        grad_clip=1e-3, progress_bar=False)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert step.norm().item() == pytest.approx(1e-3, rel=1e-4)


def test_evaluate_counts_every_sample():
    model, _, val = toy_problem(n=37, batch_size=10)
    out = evaluate(model, val, torch.device("cpu"))
    with torch.no_grad():
        x, y = val.dataset.tensors
        logits = model(x)
    assert out["val/acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert out["val/loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)


def test_evaluate_over_more_batches_than_it_holds_at_once():
    model, _, _ = toy_problem()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1100, 1, 2, 2, generator=g)
    y = torch.randint(0, 2, (1100,), generator=g)
    out = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=1), torch.device("cpu"))  # 1100 batches
    with torch.no_grad():
        logits = model(x)
    assert out["val/acc"] == (logits.argmax(1) == y).sum().item() / 1100
    assert out["val/loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


def test_bad_interval_is_refused():
    model, loader, val = toy_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="interval='batch' must be 'epoch' or 'step'"):
        fit(model, opt, ConstantScheduler(opt), loader, val, max_epochs=1, device=torch.device("cpu"),
            interval="batch")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda():
    model, loader, val = toy_problem()
    model = model.cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = CosineWarmupScheduler(opt, 1, 5, 0.01)
    metrics = fit(model, opt, sched, loader, val, max_epochs=5, device=torch.device("cuda"), progress_bar=False)
    assert metrics["val/acc"] > 0.8
