"""torchvision's definitions, adapted to 32x32 inputs: a 3x3 stride-1 stem and no early pooling."""
from __future__ import annotations

from torch import nn
from torchvision import models as tvm


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


def resnet50(*, num_classes: int, in_channels: int) -> nn.Module:
    """torchvision's bottleneck ResNet50 with a 3x3 stride-1 stem and no max-pool."""
    model = tvm.resnet50(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def densenet121(*, num_classes: int, in_channels: int) -> nn.Module:
    """torchvision's DenseNet121 with a 3x3 stride-1 stem and no initial pool."""
    model = tvm.densenet121(weights=None, num_classes=num_classes)
    model.features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.features.pool0 = nn.Identity()
    return model
