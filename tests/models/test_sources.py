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


def _lenet_weights(path, **replace):
    state = create_model("lenet5", in_channels=1).state_dict()
    torch.save({**state, **replace}, path)
    return path


@pytest.mark.parametrize("kind, match", [("fifo", "is a named pipe"), ("devzero", "is a character device"),
                                         ("folder", "is a folder")])
def test_weights_that_are_no_regular_file_are_refused_before_a_byte_is_read(tmp_path, kind, match):
    """A FIFO or a link to /dev/zero used to hang the SHA-256 (a read that never ends)."""
    import os

    from models import file_sha256
    from tests.search.test_fuzz import no_hang

    path = tmp_path / "w.pt"
    {"fifo": lambda: os.mkfifo(path), "devzero": lambda: os.symlink("/dev/zero", path),
     "folder": lambda: path.mkdir()}[kind]()
    for read in (file_sha256, read_state_dict):
        with no_hang(20), pytest.raises(WeightsError, match=match):
            read(path)


def test_a_pickled_registry_model_is_told_to_save_its_state_dict(tmp_path):
    torch.save(create_model("lenet5", in_channels=1), tmp_path / "whole.pt")
    with pytest.raises(WeightsError, match=r"whole pickled model.*torch.save\(model.state_dict\(\)"):
        read_state_dict(tmp_path / "whole.pt")


@pytest.mark.parametrize("layout, match", [("meta", "fc1.weight is a meta tensor"),
                                           ("sparse", "fc1.weight is a sparse_coo tensor"),
                                           ("nan", "fc1.weight holds NaN or infinite values"),
                                           ("inf", "fc1.weight holds NaN or infinite values")])
def test_weights_of_other_layouts_or_non_finite_values_are_one_line(tmp_path, layout, match):
    like = create_model("lenet5", in_channels=1).state_dict()["fc1.weight"]
    odd = {"meta": lambda: torch.empty(like.shape, device="meta"), "sparse": lambda: like.to_sparse(),
           "nan": lambda: like.clone().index_fill_(0, torch.tensor([3]), float("nan")),
           "inf": lambda: like.clone().index_fill_(0, torch.tensor([3]), float("-inf"))}[layout]()
    with pytest.raises(WeightsError, match=match):
        read_state_dict(_lenet_weights(tmp_path / "w.pt", **{"fc1.weight": odd}))


def _record_offset(path, name_suffix: str) -> int:
    """Where the bytes of the archive record ending in ``name_suffix`` start in ``path``."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(name_suffix))
    raw = path.read_bytes()
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    return info.header_offset + 30 + name_len + extra_len


def test_flipped_bytes_inside_a_tensor_record_fail_the_crc(tmp_path):
    """Changed bytes inside a tensor load as garbage weights unless the archive's CRC is checked."""
    path = _lenet_weights(tmp_path / "w.pt")
    start = _record_offset(path, "data/0")
    raw = bytearray(path.read_bytes())
    for i in range(start + 8, start + 208):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="is damaged .*CRC"):
        read_state_dict(path)


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
    """One deflated record of 256 MB (a file of 250 KB): refused from the archive's directory, with
    the peak memory far below the record's size."""
    import resource
    import zipfile

    path = tmp_path / "bomb.pt"
    good = _lenet_weights(tmp_path / "w.pt")
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info) if not info.filename.endswith("data/0")
                         else bytes(256 << 20))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WeightsError, match="compressed records"):
        read_state_dict(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 64 << 10  # KB: nothing near 256 MB
