"""Shipping a picked model: ONNX with a dynamic batch, verified against onnxruntime on a validation
batch, and a JSON sidecar with what a deployment needs (preprocessing, class names, metrics,
provenance, the verification and the measured latency); on request an INT8 file beside it, measured
from a copy in an empty folder. Every file is made in a private folder and moved into place only
when all of them are done: a failed export or quantization writes nothing."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from torch import nn

from pruning import (INPUT, OUTPUT, CheckpointMeta, Dataset, ExportError, atomic_write_text, export_onnx, external_data_path,
                     library_versions, onnx_latency, to_plain, uses_external_data, verify_standalone)
from pruning import Int8Settings, current_umask
from search.results._int8 import int8_figures
from search.trial import ORT_THREADS

VERIFY_BATCH = 64


def sidecar_path(onnx: Path) -> Path:
    return onnx.with_suffix(".json")


def _formula(pre) -> str:
    """The preprocessing in words, so a deployment can reproduce it exactly."""
    if pre.resize_size:
        bring = (f"convert to {'RGB' if pre.channels == 3 else 'grayscale'}, resize the shorter side to "
                 f"{pre.resize_size} ({pre.resize}), crop the centre {pre.input_size}x{pre.input_size}")
    elif pre.resize != "none":
        bring = f"resize to {pre.input_size}x{pre.input_size} ({pre.resize})"
    else:
        bring = f"pad `pad` ({pre.pad}) zero pixels on each side"
    return f"{bring}; then x = (pixels / 255 - mean) / std, per channel, as float32 (batch, C, H, W)"


def int8_path(onnx: Path) -> Path:
    """The INT8 file beside an export: ``<name>.int8.onnx``."""
    return onnx.with_name(onnx.stem + ".int8.onnx")


def export_paths(onnx: Path, *, int8: bool = False) -> tuple[Path, ...]:
    """Every file an export to ``onnx`` may write: the model, its sidecar, its external data, and
    with ``int8`` the INT8 file."""
    return (onnx, sidecar_path(onnx), external_data_path(onnx), *((int8_path(onnx),) if int8 else ()))


def ship(model: nn.Module, meta: CheckpointMeta, plan: dict, data: Dataset, onnx: Path, *,
         int8: Int8Settings | None = None, progress: bool = False) -> dict:
    """Export ``model`` to ``onnx``, verify it on the first validation images, measure it, with
    ``int8`` quantize and measure the INT8 file too, and write the sidecar beside them. Nothing is
    written unless all of it succeeds. Returns the sidecar's content."""
    onnx.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=onnx.parent, prefix=f".{onnx.name}.", suffix=".tmp") as tmp:
        staged = Path(tmp) / onnx.name
        sidecar = _make(model, meta, plan, data, staged, int8=int8, progress=progress)
        for path in export_paths(staged, int8=int8 is not None):
            if path.exists():
                os.chmod(path, 0o666 & ~current_umask())
                os.replace(path, onnx.parent / path.name)
    return sidecar


def _make(model: nn.Module, meta: CheckpointMeta, plan: dict, data: Dataset, onnx: Path, *,
          int8: Int8Settings | None, progress: bool) -> dict:
    batch = data.inputs("val", VERIFY_BATCH).cpu()
    model = model.float().cpu().eval()
    export_onnx(model, onnx, batch)
    check = verify_standalone(onnx, model, batch)
    latency = onnx_latency(onnx, batch, (1, 64), threads=ORT_THREADS)
    pre = meta.preprocessing or data.preprocessing
    if int8 is not None and uses_external_data(onnx):
        raise ExportError("INT8 of a model whose FP32 weights exceed the 1.8 GB embedding limit is not supported; "
                          "ship the FP32 file")
    sidecar = {
        "onnx": onnx.name,
        "external_data": external_data_path(onnx).name if uses_external_data(onnx) else None,
        "input": {"name": INPUT, "shape": ["batch", pre.channels, pre.input_size, pre.input_size],
                  "dtype": "float32"},
        "output": {"name": OUTPUT, "shape": ["batch", meta.num_classes], "meaning": "class logits (argmax = class)"},
        "preprocessing": {**to_plain(pre), "formula": _formula(pre)},
        "class_names": list(pre.class_names),
        "metrics": dict(meta.metrics),
        "baseline": to_plain(meta.baseline) if meta.baseline else None,
        "provenance": {"model": meta.model, "dataset": meta.dataset, **meta.provenance, "plan": plan},
        "verification": {**to_plain(check), "against": "PyTorch fp32 on the CPU, the first validation images"},
        "latency_ms": {"onnxruntime_cpu": {str(k): v for k, v in latency.items()}, "threads": ORT_THREADS},
        "versions": library_versions(),
    }
    if int8 is not None:
        sidecar["int8"] = int8_figures(onnx, int8_path(onnx), data, int8, progress=progress)
    atomic_write_text(sidecar_path(onnx), json.dumps(sidecar, indent=1))
    return sidecar
