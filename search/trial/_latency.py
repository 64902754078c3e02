"""Latency that means something: median milliseconds per forward pass at batch 1 and 64, on
onnxruntime (CPU, one intra-op thread, 10 warm-up and 50 timed runs) and through PyTorch on the
study's device (5 warm-up, 20 timed runs), for the baseline and every front point; and each point's
speed-up over the baseline from interleaved repeats (baseline and point alternated, 7 repeats) with
its range. Cached in ``latency.json`` by checkpoint, so a report measures each model once."""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from pruning import SpeedUp, atomic_write_text, export_onnx, interleaved_speedup, measure, onnx_latency, quantization

CACHE = "latency.json"
BATCHES = (1, 64)
ORT_THREADS = 1  # one thread: comparable across machines and models; a deployment may use more
SPEEDUP_REPEATS = 7  # interleaved repeats per speed-up: the range of 7 ratios shows the noise


def ort_ms(model: nn.Module, example: torch.Tensor, batch_sizes: tuple[int, ...] = BATCHES, *,
           int8: bool = False) -> dict[int, float]:
    """onnxruntime CPU latency of a model (exported to a temporary file); ``int8``: of the INT8 file
    ``pick --int8`` would make of it (the same pre-processing and QDQ quantization, calibrated on the
    example alone: the activations' scales change the file's figures, not its speed)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", example)
        if int8:
            batch = [example[:1].float().cpu().numpy()]
            path = quantization.quantize(quantization.preprocess(path, Path(tmp) / "pre.onnx"), Path(tmp) / "int8.onnx",
                                         batch, method="minmax", cache=Path(tmp) / "calibration.json")
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
            f"PyTorch on {where}; median of up to 50 (onnxruntime) / 20 (PyTorch) timed runs after up to 10 / 5 warm-up runs, fewer for a slow model; "
            f"speed-ups: median and range of {SPEEDUP_REPEATS} interleaved repeats (baseline and point alternated), "
            f"'≈ 1x' when the range includes 1")


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def latencies(out: Path, key_models: dict[str, tuple[str, Callable[[], nn.Module]]],
              example: torch.Tensor, *, progress: bool = False) -> dict[str, dict]:
    """key -> {"ort": {batch: ms}, "device": {batch: ms}} for models given as (cache key: an artifact id
    or a checksum, a loader called only when needed), measuring only those not cached yet
    (``progress``: a bar over the models, which take seconds to minutes each for a large one)."""
    path = out / CACHE
    try:
        cache = json.loads(path.read_text()) if path.exists() else {}
        cache = cache if isinstance(cache, dict) else {}
    except ValueError:
        cache = {}  # a damaged cache is only a cache
    device = str(example.device)
    start_key, start = key_models["start"]
    todo = [(ck, lazy) for ck, lazy in key_models.values()
            if f"{ck}@{device}" not in cache or (ck != start_key and f"{ck}/{start_key}@{device}" not in cache)]
    with tempfile.TemporaryDirectory() as tmp:  # each model is exported once, its file timed for both figures
        base: tuple[nn.Module, Path] | None = None  # the model pruned from, exported once for every speed-up
        for cache_key, lazy in tqdm(todo, desc="latency of front points", unit="model", leave=False,
                                    disable=not progress or not todo):
            slot, pair = f"{cache_key}@{device}", f"{cache_key}/{start_key}@{device}"
            model = lazy().to(example.device).eval()
            onnx = export_onnx(model, Path(tmp) / ("start.onnx" if cache_key == start_key else "point.onnx"), example)
            if cache_key == start_key:
                base = model, onnx
            if slot not in cache:
                on_device = device_ms(model, example)
                cache[slot] = {"ort": onnx_latency(onnx, example, BATCHES, threads=ORT_THREADS), "device": on_device}
            if cache_key != start_key and pair not in cache:
                if base is None:
                    start_model = start().to(example.device).eval()
                    base = start_model, export_onnx(start_model, Path(tmp) / "start.onnx", example)
                cache[pair] = _speedups(*base, model, onnx, example)
    if todo:
        atomic_write_text(path, json.dumps(cache, indent=1))
    return {key: {**{kind: {int(b): ms for b, ms in cache[f"{ck}@{device}"][kind].items()} for kind in ("ort", "device")},
                  "speedup": _read_speedups(cache.get(f"{ck}/{start_key}@{device}"))}
            for key, (ck, _) in key_models.items()}


def _speedups(base: nn.Module, base_onnx: Path, model: nn.Module, model_onnx: Path, example: torch.Tensor) -> dict:
    """{kind: {batch: [median, low, high, repeats]}}: the point's speed-up over ``base``, interleaved
    (on the study's device through PyTorch, and on onnxruntime from the two models' exported files)."""
    out: dict = {"device": {}, "ort": {}}
    for bs in BATCHES:
        up = interleaved_speedup(_torch_call(base, example, bs), _torch_call(model, example, bs), repeats=SPEEDUP_REPEATS)
        out["device"][bs] = [up.median, up.low, up.high, up.repeats]
    calls = [_ort_call(path, example) for path in (base_onnx, model_onnx)]
    for bs in BATCHES:
        up = interleaved_speedup(calls[0](bs), calls[1](bs), repeats=SPEEDUP_REPEATS)
        out["ort"][bs] = [up.median, up.low, up.high, up.repeats]
    return out


def _read_speedups(stored: dict | None) -> dict[str, dict[int, SpeedUp]]:
    if not stored:
        return {}
    return {kind: {int(b): SpeedUp(*v[:3], int(v[3])) for b, v in per.items()} for kind, per in stored.items()}


def _torch_call(model: nn.Module, example: torch.Tensor, bs: int) -> Callable[[], float]:
    """One timed forward pass of ``model`` at batch ``bs`` (ms), synchronized on CUDA."""
    x = example[:1].expand(bs, *example.shape[1:]).contiguous()
    cuda = example.device.type == "cuda"

    @torch.no_grad()
    def once() -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(x)
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1000
    return once


def _ort_call(path: Path, example: torch.Tensor) -> Callable[[int], Callable[[], float]]:
    """batch size -> one timed onnxruntime run (ms) of the ONNX file ``path`` (CPU, ORT_THREADS)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = ORT_THREADS, 1, 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name, one = session.get_inputs()[0].name, example[:1].float().cpu().numpy()

    def at(bs: int) -> Callable[[], float]:
        x = np.ascontiguousarray(np.repeat(one, bs, axis=0))

        def once() -> float:
            start = time.perf_counter()
            session.run(None, {name: x})
            return (time.perf_counter() - start) * 1000
        return once
    return at
