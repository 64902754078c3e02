"""Static INT8 with onnxruntime's own tools: ``quant_pre_process`` (shape inference and fusions),
then ``quantize_static`` with per-channel weights, calibrated on the images it is given; and an
accuracy bar that keeps the most sensitive layers in FP32 until the drop holds (the way NNCF's
``quantize_with_accuracy_control`` does, its ranking from onnxruntime's ``qdq_loss_debug``). onnxruntime.quantization is imported here only."""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pruning._export import INPUT, ExportError, ort_session

# QDQ (QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into integer kernels) rather than
# QOperator: the probe had QOperator 0.9x-1.2x of QDQ's time, inside a busy machine's noise,
# and QDQ is the format onnxruntime documents for CPU and every other execution provider.
QUANT_FORMAT = "qdq"
# MinMax: on LeNet5 and VGG16 its drop was as small as entropy's and percentile's at a fraction of
# their calibration time (docs/measurements.md, bench/int8.py)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANTIZABLE = ("Conv", "Gemm", "MatMul")  # the ops holding the weights: what a layer kept in FP32 means
NOISE_IMAGES = 64  # calibration images the layers' quantization noise is measured on
NOISE_BATCH = 8  # images per pass of the noise measurement (every layer's input is fetched)


@dataclass(frozen=True)
class Int8Settings:
    """How an INT8 file is made and what it must keep.

    Attributes:
        calibration_images: training images the activation ranges are calibrated on.
        calibration_method: one of :data:`CALIBRATION_METHODS`.
        max_drop: the most validation top-1 (percentage points) INT8 may lose against FP32.
        seed: the stratified draw of calibration images.
    """

    calibration_images: int = 512
    calibration_method: str = "minmax"
    max_drop: float = 0.5
    seed: int = 0


