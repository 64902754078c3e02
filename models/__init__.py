"""CNN architectures for 32x32 inputs of 1 or 3 channels, behind a small name -> builder registry."""
from __future__ import annotations

from models._registry import UnknownModelError, create_model, list_models

__all__ = ["UnknownModelError", "create_model", "list_models"]
