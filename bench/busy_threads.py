"""Training throughput on a busy CPU at each intra-op thread count: does a study go faster on fewer
threads when other work holds the cores? (OpenMP threads that outnumber the free cores spin against
each other.) Thread counts are interleaved per repeat, so the load hits them alike; the load average
is printed with each repeat.

    python bench/busy_threads.py [--models lenet5 vgg16 mobilenet_v2] [--repeats 3] [--steps 4]

Make the machine busy first (another study, or `--burn N` busy processes started by this script).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import torch
from _common import burn, header, spread

from models import create_model


def images_per_s(name: str, threads: int, batch: int, steps: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch, 1, 32, 32), torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up
    began = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - began)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["lenet5", "vgg16", "mobilenet_v2"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--burn", type=int, default=0, help="busy processes to start first (synthetic load)")
    args = p.parse_args()
    burners = [mp.Process(target=burn, daemon=True) for _ in range(args.burn)]
    for b in burners:
        b.start()
    cores = len(os.sched_getaffinity(0))
    header(f"training images/s per intra-op thread count on a busy CPU ({args.burn} burners)", torch.device("cpu"))
    try:
        for name in args.models:
            batch, steps = (128, 10 * args.steps) if name == "lenet5" else (32, args.steps)
            runs: dict[int, list[float]] = {t: [] for t in range(cores, 0, -1)}
            loads = []
            for _ in range(args.repeats):
                loads.append(os.getloadavg()[0])
                for t in runs:
                    runs[t].append(images_per_s(name, t, batch, steps))
            cells = " | ".join(f"{t} thread(s): {spread(v)}" for t, v in runs.items())
            print(f"{name} (batch {batch}, load {min(loads):.1f}-{max(loads):.1f} on {cores} cores) | {cells}")
    finally:
        for b in burners:
            b.terminate()


if __name__ == "__main__":
    main()
