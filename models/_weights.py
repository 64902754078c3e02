"""A user's trained weights: read with ``torch.load(weights_only=True)`` whatever the usual wrapper
(``{"model": ...}``, ``{"state_dict": ...}``, ``{"model_state_dict": ...}``, DataParallel's
``module.`` prefix), and loaded strictly, with one line naming the first key that does not fit
(compare timm's ``load_state_dict`` / ``load_pretrained``)."""
from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "weights")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, without terminal escape codes, cut to ``limit``."""
    text = _ANSI.sub("", str(exc))
    return (text.strip().splitlines() or [type(exc).__name__])[0][:limit]


class WeightsError(ValueError):
    """Weights that cannot be used with the model: the message says which key and how to fix it."""


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (the fingerprint of a user's weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, unwrapped; nothing but tensors and plain containers is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no weights file at {path}")
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"{path} is not a PyTorch file written by torch.save (truncated, corrupt or another format)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if re.search(r"GLOBAL (torch\.nn\.modules|torchvision\.models|timm\.)|__main__", str(exc)):
            raise WeightsError(f"{path} holds a whole pickled model (torch.save(model)), which would run code to "
                               f"load; save its weights instead: torch.save(model.state_dict(), 'weights.pt')") from None
        detail = first_line(exc, 120) if str(exc).strip() else ""
        raise WeightsError(f"{path} holds pickled Python objects that weights never need; refused ({detail})") from None
    except Exception as exc:  # zip and storage errors of a damaged file come in many types
        raise WeightsError(f"{path} is not a readable PyTorch file ({type(exc).__name__})") from None
    return _unwrap(payload, path)


def _unwrap(payload, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(payload, dict) and payload.get("format") == "automl-prune-checkpoint":
        raise WeightsError(f"{path} is a checkpoint of this project; start from it with --from {path}, not --weights")
    for _ in range(3):  # {"model": {"state_dict": ...}} and the like
        if isinstance(payload, dict) and not _is_state_dict(payload):
            inner = next((payload[k] for k in WRAPPER_KEYS if isinstance(payload.get(k), dict)), None)
            if inner is None:
                break
            payload = inner
    if not isinstance(payload, dict) or not _is_state_dict(payload) or not payload:
        keys = ", ".join(map(str, list(payload)[:5])) if isinstance(payload, dict) else type(payload).__name__
        raise WeightsError(f"{path} holds no state dict of named tensors (found: {keys}); save "
                           f"model.state_dict(), or a dict with it under 'model' or 'state_dict'")
    state = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_state_dict(payload: dict) -> bool:
    tensors = [v for v in payload.values() if isinstance(v, torch.Tensor)]
    return bool(tensors) and all(isinstance(k, str) for k in payload) and len(tensors) >= len(payload) / 2


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], *, model_text: str, num_classes: int) -> None:
    """Load ``state`` into ``model`` strictly, or raise :class:`WeightsError` naming the first key
    that is missing, unexpected or of another shape (with the counts), and a class-count mismatch
    as such (``num_classes``: the dataset's)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    classes = [k for k in shapes if own[k].ndim >= 1 and own[k].shape[0] == num_classes
               and tuple(state[k].shape[1:]) == tuple(own[k].shape[1:])]
    if classes and len(classes) == len(shapes) and not missing and not unexpected:
        raise WeightsError(f"the weights' classifier ({classes[0].rpartition('.')[0]}) has {state[classes[0]].shape[0]} "
                           f"outputs but the dataset has {num_classes} classes; use the data the model was "
                           f"trained on (the class folders, in order)")
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (first: {k}, {tuple(state[k].shape)} in the weights, "
                         f"{tuple(own[k].shape)} in {model_text})")
        raise WeightsError(f"the weights do not fit {model_text}: {'; '.join(parts)} keys")
    from collections import OrderedDict

    versioned = OrderedDict(state)
    versioned._metadata = getattr(state, "_metadata", None) or getattr(own, "_metadata", OrderedDict())  # type: ignore[attr-defined]
    model.load_state_dict(versioned, strict=True)
