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
from pruning import (CheckpointError, CheckpointMeta, Reference, apply_plan, load_checkpoint, load_pruned,
                     prunable_units, read_meta, save_pruned)
from tests.conftest import REPO

META = CheckpointMeta(model="resnet50", num_classes=10, in_channels=1, dataset="fashion-mnist",
                      reference=Reference(params=1, macs=2, size_mb=3.0, val_accuracy=0.9, test_accuracy=0.89),
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


@pytest.mark.parametrize("damage", ["no_metadata", "bad_history", "bad_classes", "bad_reference", "no_reference_field"])
def test_our_tag_with_a_malformed_body(pruned_resnet, tmp_path, damage):
    raw = torch.load(pruned_resnet[2], weights_only=True)
    if damage == "no_metadata":
        del raw["metadata"]
    elif damage == "bad_history":
        raw["history"] = [["layer1.0.conv1", True]]  # an entry without channel indices
    elif damage == "bad_classes":
        raw["metadata"]["num_classes"] = "many"
    elif damage == "bad_reference":
        raw["metadata"]["reference"] = {"params": "lots"}
    else:
        del raw["metadata"]["reference"]["size_mb"]
    _resealed(raw, tmp_path / f"{damage}.pt")
    with pytest.raises(CheckpointError) as info:
        load_pruned(tmp_path / f"{damage}.pt")
    assert "\n" not in str(info.value)
