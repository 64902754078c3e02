"""torchvision's MobileNetV2 for 32x32 inputs: a stride-1 stem. Its depthwise convolutions couple
each expansion conv's outputs to the depthwise conv that follows (a unit of two layers), and the
residual adds couple the projections of a stage."""
from __future__ import annotations

import re

from torch import nn
from torchvision import models as tvm

from models._registry import ModelSpec, register_model

# features.<index> -> stage: torchvision's (t, c, n, s) table, stride-2 stages 2, 3, 4 and 6
_STAGE_OF_BLOCK = {1: 1, 2: 2, 3: 2, 4: 3, 5: 3, 6: 3, 7: 4, 8: 4, 9: 4, 10: 4, 11: 5, 12: 5, 13: 5,
                   14: 6, 15: 6, 16: 6, 17: 7}
_EXPAND = re.compile(r"^features\.(\d+)\.conv\.0\.0$")
_PROJECT = re.compile(r"^features\.(\d+)\.conv\.[12]$")
_RESIDUAL = re.compile(r"^features\.(\d+)-\d+\.residual$")


def mobilenet_v2(*, num_classes: int, in_channels: int) -> nn.Module:
    """MobileNetV2 (width 1.0) with a 3x3 stride-1 stem, so 32x32 inputs keep 2x2 maps at the end."""
    model = tvm.mobilenet_v2(weights=None, num_classes=num_classes)
    model.features[0][0] = nn.Conv2d(in_channels, 32, kernel_size=3, stride=1, padding=1, bias=False)
    return model


def _stage(unit: str) -> str:
    """``stageN.expand`` (expansion + depthwise), ``stageN.project`` / ``stageN.residual``, ``stem``, ``head``."""
    if unit == "features.0.0":
        return "stem"
    if unit == "features.18.0":
        return "head"
    for pattern, role in ((_EXPAND, "expand"), (_PROJECT, "project"), (_RESIDUAL, "residual")):
        match = pattern.match(unit)
        if match:
            return f"stage{_STAGE_OF_BLOCK[int(match.group(1))]}.{role}"
    raise KeyError(f"mobilenet_v2 unit {unit!r} has no stage")


register_model(ModelSpec(name="mobilenet_v2", build=mobilenet_v2, stage_of=_stage))
