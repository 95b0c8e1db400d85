"""Building runs from the real config: every option of every group, and every bad value's message."""

import pytest
import torch

from harness.build import build, resolve_device
from harness.errors import ConfigError, DataError
from tests.conftest import CONF, FAST, compose_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_its_options():
    assert options("model") == ["cnn", "mlp", "resnet18", "timm"]
    assert options("data") == ["cifar10", "diabetes", "digits", "digits_augmented", "fake", "fashion_mnist",
                               "imagefolder", "mnist"]
    assert options("task") == ["classification", "regression"]
    assert options("optimizer") == ["adamw", "sgd"]
    assert options("scheduler") == ["constant", "constant_warmup", "cosine_restarts", "cosine_warmup",
                                    "linear_warmup", "multistep", "onecycle", "step", "wsd"]


def train_one_batch(components) -> float:
    """One optimizer and scheduler step on one training batch; returns the loss."""
    model, optimizer = components.model, components.optimizer
    x, y = next(iter(components.train_loader))
    optimizer.zero_grad()
    loss = components.task.loss(model(x), y)
    loss.backward()
    optimizer.step()
    components.scheduler.step()
    return loss.item()


@pytest.mark.parametrize("group", ["model", "optimizer", "scheduler"])
def test_every_option_builds_and_trains_a_step(group):
    for option in options(group):
        tiny = ["model.name=test_resnet"] if option == "timm" else []  # one of timm's own test models
        components = build(compose_config([*FAST, f"{group}={option}", "data.batch_size=16", *tiny]))
        loss = train_one_batch(components)
        assert torch.isfinite(torch.tensor(loss)), option
        assert components.model(next(iter(components.val_loader))[0]).shape[1] == 10


@pytest.fixture
def data_overrides(mnist_root, cifar_root, imagefolder_root):
    return {
        "digits": [],
        "digits_augmented": [],
        "diabetes": ["task=regression"],
        "fake": ["data.train_size=20", "data.val_size=8", "data.test_size=8"],
        "mnist": [f"data.root={mnist_root}", "data.download=false", "data.num_workers=0"],
        "fashion_mnist": [f"data.root={mnist_root}", "data.download=false", "data.num_workers=0"],
        "cifar10": [f"data.root={cifar_root}", "data.download=false", "data.num_workers=0"],
        "imagefolder": [f"data.root={imagefolder_root}", "data.image_size=16", "data.num_workers=0"],
    }


def test_every_data_option_builds_and_sizes_the_model(data_overrides):
    expected = {
        "digits": ((1, 8, 8), 10),
        "digits_augmented": ((1, 8, 8), 10),
        "diabetes": ((10,), 1),
        "fake": ((3, 32, 32), 10),
        "mnist": ((1, 28, 28), 10),
        "fashion_mnist": ((1, 28, 28), 10),
        "cifar10": ((3, 32, 32), 10),
        "imagefolder": ((3, 16, 16), 3),
    }
    assert sorted(data_overrides) == options("data")
    for option, overrides in data_overrides.items():
        # every model on the digits; the sizing of the others is the same code, so two models each suffice
        models = options("model") if option == "digits" else ["mlp"] if option == "diabetes" else ["mlp", "cnn"]
        for model in models:
            tiny = ["model.name=test_resnet"] if model == "timm" else []
            cfg = compose_config([*FAST, f"data={option}", f"model={model}", "data.batch_size=4", *overrides, *tiny])
            components = build(cfg)
            x, y = next(iter(components.train_loader))
            shape, classes = expected[option]
            assert tuple(x.shape[1:]) == shape, option
            assert components.model(x).shape == (len(y), classes), (option, model)
            assert train_one_batch(components) > 0
            test = next(iter(components.test_loader))
            assert tuple(test[0].shape[1:]) == shape


def test_imagefolder_with_a_worker_process(imagefolder_root):
    cfg = compose_config([*FAST, "data=imagefolder", f"data.root={imagefolder_root}", "data.image_size=8"])
    components = build(cfg)  # num_workers=2, the option's default
    assert sum(len(y) for loader in (components.train_loader, components.val_loader, components.test_loader)
               for _, y in loader) == 18


def test_interval_step_counts_scheduler_steps_per_batch():
    components = build(compose_config([*FAST, "scheduler.interval=step", "data.batch_size=100"]))
    assert len(components.train_loader) == 11  # 1079 training digits / 100, rounded up
    assert components.scheduler.steps_per_epoch == 11


def test_missing_torchvision_data_set_says_where_and_how(tmp_path):
    cfg = compose_config([*FAST, "data=mnist", f"data.root={tmp_path}", "data.download=false"])
    with pytest.raises(DataError, match=f"MNIST not found under {tmp_path}; set data.download=true"):
        build(cfg)


def test_cuda_requested_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="trainer.device=cuda but CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_index_past_the_last_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"trainer.device=cuda:2 but this machine has 2 CUDA device\(s\)"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
