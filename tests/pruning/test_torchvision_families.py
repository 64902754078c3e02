"""Any architecture Torch-Pruning can trace: one member of each torchvision CNN family goes through
unit discovery, one plan, a forward pass of the smaller model and a checkpoint round trip. Families
Torch-Pruning cannot trace are refused with one line (docs/usage.md, the families table)."""
from __future__ import annotations

import pytest
import torch

from models import parse_source
from pruning import (CheckpointMeta, PlanError, Preprocessing, apply_plan, load_checkpoint, measure, prunable_safely,
                     save_pruned)
from search.trial import safe_units
from tests.conftest import TINY_LENET

# (arch, input side): the smallest side each family is cheap and valid at; inception needs 75+
FAMILIES = [("resnet18", 32), ("resnext50_32x4d", 32), ("wide_resnet50_2", 32), ("vgg11_bn", 32),
            ("densenet121", 32), ("mobilenet_v2", 32), ("mobilenet_v3_small", 32), ("efficientnet_b0", 32),
            ("regnet_x_400mf", 32), ("squeezenet1_0", 64), ("mnasnet0_5", 32), ("convnext_tiny", 32),
            ("googlenet", 32), ("inception_v3", 80)]
# grouped (not depthwise) convolutions: the units coupled to them are kept whole (docs/usage.md)
GROUPED = {"resnext50_32x4d", "regnet_x_400mf"}
UNTRACEABLE = ["shufflenet_v2_x0_5"]  # channel shuffle's reshape breaks Torch-Pruning 1.6.1's index mapping


@pytest.mark.slow
@pytest.mark.parametrize("arch,side", FAMILIES, ids=[a for a, _ in FAMILIES])
def test_a_torchvision_family_prunes_runs_and_round_trips(arch, side, tmp_path):
    source = parse_source(f"torchvision:{arch}")
    torch.manual_seed(0)
    model = source.build(num_classes=7).eval()
    x = torch.randn(2, 3, side, side)
    units, keep, unsafe = prunable_safely(model, x[:1], max_ratio=0.5)
    assert len(units) >= 5
    assert bool(unsafe) == (arch in GROUPED)  # only grouped convolutions are set aside
    pruned, record = apply_plan(model, {u.name: 0.4 for u in units}, example_input=x[:1], keep=keep)
    with torch.no_grad():
        out = pruned.eval()(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert measure(pruned, x).params < 0.85 * measure(model, x).params
    pre = Preprocessing(channels=3, input_size=side, pad=0, resize="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3,
                        class_names=tuple("abcdefg"), resize_size=None)
    path = save_pruned(tmp_path / "c.pt", pruned, record,
                       CheckpointMeta(model=source.text, num_classes=7, in_channels=3, preprocessing=pre))
    back = load_checkpoint(path, expect_model=source.text).model.eval()
    with torch.no_grad():
        assert torch.allclose(back(x), out, atol=1e-4)


@pytest.mark.parametrize("arch", UNTRACEABLE)
def test_a_family_torch_pruning_cannot_trace_is_one_line(arch):
    from search.config import build_config

    cfg = build_config({**TINY_LENET, "model": f"torchvision:{arch}", "budget": "smoke",
                        "search": {"granularity": "unit"}},
                       where="test")
    model = parse_source(cfg.model).build(num_classes=10).eval()
    with pytest.raises(PlanError, match=f"Torch-Pruning cannot trace torchvision:{arch}"):
        safe_units(model, torch.randn(1, 3, 64, 64), cfg, progress=False)
