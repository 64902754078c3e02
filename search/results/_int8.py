"""The INT8 file of an export, measured rather than assumed: calibrated on a stratified draw of the
study's training images through the study's preprocessing, held to an accuracy bar on validation,
then measured from a copy in an empty folder (as a deployment receives it): top-1 on val and test,
top-1 agreement with the FP32 file, file sizes and FP32-vs-INT8 latency with its spread. The report
makes and measures the same file for its recovered front points (:func:`front_int8`, cached in
``int8.json``)."""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pruning import (INPUT, OUTPUT, QUANT_FORMAT, Dataset, ExportError, Int8Settings, atomic_write_text, eval_batches,
                     export_onnx, interleaved_speedup, load_checkpoint, onnx_latency, onnx_predictions, ort_session,
                     quantize_within, to_plain)
from search.config import UsageError
from search.storage import artifact_path
from search.trial import BATCHES, ORT_THREADS, SPEEDUP_REPEATS

EVAL_BATCH = 64  # onnxruntime batches when scoring a split: 256 scored a pruned DenseNet121 1.25x slower (caches)
CALIBRATION_BATCH = 32  # calibration batches: at 256, calibrating a pruned DenseNet121 held 8-24 GB (ORT's arena)
INT8_CACHE = "int8.json"  # the report's INT8 figures, by artifact id and settings


def check_calibration_count(settings: Int8Settings, data: Dataset) -> None:
    """One line before anything is written when the calibration draw cannot be made."""
    available = data.count("train")
    if not 1 <= settings.calibration_images <= available:
        raise UsageError(f"--calibration-images {settings.calibration_images} must be between 1 and the "
                         f"{available} training images of the study's split; e.g. --calibration-images "
                         f"{min(512, available)}")


def _batches(data: Dataset, split: str, size: int = EVAL_BATCH) -> tuple[list[np.ndarray], np.ndarray]:
    pairs = [(x.cpu().numpy(), y.cpu().numpy()) for x, y in eval_batches(data, split, size)]
    return [x for x, _ in pairs], np.concatenate([y for _, y in pairs]) if pairs else np.zeros(0, np.int64)


def int8_figures(fp32: Path, dest: Path, data: Dataset, settings: Int8Settings, *, progress: bool = False) -> dict:
    """Quantize ``fp32`` to ``dest`` within ``settings.max_drop`` and measure it; the sidecar's
    ``int8`` block (accuracies are fractions, drops percentage points, sizes MB = bytes / 10^6)."""
    check_calibration_count(settings, data)
    calibration, _ = _batches(data.subset(train=settings.calibration_images), "train", CALIBRATION_BATCH)
    val, val_y = _batches(data, "val")
    say = (lambda line: print(line, file=sys.stderr)) if progress else (lambda line: None)
    start = time.perf_counter()
    result = quantize_within(fp32, dest, calibration, val, val_y, settings, progress=say)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="int8-verify-") as folder:
        alone = Path(folder) / dest.name  # the INT8 file is measured as a deployment receives it
        shutil.copyfile(dest, alone)
        figures = _measure(fp32, alone, data, val, val_y)
    return {"onnx": dest.name, "format": QUANT_FORMAT, "weights": "int8, per channel", "activations": "int8",
            "calibration": {"images": settings.calibration_images, "method": settings.calibration_method,
                            "draw": f"stratified from the training split, seed {settings.seed}, eval preprocessing"},
            "max_drop_pt": settings.max_drop, "kept_fp32": list(result.kept_fp32), "left_fp32": list(result.left_fp32),
            "quantized_layers": result.quantized_layers, "quantize_seconds": round(seconds, 1),
            **figures, "size_mb": dest.stat().st_size / 1e6, "fp32_size_mb": fp32.stat().st_size / 1e6,
            "measured": "from a copy of the INT8 file in an empty folder, onnxruntime CPU"}


def _measure(fp32: Path, int8: Path, data: Dataset, val: list, val_y: np.ndarray) -> dict:
    test, test_y = _batches(data, "test") if data.has_test else ([], np.zeros(0, np.int64))
    preds = {k: (onnx_predictions(p, val), onnx_predictions(p, test)) for k, p in (("fp32", fp32), ("int8", int8))}
    top1 = {k: (float((v == val_y).mean()), float((t == test_y).mean()) if len(test_y) else None)
            for k, (v, t) in preds.items()}
    both = {k: np.concatenate(v) for k, v in preds.items()}
    example = val[0][:1]
    return {"val_accuracy": top1["int8"][0], "test_accuracy": top1["int8"][1],
            "fp32_val_accuracy": top1["fp32"][0], "fp32_test_accuracy": top1["fp32"][1],
            "val_drop_pt": 100 * (top1["fp32"][0] - top1["int8"][0]),
            "test_drop_pt": None if top1["int8"][1] is None else 100 * (top1["fp32"][1] - top1["int8"][1]),
            "top1_agreement": float((both["fp32"] == both["int8"]).mean()),
            "agreement_images": int(both["fp32"].shape[0]), **_latency(fp32, int8, example)}


