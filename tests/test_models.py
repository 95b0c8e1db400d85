import functools
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from harness.errors import ConfigError
from harness.models import MLP, SmallCNN, count_parameters, resnet18, timm_model

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY_TIMM = "test_resnet"  # one of timm's own tiny test models: ~0.4M parameters, builds in milliseconds


@pytest.mark.parametrize("make", [MLP, SmallCNN, resnet18])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 96, 80), (2, 1, 1)])
def test_models_size_themselves_from_the_data(make, shape):
    if make is resnet18 and shape == (3, 96, 80):
        shape = (3, 96, 96)  # the ImageNet stem needs at least 32 px; keep this case cheap but real
    model = make(input_shape=shape, num_classes=7)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)


def test_widths_are_configurable():
    assert count_parameters(MLP((1, 8, 8), 10, hidden=[32, 16])) == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert count_parameters(SmallCNN((1, 8, 8), 10, channels=[4])) == 1 * 4 * 9 + 2 * 4 + 4 * 10 + 10


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden=[]), r"hidden=\[\] must be a non-empty list"),
    (dict(hidden=[8, -1]), r"hidden=\[8, -1\] must be"),
    (dict(dropout=-0.5), r"dropout=-0.5 must be in \[0, 1\)"),
])
def test_bad_model_knobs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLP((1, 8, 8), 10, **kwargs)


def test_mlp_takes_tabular_inputs():
    model = MLP((10,), 1)
    assert model(torch.randn(4, 10)).shape == (4, 1)


@pytest.mark.parametrize("make", [
    SmallCNN,
    resnet18,
    functools.partial(timm_model, name=TINY_TIMM),
])
def test_image_models_refuse_tabular_inputs(make):
    with pytest.raises(ValueError, match=r"^input_shape=\(10,\): .*\(channels, height, width\).*model=mlp"):
        make(input_shape=(10,), num_classes=2)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 16, 16)])
def test_timm_model_sizes_itself_from_the_data_and_trains(shape):
    torch.manual_seed(0)
    model = timm_model(input_shape=shape, num_classes=10, name=TINY_TIMM)
    x, y = torch.randn(4, *shape), torch.randint(0, 10, (4,))
    assert model(x).shape == (4, 10)
    assert next(p for p in model.parameters() if p.dim() == 4).shape[1] == shape[0]  # the stem's in_chans

    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_unknown_timm_name_is_one_clear_line():
    with pytest.raises(ValueError, match=r"^name='no_such_net' is not a timm model; .*timm\.list_models") as info:
        timm_model(input_shape=(3, 32, 32), num_classes=10, name="no_such_net")
    assert "\n" not in str(info.value)


def test_timm_model_without_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ConfigError, match=r'^model=timm needs the timm package: pip install "harness\[timm\]"$'):
        timm_model(input_shape=(3, 32, 32), num_classes=10, name=TINY_TIMM)


def test_timm_yaml_builds_through_hydra():
    node = OmegaConf.load(CONF / "model" / "timm.yaml")
    assert node.name == "resnet18" and node.pretrained is False
    node.name = TINY_TIMM
    build = instantiate(node)
    assert isinstance(build, functools.partial)
    model = build(input_shape=(1, 16, 16), num_classes=3)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 3)
