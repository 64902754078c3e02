"""INT8 after pruning, measured: FP32 and INT8 accuracy (val, test), agreement, file sizes, latency at
batch 1 and 64 with the speed-up's spread from interleaved repeats; QDQ against QOperator; and
round_to 4 / 8 / 16 at equal size: FP32 and INT8 latency, and accuracy from a trained checkpoint.

    python bench/int8.py [--models lenet5 vgg16] [--vgg-steps 150] [--round-to [--checkpoint vgg16.pt]]
    python bench/int8.py --models --study studies/vgg16-fashion-mnist-cpu [--study-model vgg16 --study-budget cpu]

LeNet5 is trained 3 epochs on Fashion-MNIST, pruned 50 % uniform (L1) and fine-tuned 1 epoch; VGG16-BN
is trained --vgg-steps steps (a CPU cannot afford its study here: its accuracy figures show what INT8
keeps, not what VGG16 reaches), pruned 50 % uniform and BatchNorm-recalibrated. One onnxruntime
intra-op thread, as the report's figures.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import _common  # puts the repository on the path; cpu_model
import torch

from models import create_model
from pruning import (TrainConfig, apply_plan, evaluate, export_onnx, interleaved_speedup, load_checkpoint, load_dataset,
                     onnx_latency, prunable_units, recalibrate_bn, train)
from pruning import Int8Settings, ort_session
from pruning import quantization as quant
from search.results import int8_figures, int8_table, ort_timer


def prepared(name: str, data, steps: int, round_to: int | None = 8):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1)
    recipe = TrainConfig(epochs=3, lr=0.05) if name == "lenet5" else TrainConfig(steps=steps, batch_size=64, lr=0.05)
    train(model, data, recipe, progress=False)
    x = data.example_input(1).cpu()
    pruned, _ = apply_plan(model, {u.name: 0.5 for u in prunable_units(model, x)}, example_input=x, round_to=round_to)
    if name == "lenet5":
        train(pruned, data, TrainConfig(epochs=1, lr=0.01), progress=False)
    else:
        recalibrate_bn(pruned, [data.inputs("train", 64, i * 64) for i in range(20)])
    return model.eval(), pruned.eval()


def shipped(name: str, data, tmp: Path, steps: int, fmt: str) -> dict:
    base, pruned = prepared(name, data, steps)
    x = data.inputs("val", 64).cpu()
    full, small = export_onnx(base, tmp / f"{name}-full.onnx", x), export_onnx(pruned, tmp / f"{name}.onnx", x)
    quant.QUANT_FORMAT = fmt
    start = time.perf_counter()
    block = int8_figures(small, tmp / f"{name}.{fmt}.onnx", data, Int8Settings())
    block["seconds"] = time.perf_counter() - start
    runs = [ort_timer(ort_session(p, 1), x[:b].numpy()) for b in (1, 64) for p in (full, tmp / block["onnx"])]
    block["vs_unpruned_fp32"] = {b: interleaved_speedup(runs[2 * i], runs[2 * i + 1], repeats=5)
                                 for i, b in enumerate((1, 64))}
    block["unpruned_ms"] = onnx_latency(full, x, (1, 64), threads=1)
    block["unpruned_size_mb"] = full.stat().st_size / 1e6
    return block


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _equal_size(model, units, x, target: int, r: int | None, ratio: float):
    """The uniform plan rounded to ``r`` whose parameter count is nearest ``target`` (the ratio
    bisected: rounding moves every layer's width, so the same ratio is not the same size)."""
    low, high = max(0.0, ratio - 0.15), min(0.95, ratio + 0.15)
    best = None
    for _ in range(10):
        q = (low + high) / 2
        pruned, _ = apply_plan(model, {u.name: q for u in units}, example_input=x[:1], round_to=r)
        n = _params(pruned)
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (pruned, n, q)
        low, high = (q, high) if n > target else (low, q)
    return best


def round_to_effect(data, tmp: Path, checkpoint: str | None, steps: int, ratio: float = 0.5) -> None:
    """round_to None / 4 / 8 / 16 on VGG16-BN at equal size: FP32 and INT8 latency against the
    unrounded plan (interleaved repeats), and, from a trained checkpoint, accuracy after the same
    BatchNorm recalibration and ``steps``-step fine-tune."""
    x = data.inputs("val", 64).cpu()
    torch.manual_seed(0)
    model = load_checkpoint(checkpoint, expect_model="vgg16").model.float().cpu().eval() if checkpoint else \
        create_model("vgg16", num_classes=10, in_channels=1).eval()
    print(f"\n## round_to on VGG16-BN, uniform {ratio} at equal size "
          + (f"(from {checkpoint}, BN recalibrated, {steps} fine-tune steps)" if checkpoint else "(random weights: latency only)"))
    units = prunable_units(model, x[:1])
    first, _ = apply_plan(model, {u.name: ratio for u in units}, example_input=x[:1])
    target = _params(first)
    files, rows = {}, {}
    for r in (None, 4, 8, 16):
        pruned, n, q = (first, target, ratio) if r is None else _equal_size(model, units, x, target, r, ratio)
        train_x = data.inputs("train", 20 * 64)
        recalibrate_bn(pruned, [train_x[i * 64:(i + 1) * 64] for i in range(20)], precision="fp32")
        row = {"params": n, "ratio": q}
        if checkpoint:
            train(pruned, data, TrainConfig(steps=steps, batch_size=64, lr=0.01, seed=0), progress=False)
            row["val"], row["test"] = evaluate(pruned, data, "val"), evaluate(pruned, data, "test")
        f = export_onnx(pruned.eval(), tmp / f"r{r}.onnx", x)
        block = int8_figures(f, tmp / f"r{r}.int8.onnx", data, Int8Settings())
        row["int8_val"], row["int8_test"] = block["val_accuracy"], block["test_accuracy"]
        files[r], rows[r] = (f, tmp / f"r{r}.int8.onnx"), row
    print("| round_to | params | ratio | FP32 val / test | INT8 val / test | FP32 speed-up b1 / b64 | INT8 speed-up b1 / b64 |")
    print("|---|---|---|---|---|---|---|")
    for r in (None, 4, 8, 16):
        row, cells = rows[r], []
        for kind in (0, 1):
            for b in (1, 64):
                if r is None:
                    continue
                runs = [ort_timer(ort_session(files[k][kind], 1), x[:b].numpy()) for k in (None, r)]
                s = interleaved_speedup(*runs, repeats=5)
                cells.append(f"{s.median:.2f}x ({s.low:.2f}-{s.high:.2f})")
        acc = f"{100 * row['val']:.2f} / {100 * row['test']:.2f}" if "val" in row else "-"
        speed = (f"{cells[0]} / {cells[1]} | {cells[2]} / {cells[3]}") if cells else "1 (reference) | 1 (reference)"
        print(f"| {r or 'none'} | {row['params']:,} | {row['ratio']:.3f} | {acc} | "
              f"{100 * row['int8_val']:.2f} / {100 * row['int8_test']:.2f} | {speed} |")


def headline_of(study: Path, model: str, budget: str, tmp: Path) -> None:
    """A finished study's headline as a user ships it: ``search.pick --max-drop <the report's bar>
    --export onnx --int8`` into a temporary folder; its INT8 block, and the unpruned baseline's FP32
    file against the pruned FP32 and INT8 ones (interleaved repeats)."""
    import json
    import subprocess
    import sys

    import yaml

    bar = (yaml.safe_load((study / "config.resolved.yaml").read_text()).get("report") or {}).get("headline_max_drop", 1.0)
    save = tmp / "headline.pt"
    subprocess.run([sys.executable, "-m", "search.pick", "--model", model, "--budget", budget, "--out", str(study),
                    "--max-drop", str(bar), "--save", str(save), "--export", "onnx", "--int8"], check=True,
                   cwd=_common.REPO, stdout=subprocess.DEVNULL)
    side = json.loads(save.with_suffix(".json").read_text())
    block = side["int8"]
    base = load_checkpoint(study / "baseline.pt", expect_model=model).model.float().cpu().eval()
    x = torch.randn(64, *side["input"]["shape"][1:])
    full = export_onnx(base, tmp / "baseline.onnx", x)
    print(f"\n## {model} `{budget}` headline of {study} (pick --max-drop {bar} --export onnx --int8)")
    print(int8_table(block))
    files = {"unpruned FP32": full, "pruned FP32": save.with_suffix(".onnx"), "pruned INT8": tmp / "headline.int8.onnx"}
    print("sizes MB: " + ", ".join(f"{k} {p.stat().st_size / 1e6:.2f}" for k, p in files.items()))
    for b in (1, 64):
        for name in ("pruned FP32", "pruned INT8"):
            runs = [ort_timer(ort_session(files[k], 1), x[:b].numpy()) for k in ("unpruned FP32", name)]
            s = interleaved_speedup(*runs, repeats=5)
            print(f"{name} vs unpruned FP32, batch {b}: {s.median:.2f}x ({s.low:.2f}-{s.high:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="*", default=["lenet5", "vgg16"], help="none: only --round-to")
    parser.add_argument("--vgg-steps", type=int, default=150)
    parser.add_argument("--formats", nargs="+", default=["qdq", "qoperator"])
    parser.add_argument("--round-to", action="store_true")
    parser.add_argument("--checkpoint", help="a trained VGG16 (e.g. a cpu study's baseline.pt) for round_to's accuracy")
    parser.add_argument("--study", nargs="+", default=[], help="finished study folders: their headline as INT8")
    parser.add_argument("--study-model", default="vgg16")
    parser.add_argument("--study-budget", default="cpu")
    parser.add_argument("--round-to-ratio", type=float, default=0.4,
                        help="the uniform ratio (0.5 halves VGG16's widths, all multiples of 16 already)")
    parser.add_argument("--round-to-steps", type=int, default=100, help="fine-tune steps after pruning (the cpu budget's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# bench/int8.py {' '.join(os.sys.argv[1:])}\n# CPU: {_common.cpu_model()}, {os.cpu_count()} cores; "
          f"load average at start {os.getloadavg()}")
    data = load_dataset("fashion-mnist", data_dir=_common.REPO / "data", download=False).subset(val=2000, test=2000)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            for fmt in args.formats:
                block = shipped(name, data, Path(folder), args.vgg_steps, fmt)
                print(f"\n## {name}, pruned 50 % uniform, INT8 {fmt} ({block['seconds']:.0f} s to make and measure)")
                print(int8_table(block))
                v = block["vs_unpruned_fp32"]
                print(f"unpruned FP32: {block['unpruned_size_mb']:.3f} MB, {block['unpruned_ms'][1]:.3f} / "
                      f"{block['unpruned_ms'][64]:.2f} ms; pruned INT8 vs unpruned FP32: "
                      + ", ".join(f"batch {b} {s.median:.2f}x ({s.low:.2f}-{s.high:.2f})" for b, s in v.items()))
        for study in args.study:
            headline_of(Path(study), args.study_model, args.study_budget, Path(folder))
        if args.round_to:
            round_to_effect(data, Path(folder), args.checkpoint, args.round_to_steps, args.round_to_ratio)
    print(f"# load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
