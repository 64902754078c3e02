"""Deployment: ONNX export with a dynamic batch size, verified against onnxruntime, and latency
measured on onnxruntime (CPU). onnx, onnxscript and onnxruntime are imported here only."""
from __future__ import annotations

import copy

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pruning._errors import PruningError
from pruning._io import current_umask
from pruning._measure import timed_median

INPUT, OUTPUT = "images", "logits"
# onnxruntime against PyTorch on the same fp32 inputs: both run fp32 kernels that sum in different
# orders, so logits agree to about 1e-5 of their scale; these bounds leave room for deep nets.
ATOL, RTOL = 1e-3, 1e-3
# onnxruntime may be this many times further than PyTorch fp32 from the float64 answer: another valid
# fp32 summation order (fused Conv+BN, blocked layouts) is a few times noisier at most, measured 0.6x
# on an ill-conditioned pruned EfficientNet-B0; a wrong operator is off by the logits' own scale.
NOISE_FACTOR = 4.0
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
    # measured only when the logits differ beyond atol/rtol: each runtime's largest difference from
    # PyTorch in float64, so a model whose fp32 answer is itself that uncertain is told from a bad export
    ort_float64_error: float | None = None
    torch_float64_error: float | None = None


# protobuf's hard limit on one message is 2 GiB; weights stay embedded with room for the graph below it.
EMBED_LIMIT_BYTES = 1_800_000_000


def external_data_path(onnx: Path) -> Path:
    """The stable name of an export's weights when they are too large to embed (``<name>.onnx.data``)."""
    return onnx.with_name(onnx.name + ".data")


def uses_external_data(onnx: Path) -> bool:
    """Whether the ``.onnx`` at ``onnx`` keeps any weights outside itself (read without loading them)."""
    import onnx as onnx_lib

    proto = onnx_lib.load(str(onnx), load_external_data=False)
    return any(t.data_location == onnx_lib.TensorProto.EXTERNAL for t in proto.graph.initializer)


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def export_onnx(model: nn.Module, path: str | Path, example_input: torch.Tensor) -> Path:
    """Write ``model`` (eval mode, CPU, fp32) as ONNX with a dynamic batch dimension, atomically.

    The file stands alone: weights are embedded below :data:`EMBED_LIMIT_BYTES` (bytes); above it
    they go to :func:`external_data_path`, the one name the ``.onnx`` refers to. The export is made
    in a private temp folder beside ``path`` and moved into place, so no temp file is left behind.
    """
    path = Path(path)
    # a copy in the standard layout: a channels_last model (the bf16 path) makes the exporter
    # specialize the batch dimension, and the caller's model keeps its layout
    model = copy.deepcopy(model).float().cpu().eval().to(memory_format=torch.contiguous_format)
    x = example_input[:1].float().cpu().contiguous()
    external = _weight_bytes(model) > EMBED_LIMIT_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp") as tmp:
        staged = Path(tmp) / path.name  # the final name, so the external data's recorded name is stable
        try:
            _torch_export(model, x, staged, external)
        except Exception as exc:  # the exporter fails in many ways; the user needs one line
            detail = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise ExportError(f"ONNX export of the model failed: {detail}") from None
        data = external_data_path(staged)
        if data.exists():
            _publish(data, external_data_path(path))
        _publish(staged, path)
    return path


def _publish(staged: Path, target: Path) -> None:
    os.chmod(staged, 0o666 & ~current_umask())
    os.replace(staged, target)


def _torch_export(model: nn.Module, x: torch.Tensor, dest: Path, external: bool) -> None:
    batch = torch.export.Dim("batch", min=1, max=65_536)
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), _quiet_loggers():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(dest), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_shapes=({0: batch},), verbose=False, external_data=external)


def verify_standalone(path: str | Path, model: nn.Module, batch: torch.Tensor) -> Verification:
    """:func:`verify_onnx` on a copy of the export (and its external data, if any) in an empty folder,
    as a deployment receives it: an export that needs anything else beside it fails here."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="onnx-verify-") as folder:
        copy = Path(folder) / path.name
        shutil.copyfile(path, copy)
        if external_data_path(path).exists():
            shutil.copyfile(external_data_path(path), external_data_path(copy))
        return verify_onnx(copy, model, batch)


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


def ort_session(path: Path, threads: int | None = None):
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
    figures when onnxruntime is wrong.

    Wrong means: a non-finite logit where PyTorch has none, or logits beyond ``atol + rtol * |logit|``
    of PyTorch's that are also further from the exact answer (PyTorch in float64) than
    :data:`NOISE_FACTOR` times PyTorch fp32's own error. A model with near-constant channels under
    BatchNorm (tiny running variance, large mean: common after pruning and recalibration) turns fp32
    rounding into logit differences of 1e-2 and more; there any fp32 runtime, PyTorch included, is
    that far off, and holding onnxruntime to 1e-3 of PyTorch refused faithful exports (issue 39)."""
    x = batch.float().cpu().contiguous()
    with torch.no_grad():
        expected = model.float().cpu().eval()(x).numpy()
    got = _run_onnx(Path(path), x)
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    agree = float((got.argmax(1) == expected.argmax(1)).mean()) if got.shape == expected.shape else 0.0
    result = Verification(batch=int(x.shape[0]), max_abs_diff=diff, atol=atol, rtol=rtol, top1_agreement=agree)
    figures = f"on a batch of {x.shape[0]} (tolerance {atol} + {rtol} x |logit|; top-1 agreement {agree:.1%})"
    if not np.isfinite(got).all() and np.isfinite(expected).all():
        raise ExportError(f"onnxruntime's logits are not finite where PyTorch's are {figures}")
    if got.shape == expected.shape and np.allclose(got, expected, atol=atol, rtol=rtol):
        return result
    exact = _float64_logits(model, x)
    ort_error, torch_error = (float(np.abs(y - exact).max()) for y in (got, expected))
    result = replace(result, ort_float64_error=ort_error, torch_float64_error=torch_error)
    if ort_error <= NOISE_FACTOR * max(torch_error, atol):
        return result
    raise ExportError(f"onnxruntime's logits differ from PyTorch's by up to {diff:.3g} {figures}; against "
                      f"float64 onnxruntime is off by {ort_error:.3g}, PyTorch fp32 by {torch_error:.3g}")


def _run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    try:
        return ort_session(path).run([OUTPUT], {INPUT: x.numpy()})[0]
    except Exception as exc:  # onnxruntime raises its own types for a file it cannot load or run
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ExportError(f"onnxruntime cannot run {path.name}: {detail}") from None


def _float64_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The exact answer, to the precision that matters next to fp32: a float64 copy of the model."""
    exact = copy.deepcopy(model).cpu().eval().double()
    with torch.no_grad():
        return exact(x.double()).numpy()


def onnx_latency(path: str | Path, example_input: torch.Tensor, batch_sizes: tuple[int, ...] = (1, 64), *,
                 threads: int | None = None, warmup: int = LATENCY_WARMUP,
                 repeats: int = LATENCY_REPEATS) -> dict[int, float]:
    """Median milliseconds per forward pass on onnxruntime's CPU provider, per batch size, after
    ``warmup`` unmeasured runs; ``threads`` intra-op threads (None: onnxruntime's default, all cores)."""
    session = ort_session(Path(path), threads)
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
