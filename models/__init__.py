"""Model sources: the registry of CNNs (1 or 3 input channels; LeNet5 and VGG16 take 32x32 inputs only,
ResNet50, DenseNet121 and MobileNetV2 any side from 32 up; 32 is their default ``--image-size``),
``torchvision:<arch>``,
``timm:<name>`` and the user's own entry points, plus reading a user's trained weights.

Each registry model file registers its :class:`ModelSpec` at import; this package imports them in
the order ``list_models()`` reports."""
from __future__ import annotations

from models import _lenet  # noqa: F401  (registration, in the order list_models() reports)
from models import _adapted  # noqa: F401
from models import _mobilenet  # noqa: F401
from models._registry import STAGES_ATTR, ModelSpec, UnknownModelError, create_model, list_models, model_spec, spec_of
from models._source import DEFAULT_INPUT_SIZE, KINDS, USER_MODULES, DataDefaults, ModelSource, SourceError, fit_weights, import_entry, parse_source
from models._weights import WeightsError, file_sha256, read_state_dict

__all__ = [
    "DEFAULT_INPUT_SIZE", "KINDS", "STAGES_ATTR", "USER_MODULES", "DataDefaults", "ModelSource", "ModelSpec", "SourceError", "UnknownModelError",
    "WeightsError", "create_model", "file_sha256", "fit_weights", "import_entry", "list_models", "model_spec",
    "parse_source", "read_state_dict", "spec_of",
]
