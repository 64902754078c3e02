"""The registry's VGG16-BN, ResNet50 and DenseNet121: torchvision's definitions adapted to 32x32 inputs (a 3x3
stride-1 stem and no early pooling). Not the ``torchvision:<arch>`` source, which builds torchvision's own."""
from __future__ import annotations

import re

from torch import nn
from torchvision import models as tvm

from models._registry import ModelSpec, register_model

# --- VGG16-BN ------------------------------------------------------------------------------------

# features.<index> of each conv in vgg16_bn, by block (the blocks end at the five max-pools)
_VGG_BLOCKS = {0: 1, 3: 1, 7: 2, 10: 2, 14: 3, 17: 3, 20: 3, 24: 4, 27: 4, 30: 4, 34: 5, 37: 5, 40: 5}


def vgg16(*, num_classes: int, in_channels: int) -> nn.Module:
    """VGG16 with BatchNorm and a CIFAR-style classifier (512 -> 512 -> 512 -> classes)."""
    model = tvm.vgg16_bn(weights=None)
    if in_channels != 3:
        model.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
    # Five max-pools take 32x32 to 1x1, so the 7x7 adaptive pool of ImageNet has nothing to do.
    model.avgpool = nn.Identity()
    model.classifier = nn.Sequential(
        nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(512, num_classes),
    )
    return model


def _vgg_stage(unit: str) -> str:
    """``features.block1..5`` (between max-pools) for the convs, ``classifier`` for the hidden FCs."""
    kind, _, index = unit.partition(".")
    return "classifier" if kind == "classifier" else f"features.block{_VGG_BLOCKS[int(index)]}"


# --- ResNet50 ------------------------------------------------------------------------------------

def resnet50(*, num_classes: int, in_channels: int) -> nn.Module:
    """torchvision's bottleneck ResNet50 with a 3x3 stride-1 stem and no max-pool."""
    model = tvm.resnet50(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


_RESNET_BLOCK = re.compile(r"^(layer\d)\.\d+\.(conv\d)$")


def _resnet_stage(unit: str) -> str:
    """``layerN.conv1`` / ``layerN.conv2`` (one ratio per stage and role), ``layerN.residual``, ``conv1``."""
    match = _RESNET_BLOCK.match(unit)
    return f"{match.group(1)}.{match.group(2)}" if match else unit


# --- DenseNet121 ---------------------------------------------------------------------------------

def densenet121(*, num_classes: int, in_channels: int) -> nn.Module:
    """torchvision's DenseNet121 with a 3x3 stride-1 stem and no initial pool."""
    model = tvm.densenet121(weights=None, num_classes=num_classes)
    model.features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.features.pool0 = nn.Identity()
    return model


_DENSE_LAYER = re.compile(r"^features\.(denseblock\d)\.denselayer\d+\.(conv\d)$")


def _densenet_stage(unit: str) -> str:
    """``denseblockN.conv1`` (bottleneck) / ``denseblockN.conv2`` (growth), ``transitionN.conv``, ``conv0``."""
    match = _DENSE_LAYER.match(unit)
    return f"{match.group(1)}.{match.group(2)}" if match else unit.removeprefix("features.")


register_model(ModelSpec(name="vgg16", build=vgg16, stage_of=_vgg_stage))
register_model(ModelSpec(name="resnet50", build=resnet50, stage_of=_resnet_stage))
register_model(ModelSpec(name="densenet121", build=densenet121, stage_of=_densenet_stage))
