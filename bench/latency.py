"""Size is not speed: MACs reduction against measured onnxruntime latency speed-up, at batch 1 and 64.

    python bench/latency.py [--study studies/lenet5-fashion-mnist] [--repeats 5] [--threads 1]

Models: the front of a LeNet5 study (default budget) against its baseline, and VGG16-BN pruned with
uniform plans (0.3, 0.5, 0.7; weights do not change latency) against the unpruned VGG16. Each
latency is measured --repeats times (each the median of up to 50 timed runs after 10 warm-ups, see
pruning.onnx_latency); the table gives the median speed-up and its min-max over the repeats.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import _common
import pandas as pd
import torch

from models import create_model
from pruning import apply_plan, export_onnx, load_checkpoint, measure, onnx_latency, prunable_units


def timings(model, example, repeats: int, threads: int) -> dict[int, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "m.onnx", example)
        runs = [onnx_latency(path, example, (1, 64), threads=threads) for _ in range(repeats)]
    return {b: [r[b] for r in runs] for b in (1, 64)}


def compare(name: str, base, base_t, model, example, repeats: int, threads: int) -> str:
    t = timings(model, example, repeats, threads)
    macs = 100 * (1 - measure(model, example).macs / measure(base, example).macs)
    cells = []
    for b in (1, 64):
        ups = [bt / mt for bt, mt in zip(base_t[b], t[b])]
        cells.append(f"{statistics.median(t[b]):.3f} ms, {statistics.median(ups):.2f}x ({min(ups):.2f}-{max(ups):.2f})")
    return f"| {name} | {macs:.1f} % | {cells[0]} | {cells[1]} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="studies/lenet5-fashion-mnist")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    _common.header("MACs reduction vs onnxruntime latency speed-up", torch.device("cpu"))
    print(f"onnxruntime CPU, {args.threads} thread(s); speed-up = baseline latency / model latency, "
          f"median (min-max) over {args.repeats} repeats\n")
    print("| model | MACs reduction | batch 1: latency, speed-up | batch 64: latency, speed-up |\n|---|---|---|---|")
    study = Path(args.study)
    if (study / "pareto.csv").exists():
        base = load_checkpoint(study / "baseline.pt").model
        example = torch.zeros(1, base.get_submodule("conv1").in_channels, 32, 32)
        base_t = timings(base, example, args.repeats, args.threads)
        for _, row in pd.read_csv(study / "pareto.csv").iterrows():
            model = load_checkpoint(study / row["checkpoint"]).model
            print(compare(f"lenet5 trial {int(row['trial'])} ({row['pruned_pct']:.0f} % smaller)", base, base_t, model,
                          example, args.repeats, args.threads), flush=True)
    else:
        print(f"(no LeNet5 study at {study}: run make search MODEL=lenet5 first)")
    vgg = create_model("vgg16", in_channels=1).eval()
    example = torch.zeros(1, 1, 32, 32)
    base_t = timings(vgg, example, args.repeats, args.threads)
    units = prunable_units(vgg, example)
    for ratio in (0.3, 0.5, 0.7):
        pruned, _ = apply_plan(vgg, {u.name: ratio for u in units}, example_input=example, round_to=8)
        print(compare(f"vgg16 uniform {ratio}", vgg, base_t, pruned, example, args.repeats, args.threads), flush=True)


if __name__ == "__main__":
    main()
