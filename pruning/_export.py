"""Deployment: ONNX export with a dynamic batch size, verified against onnxruntime, and latency
measured on onnxruntime (CPU). onnx, onnxscript and onnxruntime are imported here only."""
from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pruning._errors import PruningError
from pruning._io import atomic_write
from pruning._measure import timed_median

INPUT, OUTPUT = "images", "logits"
# onnxruntime against PyTorch on the same fp32 inputs: both run fp32 kernels that sum in different
# orders, so logits agree to about 1e-5 of their scale; these bounds leave room for deep nets.
ATOL, RTOL = 1e-3, 1e-3
LATENCY_WARMUP, LATENCY_REPEATS = 10, 50


class ExportError(PruningError):
    """An export that failed or whose outputs do not match PyTorch's."""


@dataclass(frozen=True)
class Verification:
    """onnxruntime against PyTorch on one batch: the largest absolute logit difference, the tolerance
    it was held to, and the share of images whose top-1 class agrees."""

    batch: int
    max_abs_diff: float
    atol: float
    rtol: float
    top1_agreement: float


def export_onnx(model: nn.Module, path: str | Path, example_input: torch.Tensor) -> Path:
    """Write ``model`` (eval mode, CPU, fp32) as ONNX with a dynamic batch dimension, atomically."""
    model = model.float().cpu().eval()
    x = example_input[:1].float().cpu().contiguous()
    batch = torch.export.Dim("batch", min=1, max=65_536)

    def write(tmp: str) -> None:
        quiet = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), _quiet_loggers():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), tmp, dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_shapes=({0: batch},), verbose=False)
    try:
        return atomic_write(path, write)
    except Exception as exc:  # the exporter fails in many ways; the user needs one line
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ExportError(f"ONNX export of the model failed: {detail}") from None


@contextlib.contextmanager
def _quiet_loggers():
    names = ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo", "torch.fx")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify_onnx(path: str | Path, model: nn.Module, batch: torch.Tensor, *, atol: float = ATOL,
                rtol: float = RTOL) -> Verification:
    """Run ``batch`` through onnxruntime and PyTorch (fp32, CPU); raise :class:`ExportError` with the
    figures when the logits differ beyond ``atol + rtol * |logit|``."""
    x = batch.float().cpu().contiguous()
    with torch.no_grad():
        expected = model.float().cpu().eval()(x).numpy()
    got = _session(Path(path)).run([OUTPUT], {INPUT: x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    result = Verification(batch=int(x.shape[0]), max_abs_diff=diff, atol=atol, rtol=rtol, top1_agreement=agree)
    if not np.allclose(got, expected, atol=atol, rtol=rtol):
        raise ExportError(f"onnxruntime's logits differ from PyTorch's by up to {diff:.3g} on a batch of "
                          f"{x.shape[0]} (tolerance {atol} + {rtol} x |logit|; top-1 agreement {agree:.1%})")
    return result


def onnx_latency(path: str | Path, example_input: torch.Tensor, batch_sizes: tuple[int, ...] = (1, 64), *,
                 threads: int | None = None, warmup: int = LATENCY_WARMUP,
                 repeats: int = LATENCY_REPEATS) -> dict[int, float]:
    """Median milliseconds per forward pass on onnxruntime's CPU provider, per batch size, after
    ``warmup`` unmeasured runs; ``threads`` intra-op threads (None: onnxruntime's default, all cores)."""
    session = _session(Path(path), threads)
    one = example_input[:1].float().cpu().numpy()
    result = {}
    for bs in batch_sizes:
        x = np.ascontiguousarray(np.repeat(one, bs, axis=0))

        def once() -> float:
            start = time.perf_counter()
            session.run([OUTPUT], {INPUT: x})
            return (time.perf_counter() - start) * 1000

        result[bs] = timed_median(once, warmup, repeats)
    return result
