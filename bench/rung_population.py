"""What one rung decision costs in reading the study: the population of a rung (every other
searched trial's accuracy there and its measures) in a study of N finished trials, on a journal file
like a study's, the first decision of a process and the ones after it.

    python bench/rung_population.py [--trials 50 300 1000] [--repeats 30]

A finished trial's record is read once per process; later decisions read only the running trials'
records again. Before that cache, every decision parsed every trial's record (472 ms at 1,000 trials,
about three decisions per trial).
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import _common
import optuna
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from search.storage import Rung, record_value
from search.trial import rung_population

UNITS = 50  # a plan of 50 ratios, as a VGG16 or ResNet50 channel plan roughly has


def build(path: Path, n: int) -> optuna.Study:
    """A study of ``n`` finished trials recorded as the search records them (plan, rungs, measures)."""
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(path))),
                                directions=["maximize", "minimize"])
    rnd = random.Random(0)
    for _ in range(n):
        t = study.ask()
        plan = {f"unit{k}": t.suggest_float(f"unit{k}", 0.0, 0.9) for k in range(UNITS)}
        attrs = {"val_accuracy": rnd.random(), "size_mb": 10 * rnd.random(), "objective_values": [rnd.random()],
                 "plan": plan, "rungs": [Rung(rung=r, steps=50 * r, val_accuracy=rnd.random()) for r in range(3)]}
        for key, value in attrs.items():
            t.set_user_attr(key, record_value(key, value))
        study.tell(t, [attrs["val_accuracy"], attrs["size_mb"]])
    return study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, nargs="+", default=[50, 300, 1000])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _common.header("rung decision: reading the population", torch.device("cpu"))
    print("| finished trials | first decision (ms) | later decisions, ms: median (min-max, n) |\n|---|---|---|")
    for n in args.trials:
        with tempfile.TemporaryDirectory() as tmp:
            study = build(Path(tmp) / "journal.log", n)
            me = study.ask()
            start = time.perf_counter()
            rung_population(me, 1)
            first = 1e3 * (time.perf_counter() - start)
            later = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                rung_population(me, 1)
                later.append(1e3 * (time.perf_counter() - start))
            print(f"| {n} | {first:,.1f} | {_common.spread(later)} |")


if __name__ == "__main__":
    main()
