"""Training images/s of the project's loop vs. the bare forward+backward+step on one pre-made batch.

    python bench/throughput.py [--models lenet5 vgg16] [--batch-size 128] [--steps 20] [--repeats 3]

Target: ratio >= 0.9 on the CPU; >= 0.8 on a GPU (bf16 autocast, channels_last).
"""
from __future__ import annotations

import argparse
import statistics
import time

import _common  # noqa: F401  (puts the repository on sys.path)
import torch
import torch.nn.functional as F

from models import create_model, list_models
from pruning import TrainConfig, train
from pruning._train import autocast, prepare

CPU_SECONDS = 8.0  # on the CPU, timed steps per model are sized to take about this long


def steps_for(model, x, y, device) -> int:
    """Timed steps: 50 on a GPU; on a CPU as many as fit in about CPU_SECONDS (at least 3)."""
    if device.type == "cuda":
        return 50
    start = time.perf_counter()
    bare(model, x, y, 1, device)
    return max(3, min(400, int(CPU_SECONDS / max(1e-4, (time.perf_counter() - start) / 2))))


def bare(model, x, y, steps: int, device) -> float:
    """Images/s of the ceiling: one resident batch, no data pipeline, no schedule, no bookkeeping."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    model.train()
    for i in range(steps + 1):
        if i == 1:  # the first step warms up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast(device):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * x.shape[0] / (time.perf_counter() - start)


def ours(model, data, steps: int, batch: int) -> float:
    train(model, data, TrainConfig(steps=1, batch_size=batch), progress=False)  # warm-up
    result = train(model, data, TrainConfig(steps=steps, batch_size=batch), progress=False)
    if data.device.type == "cuda":
        torch.cuda.synchronize()
    return result.images_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, help="timed steps per repeat (default: 50 on a GPU, ~8 s worth on a CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _common.header("training throughput: project loop vs bare step", device)
    from pruning._data import Dataset, synthetic_splits
    (trx, tr_y), (tex, tey) = synthetic_splits(train=4096, test=256, channels=3)
    data = Dataset("synthetic", trx, tr_y, tex, tey, tex, tey, 10, (0.5,) * 3, (0.25,) * 3,
                   augment="crop+flip").to(device)
    print(f"batch {args.batch_size}, 32x32x3 inputs, pad-crop+flip augmentation in our loop")
    print(f"{'model':<12} {'ours img/s':>24} {'bare img/s':>24} {'ratio':>6}")
    for name in args.models:
        torch.manual_seed(0)
        model = prepare(create_model(name, num_classes=10, in_channels=3), device)
        x = torch.randn(args.batch_size, 3, 32, 32, device=device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.batch_size,), device=device)
        steps = args.steps or steps_for(model, x, y, device)
        ours_runs, bare_runs = [], []
        for _ in range(args.repeats):
            bare_runs.append(bare(model, x, y, steps, device))
            ours_runs.append(ours(model, data, steps, args.batch_size))
        ratio = statistics.median(ours_runs) / statistics.median(bare_runs)
        print(f"{name:<12} {_common.spread(ours_runs):>24} {_common.spread(bare_runs):>24} {ratio:>6.2f}"
              f"  ({steps} steps)", flush=True)


if __name__ == "__main__":
    main()
