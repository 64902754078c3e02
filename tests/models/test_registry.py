from __future__ import annotations

import pytest
import torch

from models import UnknownModelError, create_model, list_models
from pruning import prunable_units

# Parameters at 3 input channels and 10 classes (DESIGN.md), with the range the tests accept.
EXPECTED_PARAMS = {"lenet5": (0.055e6, 0.07e6), "vgg16": (14.5e6, 15.5e6),
                   "resnet50": (23.3e6, 23.7e6), "densenet121": (6.8e6, 7.1e6)}
EXPECTED_UNITS = {"lenet5": 4, "vgg16": 15, "resnet50": 37, "densenet121": 120}


def test_registry_lists_the_four_models():
    assert list_models() == ["lenet5", "vgg16", "resnet50", "densenet121"]


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shape_no_nan_and_graph(name, channels):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=channels).eval()
    x = torch.randn(2, channels, 32, 32)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()
    units = prunable_units(model, x[:1])
    assert len(units) == EXPECTED_UNITS[name]


@pytest.mark.parametrize("name", list_models())
def test_parameter_count(name):
    model = create_model(name, num_classes=10, in_channels=3)
    n = sum(p.numel() for p in model.parameters())
    low, high = EXPECTED_PARAMS[name]
    assert low <= n <= high, f"{name} has {n} parameters"


def test_unknown_model_names_the_known_ones():
    with pytest.raises(UnknownModelError, match="choose one of: lenet5, vgg16, resnet50, densenet121"):
        create_model("alexnet")


def test_num_classes_changes_only_the_classifier():
    model = create_model("resnet50", num_classes=100, in_channels=1)
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 100)
