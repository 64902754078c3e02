"""The model registry: each architecture registers a :class:`ModelSpec` that says how to build it
and how its units group into stages (one ratio per stage at ``stage`` granularity). The engine finds
the classifier and the units itself, by running the model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn


class UnknownModelError(ValueError):
    """A model name that the registry does not know."""


@dataclass(frozen=True)
class ModelSpec:
    """What a registered architecture says about itself.

    Attributes:
        name: registry name (``--model``).
        build: ``build(num_classes=..., in_channels=...)`` -> an untrained ``nn.Module`` (32x32 inputs at least).
        stage_of: maps a unit name to its stage key (one ratio per stage and role at ``stage``
            granularity); ``None`` when the model has no stage grouping.
    """

    name: str
    build: Callable[..., nn.Module]
    stage_of: Callable[[str], str] | None = None


_REGISTRY: dict[str, ModelSpec] = {}
ARCH_ATTR = "arch"  # set on every model create_model builds: the registry name it came from
# set on every model create_model builds: its stage grouping (None: it has none), which the pruning
# engine reads instead of deriving stages from the module tree (timm's group_matcher, in spirit)
STAGES_ATTR = "pruning_stages"


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add an architecture to the registry (each model file registers its own at the bottom)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, in registration order."""
    return list(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; an unknown name is an error that lists the known ones."""
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def spec_of(model: nn.Module) -> ModelSpec:
    """The registry entry a model was built from by :func:`create_model`."""
    name = getattr(model, ARCH_ATTR, None)
    if not isinstance(name, str):
        raise UnknownModelError(f"{type(model).__name__} was not built by models.create_model, so its classifier "
                                f"and stages are unknown; build it with create_model(name)")
    return model_spec(name)


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build an untrained model (LeNet5 and VGG16 take 32x32 inputs only, the others any side from 32).

    Args:
        name: one of :func:`list_models`.
        num_classes: outputs of the final classifier (at least 2).
        in_channels: 1 (grayscale) or 3 (RGB).
    """
    spec = model_spec(name)
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    model = spec.build(num_classes=num_classes, in_channels=in_channels)
    setattr(model, ARCH_ATTR, name)
    setattr(model, STAGES_ATTR, spec.stage_of)
    return model
