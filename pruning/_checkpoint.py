"""Checkpoints: state dict + surgery history + typed metadata + a checksum; never a pickled module."""
from __future__ import annotations

import hashlib
import json
import math
import pickle
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
import torchvision
from torch import nn

from models import DEFAULT_INPUT_SIZE, ModelSource, UnknownModelError, parse_source
from pruning._apply import History, PruningRecord
from pruning._preprocessing import Preprocessing
from pruning._errors import CheckpointError
from pruning._io import atomic_write
from pruning._typed import from_plain, to_plain
from pruning._units import trace

FORMAT = "automl-prune-checkpoint"
VERSION = 2
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841; a larger count in a checkpoint is forged


@dataclass(frozen=True)
class BaselineFigures:
    """Figures of the unpruned baseline that every candidate is compared with (sizes in MB of fp32
    weights, MACs per image, accuracies as fractions). It travels in every pruned checkpoint, so a
    study started ``--from`` one still measures against the original model."""

    params: int
    macs: int
    size_mb: float
    val_accuracy: float
    test_accuracy: float | None = None  # None: the dataset has no test split

    def __post_init__(self) -> None:
        if min(self.params, self.macs) < 0 or not (math.isfinite(self.size_mb) and self.size_mb >= 0):
            raise ValueError(f"baseline sizes must be non-negative, got params={self.params}, macs={self.macs}, "
                             f"size_mb={self.size_mb}")
        for name in ("val_accuracy", "test_accuracy"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"baseline.{name} must be a fraction in [0, 1], got {value}")


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about its model.

    Attributes:
        model, num_classes, in_channels: the base model's source (``lenet5``, ``torchvision:resnet50``,
            ``nets.py:build``) and build arguments.
        model_kwargs: keyword arguments of the source's builder.
        dataset: the dataset it was trained on.
        preprocessing: what a deployment does to an image first.
        baseline: the unpruned baseline's figures (None in a baseline itself).
        metrics: measured figures (val/test accuracy as fractions, params, macs, size_mb, ...).
        provenance: where it came from (study, trial, recipe, seed, ...), plain values.
    """

    model: str
    num_classes: int
    in_channels: int
    dataset: str | None = None
    preprocessing: Preprocessing | None = None
    baseline: BaselineFigures | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """The metadata must describe a model that can exist (a forged checkpoint is refused here)."""
        if not 1 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be 1..{MAX_CLASSES}, got {self.num_classes}")
        if not 1 <= self.in_channels <= 4:
            raise ValueError(f"in_channels must be 1..4, got {self.in_channels}")
        pre = self.preprocessing
        if pre is not None and pre.channels != self.in_channels:
            raise ValueError(f"preprocessing.channels {pre.channels} differs from the model's in_channels "
                             f"{self.in_channels}")
        if pre is not None and pre.class_names and len(pre.class_names) != self.num_classes:
            raise ValueError(f"preprocessing.class_names has {len(pre.class_names)} names for "
                             f"{self.num_classes} outputs")
        bad = [k for k, v in self.metrics.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise ValueError(f"metrics.{bad[0]} is not a finite number")

    @property
    def source(self) -> ModelSource:
        return parse_source(self.model, self.model_kwargs)

    @property
    def input_size(self) -> int:
        """The model's input side in pixels (the default where the checkpoint predates other sizes)."""
        return self.preprocessing.input_size if self.preprocessing else DEFAULT_INPUT_SIZE


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model, its surgery history, its plan and its metadata."""

    model: nn.Module
    history: History
    plan: dict[str, float]
    meta: CheckpointMeta
    checksum: str


def library_versions() -> dict[str, str]:
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "torch_pruning": str(tp.__version__)}


def checksum(state_dict: dict[str, torch.Tensor], history: History, plan: dict, meta: dict) -> str:
    """SHA-256 over the tensors (names, dtypes, shapes, bytes), the history, the plan and the metadata."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps([history, plan, meta], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _check_finite(state_dict: dict[str, torch.Tensor], where: str) -> None:
    bad = [k for k, t in state_dict.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{where} holds NaN or infinite weights (in {bad[0]}); it is not a usable model")


def save_pruned(path: str | Path, model: nn.Module, record: PruningRecord | None, meta: CheckpointMeta) -> Path:
    """Write a checkpoint atomically (temp file + rename) with a checksum of its contents.

    ``record`` is ``None`` for an unpruned model. NaN or infinite weights are refused.
    """
    if not isinstance(meta, CheckpointMeta):
        raise CheckpointError(f"meta must be a CheckpointMeta, got {type(meta).__name__}")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _check_finite(state, "the model to save")
    history = [list(h) for h in record.history] if record else []
    plan = dict(record.plan) if record else {}
    plain = {**to_plain(meta), "versions": library_versions()}
    payload = {"format": FORMAT, "version": VERSION, "state_dict": state, "history": history, "plan": plan,
               "metadata": plain, "checksum": checksum(state, history, plan, plain)}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _read(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt, "
                              f"or not written by torch.save)")
    _check_archive(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise CheckpointError(f"{path} holds pickled Python objects that a checkpoint never needs; "
                              f"refused to load it ({detail})") from None
    except Exception as exc:  # zip, storage and decoding errors of a damaged file come in many types
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: "
                              f"{type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no {FORMAT!r} format tag); "
                              f"use a file written by search.train, search.run or search.pick")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')!r}; this code reads {VERSION}")
    return payload


def _check_archive(path: Path) -> None:
    """torch.save stores its records uncompressed: a compressed record, or records claiming more
    bytes than the file holds, could only inflate memory while loading (a zip bomb)."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: "
                              f"{type(exc).__name__})") from None
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries) or \
            sum(e.file_size for e in entries) > path.stat().st_size:
        raise CheckpointError(f"{path} has compressed records, which torch.save never writes: refused to load it "
                              f"(it could expand in memory); re-save it with torch.save")


def _check_tensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Every tensor dense and backed by its own bytes: a forged stride (0, or overlapping) makes a
    small file claim a tensor of terabytes, which hashing or loading would allocate."""
    for name, t in state.items():
        if t.layout != torch.strided or t.device.type != "cpu":
            raise CheckpointError(f"{path}: tensor {name} is not a dense CPU tensor; a checkpoint holds only those")
        needed = (t.storage_offset() + t.numel()) * t.element_size()
        if not t.is_contiguous() or needed > t.untyped_storage().nbytes():
            raise CheckpointError(f"{path}: tensor {name} of shape {tuple(t.shape)[:8]} is not backed by its own "
                                  f"bytes (forged strides or sizes); the file was not written by this project")


def _check_shapes(path: Path, state: dict[str, torch.Tensor], meta: CheckpointMeta) -> None:
    """The weights' shapes against the recorded source, built on the meta device (nothing
    allocated): the same tensor names; no tensor larger than the base model's (pruning only removes
    channels); and the dimensions set by the class count and the input channels exactly as
    recorded. So forged metadata (``num_classes`` of 10^7) is refused before a real model is built."""
    def shapes(num_classes: int, in_channels: int) -> dict[str, tuple[int, ...]] | None:
        try:
            with torch.device("meta"):
                built = meta.source.build(num_classes=num_classes, in_channels=in_channels)
            return {k: tuple(v.shape) for k, v in built.state_dict().items()}
        except Exception:  # noqa: BLE001 - a builder that cannot run on the meta device: the real build checks
            return None

    base = shapes(meta.num_classes, meta.in_channels)
    if base is None:
        return
    other = shapes(meta.num_classes + 1, 3 if meta.in_channels == 1 else 1) or base
    if set(base) != set(state):
        extra, missing = sorted(set(state) - set(base)), sorted(set(base) - set(state))
        first = f"unexpected {extra[0]}" if extra else f"missing {missing[0]}"
        raise CheckpointError(f"weights do not match the {meta.model} model the metadata names "
                              f"({first}; {len(extra)} unexpected, {len(missing)} missing)")
    for name, t in state.items():
        full, alt = base[name], other.get(name, base[name])
        fits = len(full) == t.dim() and all(n <= f if f == a else n == f for n, f, a in zip(t.shape, full, alt))
        if not fits:
            raise CheckpointError(f"{path}: tensor {name} has shape {tuple(t.shape)}, which a pruned {meta.model} "
                                  f"with {meta.num_classes} classes and {meta.in_channels} input channels cannot "
                                  f"have (base shape {full})")


def _verified(path: Path, payload: dict) -> tuple[dict, History, dict, dict, str]:
    """The parts of a payload, after checking their types and the checksum."""
    state, history, plan, meta = (payload.get(k) for k in ("state_dict", "history", "plan", "metadata"))
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path} has no state dict of named tensors")
    _check_tensors(path, state)
    if not isinstance(history, list) or not isinstance(plan, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"{path} has a malformed history, plan or metadata")
    stored = payload.get("checksum")
    if not isinstance(stored, str) or stored != checksum(state, history, plan, meta):
        raise CheckpointError(f"{path} fails its checksum: the file was modified or damaged after it was written")
    _check_finite(state, str(path))
    return state, history, plan, meta, stored


