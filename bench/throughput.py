"""Training images/s of each registry model in fp32, fp32 + channels_last and bf16 autocast +
channels_last (the bare forward+backward+SGD step on one resident batch), and of the project's loop
under its ``precision: auto`` policy, side by side; repeats interleaved (A, B, C, A, B, C, ...) so a
neighbour's load hits every mode alike.

    python bench/throughput.py [--models lenet5 vgg16] [--steps 3] [--repeats 3]

32x32 inputs with 1 channel (Fashion-MNIST). Goal: bf16 >= 1.5x fp32 for VGG16, ResNet50, DenseNet121
on a CPU with AMX/AVX512-BF16; a model where bf16 is not faster stays fp32 under ``auto``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import _common  # noqa: F401  (puts the repository on sys.path)
import torch
import torch.nn.functional as F

from models import create_model, list_models
from pruning import Dataset, TrainConfig, autocast, resolve_precision, synthetic_splits, train

MODES = {"fp32": ("fp32", False), "fp32+cl": ("fp32", True), "bf16+cl": ("bf16", True)}
BATCH = {"lenet5": 128}  # small batches for the big models keep a repeat short on two cores
BIG_BATCH = 32
STEPS_SCALE = {"lenet5": 30}  # LeNet5's step takes milliseconds: more of them to time


def bare(model, x, y, steps: int, mode: str, channels_last: bool) -> float:
    """Images/s of ``steps`` timed steps (after one warm-up step) on one resident batch."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    model.train()
    for i in range(steps + 1):
        if i == 1:  # the first step warms up
            start = time.perf_counter()
        with autocast(x.device, mode):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * x.shape[0] / (time.perf_counter() - start)


def loop(model, data: Dataset, steps: int, batch: int) -> float:
    """Images/s of the project's ``train`` under ``precision: auto`` (one warm-up step first)."""
    train(model, data, TrainConfig(steps=1, batch_size=batch, precision="auto"), progress=False)
    return train(model, data, TrainConfig(steps=steps, batch_size=batch, precision="auto"), progress=False).images_per_s


def bench_model(name: str, data: Dataset, steps: int, repeats: int) -> dict[str, list[float]]:
    """img/s per mode (and the loop's), ``repeats`` interleaved rounds."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1)
    batch, steps = BATCH.get(name, BIG_BATCH), steps * STEPS_SCALE.get(name, 1)
    x, y = torch.randn(batch, 1, 32, 32), torch.randint(0, 10, (batch,))
    runs: dict[str, list[float]] = {m: [] for m in [*MODES, "loop auto"]}
    for _ in range(repeats):
        for label, (mode, cl) in MODES.items():
            runs[label].append(bare(model, x, y, steps, mode, cl))
        runs["loop auto"].append(loop(model, data, steps, batch))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode and repeat (default 3; x30 for LeNet5)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cpu")
    _common.header("training throughput per precision (bare step) and the loop's auto policy", device)
    (trx, tr_y), (tex, tey) = synthetic_splits(train=2048, test=256, channels=1)
    data = Dataset("synthetic", trx, tr_y, tex, tey, tex, tey, 10, (0.5,), (0.25,), augment="crop+flip",
                   input_size=int(trx.shape[-1]))
    print(f"# {args.steps} timed steps per repeat, {args.repeats} interleaved repeats, 32x32x1 inputs")
    print(f"{'model':<12} {'batch':>5} " + " ".join(f"{m + ' img/s':>22}" for m in [*MODES, "loop auto"])
          + f" {'bf16/fp32':>9} {'auto':>5}  load")
    for name in args.models:
        runs = bench_model(name, data, args.steps, args.repeats)
        ratio = statistics.median(runs["bf16+cl"]) / statistics.median(runs["fp32"])
        auto = resolve_precision("auto", create_model(name, num_classes=10, in_channels=1), device)
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
        print(f"{name:<12} {BATCH.get(name, BIG_BATCH):>5} " + " ".join(f"{_common.spread(v):>22}" for v in runs.values())
              + f" {ratio:>8.2f}x {auto:>5}  {load}", flush=True)


if __name__ == "__main__":
    main()
