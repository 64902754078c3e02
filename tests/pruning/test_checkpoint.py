from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
import zipfile

import pytest
import torch

from models import create_model
from pruning import (BaselineFigures, CheckpointError, CheckpointMeta, apply_plan, load_checkpoint, load_pruned,
                     prunable_units, read_meta, save_pruned)
from tests.conftest import REPO

META = CheckpointMeta(model="resnet50", num_classes=10, in_channels=1, dataset="fashion-mnist",
                      baseline=BaselineFigures(params=1, macs=2, size_mb=3.0, val_accuracy=0.9, test_accuracy=0.89),
                      metrics={"val_accuracy": 0.5})


@pytest.fixture(scope="module")
def pruned_resnet(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 32, 32)
    units = prunable_units(model, x[:1])
    plan = {u.name: (i % 7) / 10 for i, u in enumerate(units)}
    pruned, record = apply_plan(model, plan, example_input=x[:1], round_to=4)
    path = tmp_path_factory.mktemp("ck") / "pruned.pt"
    save_pruned(path, pruned, record, META)
    return pruned.eval(), x, path, record


@pytest.mark.slow
def test_round_trip_in_a_fresh_process(pruned_resnet, tmp_path):
    pruned, x, path, _ = pruned_resnet
    torch.save(x, tmp_path / "x.pt")
    script = (f"import torch; from pruning import load_pruned; m = load_pruned({str(path)!r}); "
              f"x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True); "
              f"torch.save(m(x).detach(), {str(tmp_path / 'y.pt')!r})")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO)
    y = torch.load(tmp_path / "y.pt", weights_only=True)
    with torch.no_grad():
        assert torch.equal(y, pruned(x))


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_loads_in_deployment_contexts(pruned_resnet, context):
    pruned, x, path, _ = pruned_resnet
    with context():  # the usual place to load a model for inference
        model = load_pruned(path)
        y = model(x)
    with torch.no_grad():
        assert torch.equal(y, pruned(x))
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_loads_with_weights_only_and_keeps_metadata(pruned_resnet):
    _, _, path, record = pruned_resnet
    raw = torch.load(path, weights_only=True)  # plain tensors and values only
    assert raw["format"] == "automl-prune-checkpoint" and raw["history"] == record.history
    ck = load_checkpoint(path)
    assert ck.meta == META and ck.plan == record.plan
    assert set(raw["metadata"]["versions"]) == {"torch", "torchvision", "torch_pruning"}
    assert sum(p.numel() for p in ck.model.parameters()) < 23e6
    assert read_meta(path) == (META, ck.checksum)


def test_written_files_get_the_umask_mode(pruned_resnet, tmp_path):
    pruned, _, _, record = pruned_resnet
    old = os.umask(0o022)
    try:
        path = save_pruned(tmp_path / "a.pt", pruned, record, META)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by the other users of a shared folder
    assert os.listdir(tmp_path) == ["a.pt"]  # atomic: no temp file left behind


def test_bytes_changed_mid_file_fail_the_checksum(pruned_resnet, tmp_path):
    path = pruned_resnet[2]
    with zipfile.ZipFile(path) as z:  # find a weight tensor's bytes inside the archive
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2
    data[offset] ^= 0xFF
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its checksum"):
        load_pruned(bad)


def test_nan_weights_are_refused(pruned_resnet, tmp_path):
    pruned, _, _, record = pruned_resnet
    broken = create_model("lenet5", in_channels=1)
    with torch.no_grad():
        broken.fc3.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        save_pruned(tmp_path / "nan.pt", broken, None, CheckpointMeta(model="lenet5", num_classes=10, in_channels=1))
    raw = torch.load(pruned_resnet[2], weights_only=True)
    raw["state_dict"]["fc.weight"][0, 0] = float("inf")
    torch.save(raw, tmp_path / "inf.pt")
    with pytest.raises(CheckpointError):  # fails the checksum first; either way it never loads
        load_pruned(tmp_path / "inf.pt")


def test_truncated_file(pruned_resnet, tmp_path):
    data = pruned_resnet[2].read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_pruned(bad)