def read_meta(path: str | Path) -> tuple[CheckpointMeta, str]:
    """The metadata and checksum of a checkpoint, verified, without rebuilding the model."""
    path = Path(path)
    _, _, _, meta, digest = _verified(path, _read(path))
    return _meta(path, meta), digest


def _meta(path: Path, plain: dict) -> CheckpointMeta:
    plain = {k: v for k, v in plain.items() if k != "versions"}
    if "reference" in plain and "baseline" not in plain:  # the name of the field before 2026-12-03
        plain["baseline"] = plain.pop("reference")
    return from_plain(CheckpointMeta, plain, where=f"{path.name} metadata", error=CheckpointError)


def load_checkpoint(path: str | Path, *, expect_model: str | None = None) -> Checkpoint:
    """Read a checkpoint with ``torch.load(weights_only=True)``, verify its checksum, rebuild the base
    model from its recorded source, replay the surgery history and load the weights.
    ``expect_model`` refuses a checkpoint of another model; a checkpoint of the user's own code is
    rebuilt only when ``expect_model`` names that entry point (loading imports it: the caller must
    ask for that, a file alone never makes it happen). Works inside ``torch.no_grad()`` and
    ``torch.inference_mode()``."""
    path = Path(path)
    state, history, plan, plain, digest = _verified(path, _read(path))
    meta = _meta(path, plain)
    if expect_model is not None and meta.model != expect_model:
        raise CheckpointError(f"{path} is a {meta.model!r} checkpoint, not {expect_model!r}")
    try:
        source = meta.source
    except UnknownModelError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if source.kind == "code" and expect_model != meta.model:
        raise CheckpointError(f"{path} was built by your code {meta.model}; loading it imports that code, so name "
                              f"it: --model {meta.model} (in Python: load_pruned(path, model={meta.model!r}))")
    _check_shapes(path, state, meta)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            model = _rebuild(state, history, meta)
    except CheckpointError:
        raise
    except Exception as exc:  # a malformed history fails inside Torch-Pruning in many ways
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} does not rebuild into a {meta.model!r} model ({detail})") from None
    return Checkpoint(model=model, history=[list(h) for h in history], plan=dict(plan), meta=meta, checksum=digest)


