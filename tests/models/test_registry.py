"""Every registered model is tested by being registered, against what its architecture has: the
classifier the engine must never prune, its prunable units, its parameters in millions (3 input
channels, 10 classes)."""
from __future__ import annotations

import pytest
import torch

from models import UnknownModelError, create_model, list_models, model_spec, spec_of
from pruning import PlanError, plan_keys, prunable_units


EXPECTED = {"lenet5": ("fc3", 4, 0.062), "vgg16": ("classifier.6", 15, 15.25), "resnet50": ("fc", 37, 23.5),
            "densenet121": ("classifier", 120, 6.96), "mobilenet_v2": ("classifier.1", 25, 2.24)}


def test_every_registered_model_has_its_expectations():
    assert set(EXPECTED) == set(list_models())


def test_registry_starts_with_the_four_product_models():
    assert list_models()[:4] == ["lenet5", "vgg16", "resnet50", "densenet121"]


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shape_no_nan_and_the_units_the_spec_names(name, channels):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=channels).eval()
    x = torch.randn(2, channels, 32, 32)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    units = prunable_units(model, x[:1])
    classifier_name, count, _ = EXPECTED[name]
    assert len(units) == count
    assert len({u.name for u in units}) == len(units)  # names are unique
    classifier = model.get_submodule(classifier_name)
    assert isinstance(classifier, torch.nn.Linear) and classifier.out_features == 10
    assert classifier_name not in {m for u in units for m in u.members}  # its outputs are never pruned


@pytest.mark.parametrize("name", list_models())
def test_parameter_count_matches_the_spec(name):
    n = sum(p.numel() for p in create_model(name, num_classes=10, in_channels=3).parameters())
    params_m = EXPECTED[name][2]
    assert abs(n / 1e6 - params_m) <= 0.03 * params_m, f"{name}: {n}"


@pytest.mark.parametrize("name", list_models())
def test_stages_cover_every_unit_or_are_refused(name):
    model = create_model(name, in_channels=3).eval()
    units = prunable_units(model, torch.zeros(1, 3, 32, 32))
    if model_spec(name).stage_of is None:
        with pytest.raises(PlanError, match="no stage grouping"):
            plan_keys(units, "stage")
    else:
        keys = plan_keys(units, "stage")
        assert 1 < len(keys) < len(units) and all(u.stage in keys for u in units)


def test_models_know_their_spec():
    assert spec_of(create_model("vgg16")).name == "vgg16"
    with pytest.raises(UnknownModelError, match="create_model"):
        spec_of(torch.nn.Linear(2, 2))


def test_unknown_model_names_the_known_ones():
    with pytest.raises(UnknownModelError, match="choose one of: lenet5, vgg16, resnet50, densenet121"):
        create_model("alexnet")


def test_num_classes_changes_only_the_classifier():
    model = create_model("resnet50", num_classes=100, in_channels=1)
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 100)