def _calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    if name not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {name!r} is not one of: {', '.join(CALIBRATION_METHODS)}")
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def _reader(batches: Sequence[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {INPUT: batch}

        def rewind(self) -> None:
            self._it = iter(batches)

    return Reader()


@contextlib.contextmanager
def _quiet():
    levels = {n: logging.getLogger(n).level for n in ("root", "onnxruntime")}
    for n in levels:
        logging.getLogger(None if n == "root" else n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(None if n == "root" else n).setLevel(level)


def preprocess(fp32: Path, dest: Path) -> Path:
    """``quant_pre_process``: without it ``quantize_static``'s file ran slower than FP32 here (0.91-0.95x
    on VGG16); with it 3.8-4.6x faster (the issue's probe)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _quiet():
            quant_pre_process(str(fp32), str(dest))
    except Exception as exc:  # shape inference fails on ops it does not know; the user needs one line
        raise ExportError(f"onnxruntime's quantization pre-processing failed: {' '.join(str(exc).split())[:200]}") from None
    return dest


def quantizable_nodes(model: Path) -> list[str]:
    """Names of the nodes holding weights (:data:`QUANTIZABLE` ops), in graph order."""
    import onnx

    # an unnamed node cannot be named in nodes_to_exclude; the dynamo exporter names them all
    return [n.name for n in onnx.load(str(model)).graph.node if n.op_type in QUANTIZABLE and n.name]


def unquantized_layers(model: Path) -> list[str]:
    """``name (OpType)`` of the :data:`QUANTIZABLE` nodes of a quantized QDQ file whose input or weight
    does not come through a DequantizeLinear: layers left in FP32 (onnxruntime's quantizer skips an op
    it has no rule for, or a weight it cannot quantize)."""
    import onnx

    graph = onnx.load(str(model)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [f"{n.name} ({n.op_type})" for n in graph.node
            if n.op_type in QUANTIZABLE and not all(i in dequantized for i in n.input[:2])]


def quantize(pre: Path, dest: Path, batches: Sequence[np.ndarray], *, method: str, cache: Path,
             exclude: Sequence[str] = ()) -> Path:
    """``quantize_static`` of a pre-processed file: per-channel INT8 weights, INT8 activations
    calibrated on ``batches`` (calibrated once, then read from ``cache``), ``exclude`` kept FP32."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    fmt = QuantFormat.QDQ if QUANT_FORMAT == "qdq" else QuantFormat.QOperator
    try:
        with _quiet():
            quantize_static(str(pre), str(dest), _reader(batches), quant_format=fmt, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=_calibration_method(method), nodes_to_exclude=list(exclude),
                            calibration_cache_path=str(cache))
    except ExportError:
        raise
    except Exception as exc:  # onnxruntime's quantizer raises many types; the user needs one line
        raise ExportError(f"onnxruntime could not quantize the model: {' '.join(str(exc).split())[:200]}") from None
    return dest


def onnx_predictions(path: Path, batches: Sequence[np.ndarray]) -> np.ndarray:
    """Top-1 class of every image of ``batches`` on onnxruntime's CPU provider."""
    session = ort_session(Path(path))
    return np.concatenate([session.run(None, {INPUT: b})[0].argmax(1) for b in batches]) if batches else \
        np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Int8Result:
    """The INT8 file that holds the accuracy bar: its validation top-1 (a fraction), the FP32
    file's, and the layers kept in FP32 to get there (most sensitive first)."""

    path: Path
    val_accuracy: float
    fp32_val_accuracy: float
    kept_fp32: tuple[str, ...]
    quantized_layers: int
    left_fp32: tuple[str, ...] = ()  # layers onnxruntime left in FP32 beside those kept on purpose


def quantize_within(fp32: Path, dest: Path, calibration: Sequence[np.ndarray], val: Sequence[np.ndarray],
                    val_labels: np.ndarray, settings: Int8Settings, *,
                    progress: Callable[[str], None] = lambda line: None) -> Int8Result:
    """INT8 of ``fp32`` at ``dest`` whose validation top-1 is at most ``settings.max_drop`` points under
    FP32's. Over the bar, the quantized layers are ranked by the quantization noise each one's input
    and weights take (:func:`noise_ranking`) and the most sensitive are kept in FP32, the fewest
    bisected, until the drop holds. Raises :class:`ExportError` in one line when it holds only with
    every layer in FP32."""
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        pre, cache = preprocess(fp32, Path(tmp) / "pre.onnx"), Path(tmp) / "calibration.json"
        nodes = quantizable_nodes(pre)
        if not nodes:
            raise ExportError("the model has no Conv, Gemm or MatMul layer for INT8 to quantize; ship the FP32 file")
        base = float((onnx_predictions(fp32, val) == val_labels).mean())

        def accuracy_with(exclude: Sequence[str]) -> float:
            quantize(pre, dest, calibration, method=settings.calibration_method, cache=cache, exclude=exclude)
            return float((onnx_predictions(dest, val) == val_labels).mean())

        def rank() -> list[str]:
            every = quantize(pre, Path(tmp) / "every.onnx", calibration, method=settings.calibration_method,
                             cache=cache)
            return noise_ranking(pre, every, nodes, np.concatenate(calibration)[:NOISE_IMAGES], Path(tmp))

        try:
            kept, acc = keep_sensitive(nodes, base, accuracy_with, settings.max_drop, rank=rank, progress=progress)
        except BarMissed as exc:
            if settings.calibration_method == "percentile":
                raise
            # a ResNet50 front point (2026-12-07): 14.7 pts lost at minmax (entropy alike, quantizing only
            # Conv/Gemm/MatMul 14.2), 4.6 at percentile, which clips the activations' outliers
            raise BarMissed(f"{exc}, or calibrate with search.pick / search.export --calibration-method percentile "
                            f"(it clips the activations' outliers; docs/usage.md, \"INT8\")") from None
        left = tuple(n for n in unquantized_layers(dest) if n.rsplit(" (", 1)[0] not in kept)  # dest: the kept run's
        return Int8Result(dest, acc, base, kept, len(nodes) - len(kept) - len(left), left)


def noise_ranking(pre: Path, int8: Path, nodes: Sequence[str], images: np.ndarray, tmp: Path) -> list[str]:
    """``nodes`` most sensitive first, from one pass of the all-quantized QDQ file ``int8`` over
    ``images``: a node's sensitivity is the relative noise power its quantization adds, that of its
    input activation (the tensor before its QuantizeLinear against its DequantizeLinear output,
    accumulated batch by batch: keeping every tensor of DenseNet121 for 64 images took 24 GB) plus that
    of its weights (onnxruntime's ``qdq_loss_debug`` SQNR against ``pre``'s). One pass instead of a
    quantize-and-score per node: DenseNet121's 121 layers took 129 runs per front point, about 10
    minutes on a quiet 2-core CPU (docs/measurements.md, "DenseNet121 `cpu` again")."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as debug

    model = onnx.load(str(int8))
    feeds = {i.name for i in model.graph.input}
    pairs = {}  # node -> (its input before quantization, the same after QuantizeLinear + DequantizeLinear)
    for n in model.graph.node:
        if n.name in nodes and n.input and n.input[0].endswith(debug.DEQUANT_OUTPUT_SUFFIX):
            pairs[n.name] = (n.input[0][:-len(debug.DEQUANT_OUTPUT_SUFFIX)], n.input[0])
    fetch = sorted({t for pair in pairs.values() for t in pair} - feeds)
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in fetch if t not in outputs)
    onnx.save(model, str(tmp / "noise.onnx"))
    session = ort_session(tmp / "noise.onnx")
    signal, noise = dict.fromkeys(pairs, 0.0), dict.fromkeys(pairs, 0.0)
    for i in range(0, len(images), NOISE_BATCH):
        batch = images[i:i + NOISE_BATCH]
        got = dict(zip(fetch, session.run(fetch, {INPUT: batch}))) | {INPUT: batch}
        for node, (before, after) in pairs.items():
            x = got[before].astype(np.float64)
            signal[node] += float(np.square(x).sum())
            noise[node] += float(np.square(x - got[after]).sum())
    with _quiet():
        weights = debug.compute_weight_error(debug.create_weight_matching(str(pre), str(int8)))
    inputs = {n.name: n.input for n in onnx.load(str(pre)).graph.node}

    def relative(node: str) -> float:
        total = noise[node] / signal[node] if signal.get(node) else 0.0
        db = weights.get(inputs[node][1]) if len(inputs[node]) > 1 else None
        return total + (10 ** (-float(db) / 10) if db is not None and np.isfinite(db) else 0.0)
    return sorted(nodes, key=lambda node: -relative(node))  # stable: graph order among equals


class BarMissed(ExportError):
    """INT8 cannot hold the accuracy bar (not a failure of the tools: a property of the model and its
    calibration)."""


def keep_sensitive(nodes: Sequence[str], fp32_accuracy: float, accuracy_with: Callable[[Sequence[str]], float],
                   max_drop: float, *, rank: Callable[[], Sequence[str]],
                   progress: Callable[[str], None] = lambda line: None) -> tuple[tuple[str, ...], float]:
    """The fewest most sensitive ``nodes`` to keep in FP32 so that ``accuracy_with(kept)`` (a fraction)
    is at most ``max_drop`` points under ``fp32_accuracy``, and that accuracy; ``rank()`` orders the
    nodes most sensitive first (called only when the bar misses). Raises :class:`ExportError` when the
    bar holds only with every node in FP32 (that is the FP32 file, not an INT8 one).

    Each ``accuracy_with`` quantizes and scores the whole model, so the calls are the cost. Keeping a
    layer in FP32 is taken to lose no accuracy, so the bar is first tried with every node kept — when
    even that misses, the operators onnxruntime quantizes besides them lose it, and no ranking can
    help — and the fewest to keep is bisected over the ranking: 2 + log2(n) calls at most. (Ranking
    each node by a call with it alone kept, as this did before, made ResNet50's 54 layers 107 calls,
    9 minutes of a report, and DenseNet121's 121 layers 129.)"""
    acc = accuracy_with(())
    if _holds(fp32_accuracy, acc, max_drop):
        return (), acc
    n = len(nodes)
    every = accuracy_with(list(nodes))
    if not _holds(fp32_accuracy, every, max_drop):
        raise BarMissed(f"INT8 cannot hold --max-int8-drop {max_drop}: even with all {n} Conv/Gemm/MatMul layers kept "
                        f"in FP32 val top-1 is {100 * every:.2f} % against FP32's {100 * fp32_accuracy:.2f} % (the "
                        f"quantized activations lose it); ship the FP32 file or raise the bar")
    progress(f"INT8 loses {100 * (fp32_accuracy - acc):.2f} pt of val top-1 (bar {max_drop}); keeping the noisiest "
             f"of {n} layers in FP32")
    ranked = list(rank())
    # the fewest of the ranking to keep: misses with ``low`` kept (its accuracy ``missed``), holds with ``high``
    low, missed, high, held = 0, acc, n, every
    while high - low > 1:
        mid = (low + high) // 2
        got = accuracy_with(ranked[:mid])
        if _holds(fp32_accuracy, got, max_drop):
            high, held = mid, got
        else:
            low, missed = mid, got
    if high == n:
        raise BarMissed(f"INT8 cannot hold --max-int8-drop {max_drop}: with {n - 1} of {n} layers kept in FP32 val "
                        f"top-1 is {100 * missed:.2f} % against FP32's {100 * fp32_accuracy:.2f} %; ship the FP32 file "
                        f"or raise the bar")
    return tuple(ranked[:high]), held


def _holds(fp32: float, int8: float, max_drop: float) -> bool:
    return 100 * (fp32 - int8) <= max_drop + 1e-9
