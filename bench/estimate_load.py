"""The study-time estimate against the real time, quiet and under a synthetic load: `search.run` is run
as a user runs it, its printed estimate is read from its output, and the time from that line to the
end of the run (baseline, trials, recovery, report: what the estimate covers) is measured. Loads are
interleaved per repeat (0, 2, 4 busy processes by default) so a slow spell hits them alike.
Goal (issue #18): real / estimated within 2x either way, at every load.

    python bench/estimate_load.py [--cases lenet5:smoke:6 vgg16:smoke:2] [--burns 0 2 4] [--repeats 3]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import burn, header, spread

REPO = Path(__file__).resolve().parent.parent
ESTIMATE = re.compile(r"estimated study time on \w+: (?:at most )?([\d.]+) (s|min|h) ")
PHASE_ESTIMATE = re.compile(r"(baseline|trials|recovery|report) ([\d.]+) (s|min|h)")
UNIT_S = {"s": 1.0, "min": 60.0, "h": 3600.0}
PHASES = ("baseline", "trials", "recovery", "report")
# the first line of each phase after the estimate line (the baseline starts at the estimate line)
STARTS = (("trials", re.compile(r"^study \S+: \d+ units")), ("recovery", re.compile(r"recovering trial")),
          ("report", re.compile(r"latency of front points|^report: ")))


def one_run(model: str, budget: str, trials: int, out: Path) -> tuple[float, float, float, dict, dict]:
    """(estimated s, real s from the estimate line to the end, load average at the end, estimated s per
    phase, real s per phase) of one study; a phase's real time runs from its first line to the next's."""
    cmd = [sys.executable, "-m", "search.run", "--model", model, "--budget", budget, "--trials", str(trials),
           "--out", str(out), "--yes"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    estimated = began = None
    phase_est: dict[str, float] = {}
    starts: dict[str, float] = {}
    for line in proc.stderr:  # search.run says what it does on stderr (text mode splits progress bars at \r)
        found = ESTIMATE.search(line)
        if found and estimated is None:
            estimated, began = float(found[1]) * UNIT_S[found[2]], time.perf_counter()
            phase_est = {m[1]: float(m[2]) * UNIT_S[m[3]] for m in PHASE_ESTIMATE.finditer(line)}
            starts["baseline"] = began
        for phase, pattern in STARTS:
            if began is not None and phase not in starts and pattern.search(line.strip()):
                starts[phase] = time.perf_counter()
    end = time.perf_counter()
    if proc.wait() != 0 or estimated is None:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}) or printed no estimate")
    marks = sorted(starts.items(), key=lambda kv: kv[1]) + [("end", end)]
    phase_real = {p: marks[i + 1][1] - t for i, (p, t) in enumerate(marks[:-1])}
    return estimated, end - began, os.getloadavg()[0], phase_est, phase_real


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cases", nargs="+", default=["lenet5:smoke:6", "vgg16:smoke:2"],
                   help="model:budget:trials")
    p.add_argument("--burns", nargs="+", type=int, default=[0, 2, 4], help="busy processes per load level")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    header("study-time estimate against the real time under a synthetic load", torch.device("cpu"))
    print("the estimate's resolution is its printed one (seconds under 90 s, then minutes)")
    for case in args.cases:
        model, budget, trials = case.split(":")
        runs: dict[int, list[tuple[float, float, float, dict, dict]]] = {b: [] for b in args.burns}
        for _ in range(args.repeats):
            for busy in args.burns:
                burners = [mp.Process(target=burn, daemon=True) for _ in range(busy)]
                for b in burners:
                    b.start()
                try:
                    with tempfile.TemporaryDirectory() as tmp:
                        runs[busy].append(one_run(model, budget, int(trials), Path(tmp) / "study"))
                finally:
                    for b in burners:
                        b.terminate()
                        b.join()
        for busy, rows in runs.items():
            est, real, load, phase_est, phase_real = zip(*rows)
            ratio = [r / e for e, r in zip(est, real)]
            print(f"{model} {budget} --trials {trials} | {busy} burners (load {min(load):.1f}-{max(load):.1f}) | "
                  f"estimated s {spread(list(est))} | real s {spread(list(real))} | real/estimated {spread(ratio)}")
            for phase in PHASES:
                pairs = [(e[phase], r[phase]) for e, r in zip(phase_est, phase_real) if phase in r and e.get(phase)]
                if pairs:
                    print(f"    {phase:<8} estimated s {spread([e for e, _ in pairs])} | real s "
                          f"{spread([r for _, r in pairs])} | real/estimated {spread([r / e for e, r in pairs])}")


if __name__ == "__main__":
    main()
