from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from models import create_model, list_models
from pruning import IMPORTANCES, apply_plan, export_onnx, measure, prunable_units, verify_standalone


def tiered(names, slow=("resnet50", "densenet121")) -> list:
    """The models as test parameters, the two deep ones (ResNet50, DenseNet121: seconds each to trace
    and prune) in the slow tier."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


def _setup(name: str):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=3).eval()
    x = torch.randn(2, 3, 32, 32)
    return model, x, prunable_units(model, x[:1])


def _random_plan(units, ratio: float, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    return {u.name: min(0.9, ratio * rng.uniform(0.5, 1.5)) if 0 < ratio < 0.9 else ratio for u in units}


def _conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


# MobileNetV2 too in the slow tier here: three surgeries and an export of its 52 convolutions, 13 s
@pytest.mark.parametrize("name", tiered(list_models(), slow=("resnet50", "densenet121", "mobilenet_v2")))
def test_random_plans_prune_and_shrink(name, tmp_path):
    """... and the pruned model exports to an ONNX file that runs alone and gives the same logits."""
    model, x, units = _setup(name)
    sizes = []
    for ratio in (0.0, 0.4, 0.9):
        pruned, record = apply_plan(model, _random_plan(units, ratio, seed=1), example_input=x[:1])
        with torch.no_grad():
            y = pruned.eval()(x)
        assert y.shape == (2, 10) and torch.isfinite(y).all()
        m = measure(pruned, x)
        sizes.append((m.params, m.macs))
        assert all(record.channels_after[u.name] >= 1 for u in units)
        if ratio == 0.4:
            assert verify_standalone(export_onnx(pruned, tmp_path / "m.onnx", x), pruned, x).max_abs_diff <= 1e-3
    assert sizes[0][0] > sizes[1][0] > sizes[2][0] and sizes[0][1] > sizes[1][1] > sizes[2][1]
    assert sum(p.numel() for p in model.parameters()) == sizes[0][0]  # the original is untouched


@pytest.mark.parametrize("name", tiered(["vgg16", "resnet50", "densenet121"]))
def test_round_to_gives_multiples(name):
    model, x, units = _setup(name)
    pruned, record = apply_plan(model, _random_plan(units, 0.45, seed=2), example_input=x[:1], round_to=8)
    assert all(c % 8 == 0 for c in record.channels_after.values())
    assert all(w % 8 == 0 for w in _conv_widths(pruned))


@pytest.mark.parametrize("name", tiered(["lenet5", "resnet50", "densenet121"]))
def test_zero_plan_keeps_outputs(name):
    model, x, units = _setup(name)
    pruned, record = apply_plan(model, {}, example_input=x[:1])
    with torch.no_grad():
        assert torch.allclose(pruned.eval()(x), model(x), atol=1e-5)
    assert record.history == []


@pytest.mark.parametrize("name", tiered(["lenet5", "resnet50"]))
def test_iterative_steps_reach_the_one_shot_architecture(name):
    model, x, units = _setup(name)
    plan = _random_plan(units, 0.5, seed=3)
    calls = []
    one, _ = apply_plan(model, plan, example_input=x[:1])
    three, record = apply_plan(model, plan, example_input=x[:1], steps=3,
                               between_steps=lambda m, step: calls.append(step))
    assert calls == [1, 2]
    assert [p.shape for p in one.parameters()] == [p.shape for p in three.parameters()]
    assert len(record.history) > len(units) // 2


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_every_importance_runs(importance):
    model, x, units = _setup("resnet50")
    y = torch.randint(0, 10, (2,))
    pruned, record = apply_plan(model, {u.name: 0.5 for u in units}, example_input=x[:1], importance=importance,
                                calibration=[(x, y)])
    assert pruned.eval()(x).shape == (2, 10)
    assert record.channels_after["layer1.0.conv1"] == 32


def test_importance_changes_which_channels_go():
    model, x, units = _setup("lenet5")
    with torch.no_grad():
        model.conv1.weight[3].mul_(100)  # one channel made clearly the most important
    kept = apply_plan(model, {"conv1": 0.8}, example_input=x[:1], importance="l1")[0]
    assert kept.conv1.out_channels == 2
    assert any(torch.equal(w, model.conv1.weight[3]) for w in kept.conv1.weight)
