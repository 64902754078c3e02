"""Checkpoints: state dict + surgery history + plain metadata, never a pickled module."""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
import torchvision
from torch import nn

from models import UnknownModelError, create_model
from pruning._apply import History, PruningRecord
from pruning._errors import CheckpointError

FORMAT = "automl-prune-checkpoint"
VERSION = 1
_BUILD_KEYS = ("model", "num_classes", "in_channels")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model, its surgery history and its metadata."""

    model: nn.Module
    history: History
    metadata: dict[str, Any]


def library_versions() -> dict[str, str]:
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "torch_pruning": str(tp.__version__)}


def save_pruned(path: str | Path, model: nn.Module, record: PruningRecord | None,
                metadata: dict[str, Any]) -> Path:
    """Write a checkpoint atomically (temp file + rename).

    ``metadata`` holds plain values and must name the build arguments ``model``, ``num_classes``
    and ``in_channels``; anything else (dataset, metrics, ...) is kept as given. ``record`` is
    ``None`` for an unpruned model.
    """
    missing = [k for k in _BUILD_KEYS if k not in metadata]
    if missing:
        raise CheckpointError(f"metadata must name the build arguments; missing {', '.join(missing)}")
    payload = {
        "format": FORMAT, "version": VERSION,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "history": record.history if record else [],
        "plan": record.plan if record else {},
        "metadata": {**metadata, "versions": library_versions()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _read(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt, "
                              f"or not written by torch.save)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise CheckpointError(f"{path} holds pickled Python objects that a checkpoint never needs; "
                              f"refused to load it ({detail})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: "
                              f"{type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no {FORMAT!r} format tag); "
                              f"use a file written by search.train, search.run or search.pick")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')!r}; this code reads {VERSION}")
    return payload


def load_checkpoint(path: str | Path, *, expect_model: str | None = None) -> Checkpoint:
    """Read a checkpoint with ``torch.load(weights_only=True)``, rebuild the base model, replay the
    surgery history and load the weights. ``expect_model`` refuses a checkpoint of another model."""
    path = Path(path)
    payload = _read(path)
    meta = payload.get("metadata")
    if not isinstance(meta, dict) or not all(k in meta for k in _BUILD_KEYS):
        raise CheckpointError(f"{path} has no build arguments ({', '.join(_BUILD_KEYS)}) in its metadata")
    if expect_model is not None and meta.get("model") != expect_model:
        raise CheckpointError(f"{path} is a {meta.get('model')!r} checkpoint, not {expect_model!r}")
    try:
        model = _rebuild(payload, meta)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} does not rebuild into a {meta['model']!r} model ({detail})") from None
    return Checkpoint(model=model, history=[list(h) for h in payload["history"]],
                      metadata={**meta, "plan": payload.get("plan", {})})


def _rebuild(payload: dict, meta: dict) -> nn.Module:
    """A fresh base model with the surgery history replayed and the weights loaded."""
    try:
        model = create_model(meta["model"], num_classes=int(meta["num_classes"]), in_channels=int(meta["in_channels"]))
    except UnknownModelError as exc:
        raise CheckpointError(str(exc)) from None
    if payload["history"]:
        graph = tp.DependencyGraph().build_dependency(
            model.eval(), example_inputs=torch.zeros(1, int(meta["in_channels"]), 32, 32), verbose=False)
        graph.load_pruning_history([list(h) for h in payload["history"]])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not match the rebuilt {meta['model']} "
                              f"({str(exc).splitlines()[0][:160]})") from None
    return model


def load_pruned(path: str | Path) -> nn.Module:
    """The pruned (or baseline) model stored at ``path``, ready to use in eval mode."""
    return load_checkpoint(path).model.eval()
