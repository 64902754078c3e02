from __future__ import annotations

import math

import pytest
import torch

from models import create_model
from pruning import PlanError, channels_to_keep, expand_plan, plan_keys, prunable_units, validate_plan


@pytest.fixture(scope="module")
def resnet_units():
    return prunable_units(create_model("resnet50", in_channels=3).eval(), torch.zeros(1, 3, 32, 32))


def test_readable_names_and_members(resnet_units):
    by_name = {u.name: u for u in resnet_units}
    assert "layer2.0.conv1" in by_name and "conv1" in by_name
    residual = by_name["layer3.residual"]
    assert residual.channels == 1024
    assert set(residual.members) == {"layer3.0.downsample.0"} | {f"layer3.{i}.conv3" for i in range(6)}
    assert "fc" not in {m for u in resnet_units for m in u.members}  # the classifier's outputs stay


def test_densenet_names():
    units = prunable_units(create_model("densenet121", in_channels=1).eval(), torch.zeros(1, 1, 32, 32))
    names = {u.name for u in units}
    assert "features.denseblock2.denselayer5.conv1" in names and "features.transition1.conv" in names


def test_granularities_are_deterministic(resnet_units):
    assert plan_keys(resnet_units, "global") == ["ratio"]
    stage = plan_keys(resnet_units, "stage")
    assert stage == ["conv1"] + [f"layer{i}.{r}" for i in range(1, 5) for r in ("conv1", "conv2", "residual")]
    values = {k: i / 100 for i, k in enumerate(stage)}
    plan = expand_plan(resnet_units, "stage", values)
    assert plan["layer2.3.conv2"] == values["layer2.conv2"] and plan["layer4.residual"] == values["layer4.residual"]
    assert set(expand_plan(resnet_units, "global", {"ratio": 0.3}).values()) == {0.3}
    assert len(plan_keys(resnet_units, "unit")) == 37


def test_lenet5_has_no_stages():
    units = prunable_units(create_model("lenet5", in_channels=1).eval(), torch.zeros(1, 1, 32, 32))
    with pytest.raises(PlanError, match="no stage grouping"):
        plan_keys(units, "stage")


def test_vgg_stage_keys_follow_pooling():
    units = prunable_units(create_model("vgg16", in_channels=3).eval(), torch.zeros(1, 3, 32, 32))
    assert plan_keys(units, "stage") == [f"features.block{i}" for i in range(1, 6)] + ["classifier"]
    assert [u.stage for u in units].count("features.block3") == 3


def test_unknown_granularity():
    with pytest.raises(PlanError, match="unknown granularity 'layer'"):
        plan_keys([], "layer")


@pytest.mark.parametrize("plan, match", [
    ({"nonexistent": 0.5}, "unknown unit 'nonexistent'"),
    ({"conv1": 0.95}, r"must be a number in \[0, 0.9\]"),
    ({"conv1": -0.1}, "must be a number"),
    ({"conv1": math.nan}, "must be a number"),
    ({"conv1": "half"}, "must be a number"),
])
def test_bad_plans_are_one_line_errors(resnet_units, plan, match):
    with pytest.raises(PlanError, match=match) as info:
        validate_plan(resnet_units, plan)
    assert "\n" not in str(info.value)


def test_missing_units_default_to_zero(resnet_units):
    plan = validate_plan(resnet_units, {"conv1": 0.5})
    assert plan["conv1"] == 0.5 and plan["layer1.0.conv1"] == 0.0 and len(plan) == 37


@pytest.mark.parametrize("channels, ratio, round_to, keep", [
    (64, 0.0, None, 64), (64, 0.5, None, 32), (6, 0.9, None, 1), (1, 0.9, None, 1),
    (64, 0.3, 8, 48), (64, 0.9, 8, 8), (6, 0.5, 8, 6), (32, 0.1, 8, 32),
])
def test_channels_to_keep(channels, ratio, round_to, keep):
    assert channels_to_keep(channels, ratio, round_to) == keep
