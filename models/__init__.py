"""CNN architectures for 32x32 inputs of 1 or 3 channels, behind a small name -> spec registry.

Each model file registers its :class:`ModelSpec` at import; this package imports them in the
order ``list_models()`` reports."""
from __future__ import annotations

from models import _lenet  # noqa: F401  (registration, in the order list_models() reports)
from models import _torchvision  # noqa: F401
from models import _mobilenet  # noqa: F401
from models._registry import ModelSpec, UnknownModelError, create_model, list_models, model_spec, spec_of

__all__ = ["ModelSpec", "UnknownModelError", "create_model", "list_models", "model_spec", "spec_of"]
