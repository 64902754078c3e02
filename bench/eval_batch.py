"""Evaluation images/s of each registry model by batch size, under the ``precision: auto`` policy a
study resolves for it (``pruning.evaluate``: eval mode, no grad), repeats interleaved across the sizes
so a neighbour's load hits every size alike. What the CPU's evaluation batch (``pruning.eval_batch_size``) was chosen from.

    python bench/eval_batch.py [--models lenet5 vgg16] [--sizes 1000 256 64 32] [--images 1000] [--repeats 3]

Fashion-MNIST validation images (32x32, 1 channel) on a registry model with its initial weights:
the speed of a forward pass does not depend on what the weights learned.
"""
from __future__ import annotations

import argparse
import time

import _common
import torch

from models import create_model, list_models
from pruning import eval_batch_size, evaluate, load_dataset, precision_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list_models())
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 256, 128, 64, 32])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default="/usr/share/datasets")
    args = parser.parse_args()
    device = torch.device("cpu")
    _common.header("evaluation images/s by batch size", device)
    print(f"# CPU: {_common.cpu_model()}; the CPU default now: {eval_batch_size(device)}")
    data = load_dataset("fashion-mnist", data_dir=args.data_dir, download=False).subset(val=args.images)
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, num_classes=data.num_classes, in_channels=data.in_channels)
        precision = precision_for("auto", sum(p.numel() for p in model.parameters()), device)
        evaluate(model, data, "val", precision=precision, batch_size=max(args.sizes))  # warm-up
        rates: dict[int, list[float]] = {b: [] for b in args.sizes}
        for _ in range(args.repeats):
            for b in args.sizes:
                start = time.perf_counter()
                evaluate(model, data, "val", precision=precision, batch_size=b)
                rates[b].append(args.images / (time.perf_counter() - start))
        best = max(rates, key=lambda b: sorted(rates[b])[len(rates[b]) // 2])
        cells = "  ".join(f"{b}: {_common.spread(v)}" for b, v in rates.items())
        print(f"{name:<13} {precision}  {cells}  best {best}", flush=True)


if __name__ == "__main__":
    main()
