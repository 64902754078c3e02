"""Shipping a picked model: ONNX with a dynamic batch, verified against onnxruntime on a validation
batch, and a JSON sidecar with what a deployment needs (preprocessing, class names, metrics,
provenance, the verification and the measured latency)."""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from pruning import (INPUT, OUTPUT, CheckpointMeta, Dataset, atomic_write_text, export_onnx, external_data_path,
                     library_versions, onnx_latency, to_plain, uses_external_data, verify_standalone)
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


def export_paths(onnx: Path) -> tuple[Path, Path, Path]:
    """Every file an export to ``onnx`` may write: the model, its sidecar, its external data."""
    return onnx, sidecar_path(onnx), external_data_path(onnx)


def ship(model: nn.Module, meta: CheckpointMeta, plan: dict, data: Dataset, onnx: Path) -> dict:
    """Export ``model`` to ``onnx``, verify it on the first validation images, measure it, and write
    the sidecar beside it. Returns the sidecar's content."""
    batch = data.normalize(data.val_x[:VERIFY_BATCH]).cpu()
    model = model.float().cpu().eval()
    export_onnx(model, onnx, batch)
    check = verify_standalone(onnx, model, batch)
    latency = onnx_latency(onnx, batch, (1, 64), threads=ORT_THREADS)
    pre = meta.preprocessing or data.preprocessing
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
    atomic_write_text(sidecar_path(onnx), json.dumps(sidecar, indent=1))
    return sidecar
