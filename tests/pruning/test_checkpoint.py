from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch

from models import create_model
from pruning import CheckpointError, apply_plan, load_checkpoint, load_pruned, prunable_units, save_pruned
from tests.conftest import REPO


@pytest.fixture(scope="module")
def pruned_resnet(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 32, 32)
    units = prunable_units(model, x[:1])
    plan = {u.name: (i % 7) / 10 for i, u in enumerate(units)}
    pruned, record = apply_plan(model, plan, example_input=x[:1], round_to=4)
    path = tmp_path_factory.mktemp("ck") / "pruned.pt"
    save_pruned(path, pruned, record, {"model": "resnet50", "num_classes": 10, "in_channels": 1,
                                       "dataset": "fashion-mnist", "val_accuracy": 0.5})
    return pruned.eval(), x, path, record


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


def test_loads_with_weights_only_and_keeps_metadata(pruned_resnet):
    _, _, path, record = pruned_resnet
    raw = torch.load(path, weights_only=True)  # plain tensors and values only
    assert raw["format"] == "automl-prune-checkpoint" and raw["history"] == record.history
    ck = load_checkpoint(path)
    assert ck.metadata["dataset"] == "fashion-mnist" and ck.metadata["plan"] == record.plan
    assert set(ck.metadata["versions"]) == {"torch", "torchvision", "torch_pruning"}
    assert sum(p.numel() for p in ck.model.parameters()) < 23e6


def test_write_is_atomic_and_leaves_no_temp_files(pruned_resnet, tmp_path):
    pruned, _, _, record = pruned_resnet
    path = save_pruned(tmp_path / "a.pt", pruned, record, {"model": "resnet50", "num_classes": 10, "in_channels": 1})
    assert os.listdir(tmp_path) == ["a.pt"] and path.stat().st_size > 1000


def test_missing_build_arguments_are_refused(pruned_resnet, tmp_path):
    pruned, _, _, record = pruned_resnet
    with pytest.raises(CheckpointError, match="num_classes"):
        save_pruned(tmp_path / "b.pt", pruned, record, {"model": "resnet50", "in_channels": 1})


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


def test_weights_that_do_not_match(pruned_resnet, tmp_path):
    raw = torch.load(pruned_resnet[2], weights_only=True)
    raw["history"] = []  # weights of a pruned model on an unpruned architecture
    path = tmp_path / "mismatch.pt"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_pruned(path)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    _Payload.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "automl-prune-checkpoint", "version": 1, "x": _Payload()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused to load it"):
        load_pruned(path)
    assert not _Payload.marker.exists()


def test_no_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_pruned(tmp_path / "nothing.pt")


@pytest.mark.parametrize("damage", ["no_metadata", "bad_history", "bad_classes"])
def test_our_tag_with_a_malformed_body(pruned_resnet, tmp_path, damage):
    raw = torch.load(pruned_resnet[2], weights_only=True)
    if damage == "no_metadata":
        del raw["metadata"]
    elif damage == "bad_history":
        raw["history"] = [["layer1.0.conv1", True]]  # an entry without channel indices
    else:
        raw["metadata"]["num_classes"] = "many"
    path = tmp_path / f"{damage}.pt"
    torch.save(raw, path)
    with pytest.raises(CheckpointError):
        load_pruned(path)