def test_garbage_file(tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_pruned(bad)


def test_foreign_checkpoint(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save(create_model("lenet5").state_dict(), foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_pruned(foreign)


def test_checkpoint_of_another_model(pruned_resnet):
    with pytest.raises(CheckpointError, match="is a 'resnet50' checkpoint, not 'vgg16'"):
        load_checkpoint(pruned_resnet[2], expect_model="vgg16")


def _resealed(raw: dict, path) -> None:
    """A payload edited and given a fresh checksum: what a careful forger would write."""
    from pruning._checkpoint import checksum

    raw["checksum"] = checksum(raw["state_dict"], raw["history"], raw["plan"], raw.get("metadata"))
    torch.save(raw, path)


def test_weights_that_do_not_match(pruned_resnet, tmp_path):
    raw = torch.load(pruned_resnet[2], weights_only=True)
    raw["history"] = []  # weights of a pruned model on an unpruned architecture
    _resealed(raw, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_pruned(tmp_path / "mismatch.pt")


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    _Payload.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "automl-prune-checkpoint", "version": 2, "x": _Payload()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused to load it"):
        load_pruned(path)
    assert not _Payload.marker.exists()


def test_no_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_pruned(tmp_path / "nothing.pt")


@pytest.mark.parametrize("damage", ["no_metadata", "bad_history", "bad_classes", "bad_baseline", "no_baseline_field"])
def test_our_tag_with_a_malformed_body(pruned_resnet, tmp_path, damage):
    raw = torch.load(pruned_resnet[2], weights_only=True)
    if damage == "no_metadata":
        del raw["metadata"]
    elif damage == "bad_history":
        raw["history"] = [["layer1.0.conv1", True]]  # an entry without channel indices
    elif damage == "bad_classes":
        raw["metadata"]["num_classes"] = "many"
    elif damage == "bad_baseline":
        raw["metadata"]["baseline"] = {"params": "lots"}
    else:
        del raw["metadata"]["baseline"]["size_mb"]
    _resealed(raw, tmp_path / f"{damage}.pt")
    with pytest.raises(CheckpointError) as info:
        load_pruned(tmp_path / f"{damage}.pt")
    assert "\n" not in str(info.value)


def test_a_checkpoint_that_names_its_baseline_figures_reference_still_loads(pruned_resnet, tmp_path):
    """Checkpoints written before the field was renamed keep ``metadata.reference``."""
    raw = torch.load(pruned_resnet[2], weights_only=True)
    raw["metadata"]["reference"] = raw["metadata"].pop("baseline")
    _resealed(raw, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").meta.baseline == load_checkpoint(pruned_resnet[2]).meta.baseline is not None


def _one_line(path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as info:
        load_pruned(path)
    assert "\n" not in str(info.value)


def test_a_forged_stride_is_refused_before_anything_is_allocated(pruned_resnet, tmp_path):
    """A stride-0 view claims 2^40 elements (4 TB) over a 4-byte storage: hashing it would
    allocate them. It is refused from its storage size, before the checksum."""
    raw = torch.load(pruned_resnet[2], weights_only=True)
    raw["state_dict"]["fc.bias"] = torch.zeros(1).expand(2 ** 40)
    torch.save(raw, tmp_path / "huge.pt")
    _one_line(tmp_path / "huge.pt", "not backed by its own bytes")
    raw["state_dict"]["fc.bias"] = torch.zeros(1).expand(10)  # small and resealed: refused the same way
    _resealed(raw, tmp_path / "small.pt")
    _one_line(tmp_path / "small.pt", "not backed by its own bytes")


def test_a_compressed_archive_is_refused(pruned_resnet, tmp_path):
    """torch.save stores records uncompressed; a deflated one could expand in memory (a zip bomb)."""
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(pruned_resnet[2]) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    _one_line(packed, "compressed records")


@pytest.mark.parametrize("classes, match", [(10 ** 7, "num_classes must be"),  # refused by its bound
                                            (50_000, "cannot have")])  # in bounds: by the weights' shapes
def test_a_forged_class_count_is_refused_before_the_model_is_built(pruned_resnet, tmp_path, classes, match):
    """A resealed checkpoint claiming 50,000 classes would build a 400 MB classifier; its weights
    have 10 rows, which the shapes checked on the meta device show first."""
    raw = torch.load(pruned_resnet[2], weights_only=True)
    raw["metadata"]["num_classes"] = classes
    _resealed(raw, tmp_path / "classes.pt")
    _one_line(tmp_path / "classes.pt", match)


def test_an_enlarged_tensor_is_refused_by_its_shape(pruned_resnet, tmp_path):
    raw = torch.load(pruned_resnet[2], weights_only=True)
    raw["state_dict"]["conv1.weight"] = torch.zeros(9999, 1, 3, 3)
    _resealed(raw, tmp_path / "wide.pt")
    _one_line(tmp_path / "wide.pt", "conv1.weight has shape")


PRE = dict(channels=1, input_size=32, pad=2, resize="none", mean=[0.3], std=[0.35], class_names=[str(i) for i in range(10)])


@pytest.mark.parametrize("edit, match", [
    (dict(std=[0.0]), "std must be positive"),
    (dict(channels=99), "channels must be 1 or 3"),
    (dict(input_size=-5), "input_size must be"),
    (dict(class_names=["one"]), "1 names for 10 outputs"),
    (dict(resize="rm -rf"), "resize must be one of"),
    (dict(mean=[float("nan")]), "mean.0. must be a finite number"),
    (dict(mean=[0.1, 0.2]), "mean must be 1 finite numbers"),
    (dict(channels=3, mean=[0.3] * 3, std=[0.3] * 3), "differs from the model's in_channels"),
])
def test_resealed_metadata_must_describe_the_model(pruned_resnet, tmp_path, edit, match):
    """The checksum proves the file is intact, not that it makes sense: the metadata is checked
    against the model it describes (a sidecar saying shape [batch, 1, -5, -5] is never written)."""
    raw = torch.load(pruned_resnet[2], weights_only=True)
    raw["metadata"]["preprocessing"] = {**PRE, **edit}
    _resealed(raw, tmp_path / "meta.pt")
    _one_line(tmp_path / "meta.pt", match)


def test_sane_preprocessing_still_loads(pruned_resnet, tmp_path):
    raw = torch.load(pruned_resnet[2], weights_only=True)
    raw["metadata"]["preprocessing"] = PRE
    _resealed(raw, tmp_path / "ok.pt")
    assert load_pruned(tmp_path / "ok.pt").preprocessing.input_size == 32
