"""The same LeNet5 study with 1 and 2 worker processes on this machine (and, with a GPU, 1 vs 4
concurrent Ray trials per GPU with fractional GPUs): trials/minute and the speed-up.

    python bench/scale.py [--trials 24] [--budget default] [--repeats 2]

Each run is a fresh study on a copy of one trained baseline, timed as the whole command
(process start and set-up included, as a user sees it). Target on a GPU: 4 concurrent small trials
give >= 2.5x the trials/minute of 1.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
import torch

from search.config import RunOptions, load_config
from search.trial import load_data, train_baseline

REPO = Path(__file__).resolve().parent.parent


def timed_study(base: Path, trials: int, budget: str, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "study"
        out.mkdir()
        shutil.copy(base, out / "baseline.pt")
        cmd = [sys.executable, "-m", "search.run", "--model", "lenet5", "--budget", budget, "--trials", str(trials),
               "--out", str(out), "--quiet", "--no-early-stop", "--no-report", "--no-recover", *extra]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return trials / ((time.perf_counter() - start) / 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--budget", default="default")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _common.header("scaling one study: trials/minute", device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("lenet5", overrides={"budget": args.budget})
        train_baseline(cfg, Path(tmp), load_data(cfg, RunOptions()), progress=False)
        base = Path(tmp) / "baseline.pt"
        setups = {"1 worker": ["--workers", "1"], "2 workers": ["--workers", "2"]}
        if device.type == "cuda":
            setups = {"ray, 1 trial/GPU": ["--backend", "ray", "--gpus-per-trial", "1", "--max-concurrent", "1"],
                      "ray, 4 trials/GPU": ["--backend", "ray", "--gpus-per-trial", "0.25", "--max-concurrent", "4"]}
        rates = {}
        for name, extra in setups.items():
            rates[name] = [timed_study(base, args.trials, args.budget, extra) for _ in range(args.repeats)]
            print(f"{name:<20} {_common.spread(rates[name])} trials/min ({args.trials} trials, budget {args.budget})",
                  flush=True)
        first, last = (sorted(v)[len(v) // 2] for v in list(rates.values())[::len(rates) - 1])
        print(f"speed-up {last / first:.2f}x")


if __name__ == "__main__":
    main()
