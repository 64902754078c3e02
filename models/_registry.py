from __future__ import annotations

from typing import Callable

from torch import nn

from models._lenet import lenet5
from models._torchvision import densenet121, resnet50, vgg16

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": lenet5,
    "vgg16": vgg16,
    "resnet50": resnet50,
    "densenet121": densenet121,
}


class UnknownModelError(ValueError):
    """A model name that the registry does not know."""


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, in the registry's order."""
    return list(_BUILDERS)


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build an untrained model for 32x32 inputs.

    Args:
        name: one of :func:`list_models`.
        num_classes: outputs of the final classifier.
        in_channels: 1 (grayscale) or 3 (RGB).
    """
    if name not in _BUILDERS:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(_BUILDERS)}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return _BUILDERS[name](num_classes=num_classes, in_channels=in_channels)
