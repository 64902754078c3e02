"""A user's trained weights: read with ``torch.load(weights_only=True)`` whatever the usual wrapper
(``{"model": ...}``, ``{"state_dict": ...}``, ``{"model_state_dict": ...}``, DataParallel's
``module.`` prefix), and loaded strictly, with one line naming the first key that does not fit
(compare timm's ``load_state_dict`` / ``load_pretrained``)."""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import stat
import warnings
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


_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def _open_regular(path: str | Path):
    """``path`` opened for reading, refused unless it is a regular file. Opened non-blocking and
    checked on the open descriptor: opening or reading a FIFO, ``/dev/zero`` or a terminal (directly
    or through a symlink) would wait or read forever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise WeightsError(f"no weights file at {path}" if not os.path.lexists(path)
                           else f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((text for test, text in _KINDS if test(mode)), "not a regular file")
        raise WeightsError(f"{path} is {kind}, not a weights file; name the file torch.save wrote")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (the fingerprint of a user's weights); anything but a regular file
    is a :class:`WeightsError`."""
    digest = hashlib.sha256()
    with _open_regular(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, unwrapped; nothing but tensors and plain containers is unpickled.
    The archive is checked first (a regular file, records stored uncompressed, CRCs intact) and the
    tensors after (dense, on the CPU, finite), each refusal a :class:`WeightsError`."""
    path = Path(path)
    with _open_regular(path) as handle:
        if not zipfile.is_zipfile(handle):
            raise WeightsError(f"{path} is not a PyTorch file written by torch.save (truncated, corrupt or "
                               f"another format)")
        _check_archive(path, handle)
    try:
        with warnings.catch_warnings():  # torch's note that it validates sparse tensors: refused below anyway
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _pickles_a_module(path):
            raise WeightsError(f"{path} holds a whole pickled model (torch.save(model)), which would run code to "
                               f"load; save its weights instead: torch.save(model.state_dict(), 'weights.pt')") from None
        detail = first_line(exc, 120) if str(exc).strip() else ""
        raise WeightsError(f"{path} holds pickled Python objects that weights never need; refused ({detail})") from None
    except Exception as exc:  # zip and storage errors of a damaged file come in many types
        raise WeightsError(f"{path} is not a readable PyTorch file ({type(exc).__name__})") from None
    state = _unwrap(payload, path)
    _check_tensors(path, state)
    return state


def _check_archive(path: Path, handle) -> None:
    """torch.save stores its records uncompressed: a compressed record, or records claiming more
    bytes than the file holds, could only inflate memory while loading (a zip bomb). Every record's
    CRC-32 is checked (stored records are read, never inflated): changed bytes inside a tensor would
    otherwise load as weights."""
    try:
        with zipfile.ZipFile(handle) as archive:
            entries = archive.infolist()
            bomb = any(e.compress_type != zipfile.ZIP_STORED for e in entries) or \
                sum(e.file_size for e in entries) > os.fstat(handle.fileno()).st_size
            for entry in () if bomb else entries:
                with archive.open(entry) as record:  # raises BadZipFile on a CRC mismatch at the end
                    while record.read(1 << 20):
                        pass
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise WeightsError(f"{path} is damaged ({first_line(exc, 80)}); its bytes are not what torch.save "
                           f"wrote: copy the file again") from None
    if bomb:
        raise WeightsError(f"{path} has compressed records, which torch.save never writes: refused to load it "
                           f"(it could expand in memory); re-save it with torch.save")


def _pickles_a_module(path: Path) -> bool:
    """Whether the file's pickle is an ``nn.Module`` (every module pickles its ``_parameters`` and
    ``_modules``), whatever package its class lives in: the registry's, torchvision's, the user's."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            text = archive.read(name) if name else b""
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return b"_parameters" in text and b"_modules" in text


def _check_tensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Weights are dense CPU tensors backed by their own bytes, with finite values: a meta or sparse
    tensor fails deep inside ``load_state_dict``, a forged stride makes a small file claim terabytes,
    and NaN/Inf weights would only be called chance level later."""
    for name, t in state.items():
        if t.layout != torch.strided or t.device.type != "cpu":
            where = t.device.type if t.device.type != "cpu" else str(t.layout).replace("torch.", "")
            raise WeightsError(f"{path}: tensor {name} is a {where} tensor; weights must be dense tensors with "
                               f"values: save model.state_dict() of a model on a real device, after .to_dense()")
        needed = (t.storage_offset() + t.numel()) * t.element_size()
        if needed > t.untyped_storage().nbytes():
            raise WeightsError(f"{path}: tensor {name} of shape {tuple(t.shape)[:8]} is not backed by its own bytes "
                               f"(forged strides or sizes); re-save the weights with torch.save")
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise WeightsError(f"{path}: tensor {name} holds NaN or infinite values; these weights come from a "
                               f"diverged or damaged training run: use an earlier, finite checkpoint")


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
    try:
        model.load_state_dict(versioned, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:  # dtypes and layouts torch cannot copy from
        raise WeightsError(f"the weights do not load into {model_text}: {first_line(exc, 160)}") from None