def _rebuild(state: dict, history: History, meta: CheckpointMeta) -> nn.Module:
    """A fresh base model with the surgery history replayed and the weights loaded."""
    try:
        model = meta.source.build(num_classes=meta.num_classes, in_channels=meta.in_channels)
    except (UnknownModelError, ValueError) as exc:
        raise CheckpointError(str(exc)) from None
    if history:
        graph = trace(model, torch.zeros(1, meta.in_channels, meta.input_size, meta.input_size))
        graph.load_pruning_history([list(h) for h in history])
    try:
        model.load_state_dict(with_layout_versions(state, model))
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not match the rebuilt {meta.model} "
                              f"({str(exc).splitlines()[0][:160]})") from None
    return model


def with_layout_versions(state: dict, model: nn.Module) -> dict:
    """``state`` carrying the built model's per-module layout versions (``_metadata``), which a
    plain dict of tensors has lost; modules that check them (torchvision's MNASNet) load then."""
    from collections import OrderedDict

    out = OrderedDict(state)
    out._metadata = getattr(model.state_dict(), "_metadata", OrderedDict())  # type: ignore[attr-defined]
    return out


def load_pruned(path: str | Path, *, model: str | None = None) -> nn.Module:
    """The pruned (or baseline) model stored at ``path``, ready for inference: eval mode, no
    gradients, and its :class:`Preprocessing` as ``model.preprocessing`` (None if not recorded).
    ``model`` names the source (required for a model of your own code: loading imports it)."""
    ckpt = load_checkpoint(path, expect_model=model)
    net = ckpt.model.eval().requires_grad_(False)
    net.preprocessing = ckpt.meta.preprocessing
    return net


def with_metrics(meta: CheckpointMeta, **metrics: float) -> CheckpointMeta:
    """``meta`` with ``metrics`` added to (or replacing) its measured figures."""
    return replace(meta, metrics={**meta.metrics, **metrics})
