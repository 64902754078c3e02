"""Per model: seconds to apply a plan, to recalibrate BatchNorm (K batches of 128) and to fine-tune
one epoch of Fashion-MNIST (54,000 images), plus measuring and checkpointing.

    python bench/prune_cost.py [--models ...] [--repeats 3] [--bn-batches 50] [--finetune-steps N]

On a CPU the large models cannot do 50 BN batches or an epoch in reasonable time, so by default
they run fewer batches / steps and the figure is scaled to the full amount (marked "scaled").
Goal for the search on a GPU: pruning + measuring + checkpointing < 20 % of a trial's time.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401
import torch

from models import create_model, list_models
from pruning import (CheckpointMeta, Dataset, apply_plan, finetune, measure, prepare, prunable_units, recalibrate_bn,
                     save_pruned, synthetic_splits)

EPOCH_IMAGES = 54000
CPU_SECONDS = 6.0  # on the CPU, BN batches and fine-tune steps are cut to about this long, then scaled


def cpu_limits(model, data, batch: int) -> tuple[int, int]:
    """BN batches and fine-tune steps that fit in about CPU_SECONDS each on this CPU."""
    x = data.inputs("train", batch)
    start = time.perf_counter()
    with torch.no_grad():
        model.train()(x)
    forward = time.perf_counter() - start
    model.eval()
    return max(2, min(50, int(CPU_SECONDS / forward))), max(2, min(EPOCH_IMAGES // batch, int(CPU_SECONDS / (3 * forward))))


def clock() -> float:
    """Seconds, after the GPU (if any) has finished what was queued."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bn-batches", type=int, help="default 50 (fewer for large models on CPU, scaled)")
    parser.add_argument("--finetune-steps", type=int, help="default one epoch (fewer on CPU, scaled)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _common.header("cost of the pruning steps of one trial (uniform plan 0.5, l1)", device)
    (trx, tr_y), (tex, tey) = synthetic_splits(train=8192, test=256, channels=1)
    data = Dataset("synthetic", trx, tr_y, tex, tey, tex, tey, 10, (0.5,), (0.25,),
                   input_size=int(trx.shape[-1])).to(device)
    batch, per_epoch = 128, EPOCH_IMAGES // 128
    print(f"{'model':<12} {'apply s':>20} {'measure+save s':>20} {'BN(50x128) s':>24} {'finetune epoch s':>26} {'share':>6}")
    for name in args.models:
        model = prepare(create_model(name, num_classes=10, in_channels=1), device).eval()
        cpu_bn, cpu_ft = cpu_limits(model, data, batch) if device.type == "cpu" else (None, None)
        bn_k = args.bn_batches or cpu_bn or 50
        ft_steps = args.finetune_steps or cpu_ft or per_epoch
        x = data.example_input(1)
        plan = {u.name: 0.5 for u in prunable_units(model, x)}
        batches = [data.inputs("train", batch, i * batch) for i in range(min(bn_k, 64))]
        batches = (batches * (bn_k // len(batches) + 1))[:bn_k]
        apply_s, overhead_s, bn_s, ft_s = [], [], [], []
        build = CheckpointMeta(model=name, num_classes=10, in_channels=1)
        for _ in range(args.repeats):
            start = clock()
            pruned, record = apply_plan(model, plan, example_input=x)
            apply_s.append(clock() - start)
            with tempfile.TemporaryDirectory() as tmp:
                start = clock()
                measure(pruned, x)
                save_pruned(Path(tmp) / "c.pt", pruned, record, build)
                overhead_s.append(clock() - start)
            start = clock()
            recalibrate_bn(pruned, batches)
            bn_s.append((clock() - start) * 50 / bn_k)
            start = clock()
            finetune(pruned, data, steps=ft_steps)
            ft_s.append((clock() - start) * per_epoch / ft_steps)
        scaled = " (scaled)" if bn_k != 50 or ft_steps != per_epoch else ""
        med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
        share = (med(apply_s) + med(overhead_s)) / (med(apply_s) + med(overhead_s) + med(bn_s) + med(ft_s))
        print(f"{name:<12} {_common.spread(apply_s):>20} {_common.spread(overhead_s):>20} "
              f"{_common.spread(bn_s):>24} {_common.spread(ft_s) + scaled:>26} {share:>6.1%}", flush=True)
    print("share = (apply + measure + save) / (those + BN recalibration + one fine-tune epoch)")


if __name__ == "__main__":
    main()
