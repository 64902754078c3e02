"""Model sources and a user's weights: parsing, building, the usual state-dict wrappers, and one
line for every way weights can be wrong."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from models import SourceError, WeightsError, create_model, fit_weights, list_models, parse_source, read_state_dict
from models._weights import load_weights
from pruning import prunable_units
from pruning import find_classifier, tree_stages


def test_registry_names_stay_registry_sources():
    for name in list_models():
        source = parse_source(name)
        assert source.kind == "registry" and source.text == name and source.slug == name


@pytest.mark.parametrize("text,kind,slug", [
    ("torchvision:resnet50", "torchvision", "torchvision-resnet50"),
    ("timm:resnet18", "timm", "timm-resnet18"),
    ("my_pkg.nets:build", "code", "my_pkg.nets-build"),
    ("path/to/nets.py:build", "code", "nets-build"),
])
def test_source_texts(text, kind, slug):
    source = parse_source(text)
    assert (source.kind, source.text, source.slug) == (kind, text, slug)


@pytest.mark.parametrize("text,match", [
    ("torchvision:resnet51", "close matches: torchvision:resnet50"),
    ("timm:resnet_18x", "timm has no classification model"),
    ("resnet", "unknown model 'resnet'"),
    ("", "must name a model"),
])
def test_unknown_sources_are_one_line(text, match):
    with pytest.raises(SourceError, match=match):
        parse_source(text)


def test_torchvision_and_timm_sources_build_with_their_defaults():
    tv = parse_source("torchvision:resnet18")
    model = tv.build(num_classes=5)
    assert model.fc.out_features == 5 and tv.data_defaults(model).input_size == 224
    assert tv.data_defaults(model).mean == (0.485, 0.456, 0.406)
    tm = parse_source("timm:resnet18")
    model = tm.build(num_classes=3, in_channels=1)
    assert model.get_classifier().out_features == 3 and model.conv1.in_channels == 1
    assert tm.data_defaults(model).crop_pct == model.pretrained_cfg["crop_pct"]


def test_a_user_entry_point_is_imported_and_called_with_kwargs(tmp_path):
    (tmp_path / "nets.py").write_text(
        "import torch.nn as nn\n"
        "def build(num_classes, width=4):\n"
        "    return nn.Sequential(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
        " nn.Linear(width, num_classes))\n"
        "def broken(num_classes):\n    raise ValueError('width must be even')\n")
    model = parse_source(f"{tmp_path / 'nets.py'}:build", {"width": 6}).build(num_classes=4)
    assert model[0].out_channels == 6 and model[3].out_features == 4
    with pytest.raises(SourceError, match="raised ValueError: width must be even"):
        parse_source(f"{tmp_path / 'nets.py'}:broken").build(num_classes=4)
    with pytest.raises(SourceError, match="has no function 'nope'"):
        parse_source(f"{tmp_path / 'nets.py'}:nope").build(num_classes=4)
    with pytest.raises(SourceError, match="does not exist"):
        parse_source(f"{tmp_path / 'missing.py'}:build").build(num_classes=4)
    with pytest.raises(SourceError, match="cannot import no_such_pkg_xyz"):
        parse_source("no_such_pkg_xyz.nets:build").build(num_classes=4)


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "model_state_dict", "dataparallel"])
def test_the_usual_weight_wrappers_load(tmp_path, wrap):
    model = torchvision.models.resnet18(num_classes=4)
    state = model.state_dict()
    payload = {"plain": state, "model": {"model": state, "epoch": 3, "args": {"lr": 0.1}},
               "state_dict": {"state_dict": state}, "model_state_dict": {"model_state_dict": state, "optimizer": {}},
               "dataparallel": {f"module.{k}": v for k, v in state.items()}}[wrap]
    torch.save(payload, tmp_path / "w.pt")
    fresh = torchvision.models.resnet18(num_classes=4)
    fit_weights(parse_source("torchvision:resnet18"), fresh, read_state_dict(tmp_path / "w.pt"), num_classes=4)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), state.values()))


def test_a_pickled_module_is_refused_with_how_to_save_a_state_dict(tmp_path):
    torch.save(torchvision.models.resnet18(num_classes=2), tmp_path / "whole.pt")
    with pytest.raises(WeightsError, match=r"whole pickled model.*torch.save\(model.state_dict\(\)") as info:
        read_state_dict(tmp_path / "whole.pt")
    assert "\x1b[" not in str(info.value)


def test_weights_that_do_not_fit_name_the_first_key_and_counts(tmp_path):
    state = torchvision.models.resnet18(num_classes=4).state_dict()
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"1 missing \(first: layer1.0.conv1.weight\); 1 unexpected"):
        load_weights(torchvision.models.resnet18(num_classes=4), state, model_text="torchvision:resnet18",
                     num_classes=4)


def test_a_class_count_mismatch_names_both_counts():
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    with pytest.raises(WeightsError, match=r"classifier \(fc\) has 1000 outputs but the dataset has 10 classes"):
        fit_weights(parse_source("torchvision:resnet18"), torchvision.models.resnet18(num_classes=10), state,
                    num_classes=10)


def test_registry_name_with_torchvision_weights_suggests_the_torchvision_source():
    state = torchvision.models.densenet121(num_classes=10).state_dict()
    with pytest.raises(WeightsError, match="use --model torchvision:densenet121"):
        fit_weights(parse_source("densenet121"), create_model("densenet121", num_classes=10), state, num_classes=10)


def test_the_classifier_is_found_without_the_registry():
    assert find_classifier(torchvision.models.squeezenet1_0(num_classes=7), torch.zeros(1, 3, 64, 64)) \
        == "classifier.1"
    assert find_classifier(torchvision.models.mobilenet_v3_small(num_classes=7), torch.zeros(1, 3, 64, 64)) \
        == "classifier.3"


def test_stages_come_from_the_module_tree():
    model = torchvision.models.resnet18(num_classes=4)
    stage = tree_stages(model)
    assert stage("layer1.0.conv1") == stage("layer1.1.conv1") == "layer1.conv1"
    dense = torchvision.models.densenet121(num_classes=4)
    assert tree_stages(dense)("features.denseblock2.denselayer5.conv2") == "features.denseblock2.conv2"
    units = prunable_units(dense, torch.zeros(1, 3, 32, 32))
    assert len({u.stage for u in units}) < len(units) / 4


def test_keep_layers_keep_their_outputs_and_unknown_ones_are_refused():
    from pruning import PlanError

    model = torchvision.models.resnet18(num_classes=4)
    x = torch.zeros(1, 3, 32, 32)
    names = {u.name for u in prunable_units(model, x, keep=("layer4.1.conv1",))}
    assert "layer4.1.conv1" not in names and "layer4.0.conv1" in names
    with pytest.raises(PlanError, match="--keep-layers names 'layer9'"):
        prunable_units(model, x, keep=("layer9",))


def test_a_model_that_returns_no_logits_is_refused():
    from pruning import PlanError

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            h = self.conv(x).mean((2, 3))
            return h, self.fc(h)

    with pytest.raises(PlanError, match="not class logits"):
        find_classifier(Pair(), torch.zeros(1, 3, 8, 8))
