"""Does bf16 autocast keep accuracy? A short training run in fp32 and in bf16 (+ channels_last),
over several seeds, interleaved (fp32 seed 0, bf16 seed 0, fp32 seed 1, ...), on Fashion-MNIST.

    python bench/bf16_accuracy.py [--models lenet5 vgg16] [--seeds 3] [--steps 300] [--train-subset 6000]

Pass: the bf16 median validation accuracy lies within the fp32 runs' seed spread (min-max).
The validation split is evaluated in the run's own precision.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import _common  # noqa: F401  (puts the repository on sys.path)
import torch

from models import create_model
from pruning import TrainConfig, evaluate, load_dataset, train

BATCH = {"lenet5": 128}  # the big models: small batches, as in bench/throughput.py
BIG_BATCH = 32


def one_run(name: str, data, precision: str, seed: int, steps: int) -> tuple[float, float]:
    """(val accuracy as a fraction, seconds) of ``steps`` SGD steps from scratch."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10, in_channels=1)
    cfg = TrainConfig(steps=steps, batch_size=BATCH.get(name, BIG_BATCH), lr=0.05, seed=seed, precision=precision)
    start = time.perf_counter()
    train(model, data, cfg, progress=False)
    return evaluate(model, data, "val", precision=precision), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["lenet5"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    parser.add_argument("--train-subset", type=int, default=0, help="training images used (default: all)")
    args = parser.parse_args()
    _common.header("bf16 autocast vs fp32: validation accuracy after a short run", torch.device("cpu"))
    data = load_dataset("fashion-mnist", download=False)
    if args.train_subset:
        data = data.subset(train=args.train_subset)  # every class in proportion
    for name in args.models:
        acc: dict[str, list[float]] = {"fp32": [], "bf16": []}
        secs: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for seed in range(args.seeds):
            for precision in acc:
                a, s = one_run(name, data, precision, seed, args.steps)
                acc[precision].append(100 * a)
                secs[precision].append(s)
        inside = min(acc["fp32"]) <= statistics.median(acc["bf16"]) <= max(acc["fp32"])
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
        for precision in acc:
            print(f"{name:<10} {precision}: val acc % {_common.spread(acc[precision])}, "
                  f"s/run {_common.spread(secs[precision])}", flush=True)
        print(f"{name:<10} bf16 median {'inside' if inside else 'OUTSIDE'} the fp32 seed spread; "
              f"{args.steps} steps, {data.count('train')} training images; load {load}", flush=True)


if __name__ == "__main__":
    main()