def _latency(fp32: Path, int8: Path, example: np.ndarray) -> dict:
    """Median ms of each file at batch 1 and 64 (one intra-op thread), and INT8's speed-up over FP32
    from interleaved repeats (median and range), so a neighbour's load hits both alike."""
    import torch

    x = torch.from_numpy(example)
    ms = {k: onnx_latency(p, x, BATCHES, threads=ORT_THREADS) for k, p in (("fp32", fp32), ("int8", int8))}
    speedup = {}
    for bs in BATCHES:
        batch = np.ascontiguousarray(np.repeat(example, bs, axis=0))
        runs = [ort_timer(ort_session(p, ORT_THREADS), batch) for p in (fp32, int8)]
        speedup[str(bs)] = to_plain(interleaved_speedup(*runs, repeats=SPEEDUP_REPEATS))
    return {"latency_ms": {k: {str(b): v for b, v in t.items()} for k, t in ms.items()}, "threads": ORT_THREADS,
            "speedup": speedup}


def ort_timer(session, batch: np.ndarray):
    def once() -> float:
        start = time.perf_counter()
        session.run([OUTPUT], {INPUT: batch})
        return (time.perf_counter() - start) * 1000
    return once


def int8_table(block: dict) -> str:
    """A short table of the INT8 figures for the console."""
    def pct(v):
        return "—" if v is None else f"{100 * v:.2f} %"
    lat, sp = block["latency_ms"], block["speedup"]
    rows = [("", "FP32", "INT8", "INT8 against FP32"),
            ("val top-1", pct(block["fp32_val_accuracy"]), pct(block["val_accuracy"]), f"{-block['val_drop_pt']:+.2f} pt"),
            ("test top-1", pct(block["fp32_test_accuracy"]), pct(block["test_accuracy"]),
             "—" if block["test_drop_pt"] is None else f"{-block['test_drop_pt']:+.2f} pt"),
            ("size MB", f"{block['fp32_size_mb']:.3f}", f"{block['size_mb']:.3f}",
             f"{block['fp32_size_mb'] / block['size_mb']:.2f}x smaller")]
    for b in lat["fp32"]:
        s = sp[b]
        ratio = "≈ as fast" if s["low"] <= 1 <= s["high"] else \
            f"{s['median']:.2f}x ({s['low']:.2f}-{s['high']:.2f}) " + ("faster" if s["median"] > 1 else "as fast: slower")
        rows.append((f"ms batch {b}", f"{lat['fp32'][b]:.3f}", f"{lat['int8'][b]:.3f}", ratio))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    kept = ", ".join(block["kept_fp32"]) or "none"
    lines.append(f"top-1 agreement with FP32: {100 * block['top1_agreement']:.2f} % of {block['agreement_images']} "
                 f"images; layers kept in FP32: {kept}; onnxruntime CPU, {block['threads']} thread")
    if block.get("left_fp32"):  # what onnxruntime could not quantize, named rather than hidden
        lines.append(f"left in FP32 by onnxruntime's quantizer: {', '.join(block['left_fp32'])}")
    return "\n".join(lines)


def report_settings(data: Dataset) -> Int8Settings:
    """What ``pick --export onnx --int8`` uses by default, with the calibration draw capped at the
    study's training split (a smoke budget's subset may hold fewer than 512 images)."""
    return Int8Settings(calibration_images=min(Int8Settings.calibration_images, data.count("train")))


def _cache_key(artifact: str, settings: Int8Settings) -> str:
    s = settings
    return f"{artifact}|{s.calibration_images}|{s.calibration_method}|{s.max_drop}|{s.seed}"


def _read_cache(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text()) if path.exists() else {}
        return cache if isinstance(cache, dict) else {}
    except ValueError:
        return {}  # a damaged cache is only a cache


def front_int8(out: Path, model: str, items: dict[str, str], data: Dataset, *, progress: bool = False) -> dict[str, dict]:
    """key -> INT8 block of checkpoints given as key -> artifact id: each made and measured as
    ``pick --export onnx --int8`` would with its defaults (:func:`int8_figures`), or ``{"error": line}``
    when INT8 cannot hold the bar; cached in ``int8.json`` by artifact and settings, so a report
    quantizes each checkpoint once. Temporary files only outside the study folder, removed after."""
    settings = report_settings(data)
    cache_file = out / INT8_CACHE
    cache = _read_cache(cache_file)
    todo = [a for a in dict.fromkeys(items.values()) if _cache_key(a, settings) not in cache]
    for artifact in tqdm(todo, desc="INT8 of recovered points", unit="model", leave=False, disable=not progress or not todo):
        cache[_cache_key(artifact, settings)] = _int8_of(out, model, artifact, data, settings)
    if todo:
        try:
            atomic_write_text(cache_file, json.dumps(cache, indent=1))
        except OSError:
            pass  # a read-only copy of a study (how results are shared) is read, not cached into
    return {key: cache[_cache_key(a, settings)] for key, a in items.items()}


def _int8_of(out: Path, model: str, artifact: str, data: Dataset, settings: Int8Settings) -> dict:
    start = time.perf_counter()
    net = load_checkpoint(artifact_path(out, artifact), expect_model=model).model.float().cpu().eval()
    with tempfile.TemporaryDirectory(prefix="int8-report-") as tmp:
        try:
            fp32 = export_onnx(net, Path(tmp) / "point.onnx", data.example_input(1).cpu())
            block = int8_figures(fp32, Path(tmp) / "point.int8.onnx", data, settings)
        except ExportError as exc:  # one point's INT8 failing is a figure of the report, not its end
            return {"error": str(exc)}
    block.pop("onnx")  # a temporary name
    block["report_seconds"] = round(time.perf_counter() - start, 1)  # what report.int8 costs per point
    return block
