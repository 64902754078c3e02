"""LeNet5 on Fashion-MNIST: the searched front vs. the uniform (same ratio everywhere) baseline under
the same compute, over several seeds, with and without the early-stop rule.

    python bench/search_quality.py [--seeds 0 1 2] [--trials 60] [--budget default] [--out bench-out]

Prints, per seed: hypervolume of the searched front and of the uniform line (reference point:
accuracy 0, size = the unpruned model's MB), accuracy of the best searched candidate at each
uniform point's size, whether the search dominates every uniform point, wall time, and fine-tune
seconds spent with and without early stopping. Goals: the searched front dominates the uniform
line on every seed; a 60-trial default study runs in under 6 minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import _common  # noqa: F401
import optuna
import torch
from optuna.trial import TrialState

from search import run
from search._config import load_config
from search._context import load_data, train_baseline


def hypervolume(points: list[tuple[float, float]], ref_size: float) -> float:
    """Area dominated by (size, accuracy) points, sizes minimized, accuracy maximized, from (ref_size, 0)."""
    front, best = [], -1.0
    for size, acc in sorted(p for p in points if p[0] <= ref_size):
        if acc > best:
            front.append((size, acc))
            best = acc
    area = 0.0
    for i, (size, acc) in enumerate(front):
        right = front[i + 1][0] if i + 1 < len(front) else ref_size
        area += (right - size) * acc
    return area


def study_points(out: Path) -> tuple[list, list, float, int]:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "journal.log")))
    study = optuna.load_study(study_name="lenet5-fashion-mnist", storage=storage)
    done = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if "val_accuracy" in t.user_attrs]
    uni = [(t.user_attrs["size_mb"], t.user_attrs["val_accuracy"]) for t in done if "uniform" in t.user_attrs]
    searched = [(t.user_attrs["size_mb"], t.user_attrs["val_accuracy"]) for t in done if "uniform" not in t.user_attrs]
    ft = sum(t.user_attrs.get("finetune_seconds", 0.0) for t in done)
    stopped = len(study.get_trials(states=(TrialState.PRUNED,)))
    return uni, searched, ft, stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--budget", default="default")
    parser.add_argument("--out", default="studies/bench-search-quality")
    args = parser.parse_args()
    _common.header("search vs uniform baseline, LeNet5 on Fashion-MNIST", torch.device("cpu"))
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    cfg = load_config("lenet5", budget=args.budget, out=str(root / "baseline"))
    baseline = root / "baseline" / "baseline.pt"
    if not baseline.exists():
        train_baseline(cfg, load_data(cfg), progress=False)
    ref = torch.load(baseline, weights_only=True)
    ref_size = sum(t.numel() * 4 for t in ref["state_dict"].values() if t.is_floating_point()) / 1e6
    print(f"baseline val accuracy {ref['metadata']['val_accuracy']:.4f}, {ref_size:.4f} MB; "
          f"{args.trials} trials per study, budget {args.budget}; HV reference point (size {ref_size:.4f} MB, acc 0)")
    rows = []
    for seed in args.seeds:
        for early in (True, False):
            out = root / f"seed{seed}-{'es' if early else 'noes'}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            shutil.copy(baseline, out / "baseline.pt")
            argv = ["--model", "lenet5", "--budget", args.budget, "--trials", str(args.trials), "--seed", str(seed),
                    "--out", str(out), "--quiet"] + ([] if early else ["--no-early-stop"])
            start = time.perf_counter()
            run.main(argv)
            wall = time.perf_counter() - start
            uni, searched, ft, stopped = study_points(out)
            hv_s, hv_u = hypervolume(searched, ref_size), hypervolume(uni, ref_size)
            at_sizes = [max((a for s, a in searched if s <= us), default=float("nan")) for us, _ in sorted(uni)]
            dominated = sum(any(s <= us and a >= ua for s, a in searched) for us, ua in uni)
            rows.append((seed, early, hv_s, hv_u, dominated, len(uni), wall, ft, stopped))
            print(f"seed {seed} early-stop {'on ' if early else 'off'}: HV searched {hv_s:.5f} vs uniform {hv_u:.5f}; "
                  f"uniform points dominated {dominated}/{len(uni)}; wall {wall:.0f} s; fine-tune {ft:.0f} s; "
                  f"stopped early {stopped}", flush=True)
            print("   uniform (size MB, val acc) -> best searched acc at <= size: " + ", ".join(
                f"({us:.4f}, {ua:.4f}) -> {b:.4f}" for (us, ua), b in zip(sorted(uni), at_sizes)), flush=True)
    for early in (True, False):
        sel = [r for r in rows if r[1] == early]
        print(f"early stop {'on ' if early else 'off'}: HV searched {_common.spread([r[2] for r in sel])}, "
              f"uniform {_common.spread([r[3] for r in sel])}; all uniform points dominated on "
              f"{sum(r[4] == r[5] for r in sel)}/{len(sel)} seeds; wall s {_common.spread([r[6] for r in sel])}; "
              f"fine-tune s {_common.spread([r[7] for r in sel])}")


if __name__ == "__main__":
    main()
