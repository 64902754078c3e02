"""Latency that means something: median milliseconds per forward pass at batch 1 and 64, on
onnxruntime (CPU, one intra-op thread, 10 warm-up and 50 timed runs) and through PyTorch on the
study's device (5 warm-up, 20 timed runs), for the baseline and every front point; cached in
``latency.json`` by checkpoint, so a report measures each model once."""
from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pruning import atomic_write_text, export_onnx, measure, onnx_latency

CACHE = "latency.json"
BATCHES = (1, 64)
ORT_THREADS = 1  # one thread: comparable across machines and models; a deployment may use more


def ort_ms(model: nn.Module, example: torch.Tensor, batch_sizes: tuple[int, ...] = BATCHES) -> dict[int, float]:
    """onnxruntime CPU latency of a model (exported to a temporary file)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", example)
        return onnx_latency(path, example, batch_sizes, threads=ORT_THREADS)


def device_ms(model: nn.Module, example: torch.Tensor, batch_sizes: tuple[int, ...] = BATCHES) -> dict[int, float]:
    """PyTorch latency on the model's device (the study's)."""
    return measure(model, example, latency=True, batch_sizes=batch_sizes).latency_ms


def setting(device: torch.device) -> str:
    """Where the figures were measured, for the report."""
    cpu = platform.processor() or platform.machine()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({cpu}, {torch.get_num_threads()} threads)"
    return (f"onnxruntime {_ort_version()} on the CPU ({cpu}, {ORT_THREADS} thread, {os.cpu_count()} cores); "
            f"PyTorch on {where}; median of up to 50 (onnxruntime) / 20 (PyTorch) timed runs after up to 10 / 5 warm-up runs, fewer for a slow model")


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def latencies(out: Path, key_models: dict[str, tuple[str, Callable[[], nn.Module]]],
              example: torch.Tensor) -> dict[str, dict]:
    """key -> {"ort": {batch: ms}, "device": {batch: ms}} for models given as (cache key: an artifact id
    or a checksum, a loader called only when needed), measuring only those not cached yet."""
    path = out / CACHE
    try:
        cache = json.loads(path.read_text()) if path.exists() else {}
        cache = cache if isinstance(cache, dict) else {}
    except ValueError:
        cache = {}  # a damaged cache is only a cache
    device = str(example.device)
    changed = False
    for cache_key, lazy in key_models.values():
        slot = f"{cache_key}@{device}"
        if slot not in cache:
            model = lazy().to(example.device)
            on_device = device_ms(model, example)  # before the export, which moves the model to the CPU
            cache[slot] = {"ort": ort_ms(model, example), "device": on_device}
            changed = True
    if changed:
        atomic_write_text(path, json.dumps(cache, indent=1))
    return {key: {kind: {int(b): ms for b, ms in cache[f"{ck}@{device}"][kind].items()} for kind in ("ort", "device")}
            for key, (ck, _) in key_models.items()}
