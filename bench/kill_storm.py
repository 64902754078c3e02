"""Random SIGKILLs of a study's processes — single runs, ``--workers`` parents and their children,
and kills in the instant a trial is created — then a last run to the end; prints what survived.

    python bench/kill_storm.py [--kills 50] [--trials 40] [--seed 0] [--out studies/bench-kill-storm]

Counts after the storm: finished trials against the total (none lost, none extra), plans evaluated
twice, checkpoints that do not load, trials left RUNNING, and whether pareto.csv agrees with the
front. A LeNet5 smoke study (Fashion-MNIST subset) keeps each round short.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import _common
import optuna
import pandas as pd
import torch
import yaml
from optuna.trial import TrialState

from pruning import CheckpointError, load_checkpoint
from search.config import ENV
from search.storage import TrialRecord

REPO = Path(__file__).resolve().parent.parent
CONFIG = {
    "dataset": "fashion-mnist", "baseline": {"epochs": 2, "lr": 0.05}, "finetune": {"lr": 0.01},
    "recovery": {"epochs": 0.05, "kd_weight": 0.5},
    "search": {"granularity": "unit", "references": ["uniform"], "reference_ratios": [0.2, 0.5, 0.8]},
    "report": {"recover_points": 2},
    "budgets": {"smoke": {"trials": 40, "finetune_steps": 150, "bn_batches": 2, "baseline_epochs": 2,
                          "train_subset": 4096, "val_subset": 600, "test_subset": 1000}},
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def study_of(out: Path) -> optuna.Study | None:
    journal = out / "journal.log"
    if not journal.exists():
        return None
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    try:
        return optuna.load_study(study_name="lenet5-fashion-mnist", storage=storage)
    except KeyError:
        return None


def child_pids(out: Path, parent: int) -> list[int]:
    study = study_of(out)
    if study is None:
        return []
    pids = set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or ""
        pid = int(worker.rpartition(":")[2]) if worker.rpartition(":")[2].isdigit() else None
        if pid and pid != parent:
            pids.add(pid)
    return sorted(pids)


def command(config: Path, out: Path, trials: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "search.run", "--model", "lenet5", "--config", str(config), "--budget", "smoke",
            "--out", str(out), "--trials", str(trials), "--workers", str(workers), "--quiet", "--data-dir",
            str(REPO / "data")]


def _extend_if_complete(out: Path, trials: int, done: dict) -> int:
    """A run that ended by itself: the study is complete, so extend it (the storm needs work to kill)."""
    done["ended before a kill"] += 1
    study = study_of(out)
    if study is not None and len(study.get_trials(states=FINISHED)) >= trials:
        return trials + 5
    return trials


def storm(config: Path, out: Path, trials: int, kills: int, rng: random.Random) -> dict[str, int]:
    done = {"parent": 0, "child": 0, "at creation": 0, "single run": 0, "ended before a kill": 0}
    env = {k: v for k, v in os.environ.items() if k != ENV}
    while sum(v for k, v in done.items() if k != "ended before a kill") < kills:
        kind = rng.choice(["single run", "parent", "child", "child", "at creation"])
        workers = 1 if kind in ("single run", "at creation") else 2
        run_env = {**env, ENV: "after_ask"} if kind == "at creation" else env
        proc = subprocess.Popen(command(config, out, trials, workers), cwd=REPO, env=run_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kind == "at creation":
            proc.wait()
            if proc.returncode == -signal.SIGKILL:
                done[kind] += 1
            else:
                trials = _extend_if_complete(out, trials, done)
            continue
        time.sleep(rng.uniform(0.5, 6.0))
        if proc.poll() is not None:
            trials = _extend_if_complete(out, trials, done)
            continue
        victims = child_pids(out, proc.pid) if kind == "child" else []
        if kind == "child" and victims:
            try:
                os.kill(rng.choice(victims), signal.SIGKILL)
                done["child"] += 1
            except ProcessLookupError:  # its trial ended in the meantime
                pass
            time.sleep(rng.uniform(0.2, 2.0))
        else:
            done["parent" if kind != "single run" else "single run"] += 1
        proc.send_signal(signal.SIGKILL)  # a parent's children live on and finish their trials
        proc.wait()
    return {**done, "total": trials}


def verify(out: Path, total: int) -> dict[str, object]:
    study = study_of(out)
    finished = study.get_trials(states=FINISHED)
    plans = [tuple(sorted(t.params.items())) for t in finished if not TrialRecord.read(t).reference]
    broken = 0
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        rec = TrialRecord.read(t)
        if rec.checkpoint:
            try:
                load_checkpoint(out / "artifacts" / rec.checkpoint)
            except CheckpointError:
                broken += 1
    front = sorted(t.number for t in study.best_trials if TrialRecord.read(t).checkpoint)
    reported = sorted(pd.read_csv(out / "pareto.csv")["trial"]) if (out / "pareto.csv").exists() else None
    return {"finished": len(finished), "expected": total, "lost or extra": len(finished) - total,
            "evaluated twice": len(plans) - len(set(plans)), "broken checkpoints": broken,
            "left running": len(study.get_trials(states=(TrialState.RUNNING,))),
            "failed (killed) trials": len(study.get_trials(states=(TrialState.FAIL,))),
            "report agrees with front": reported == front}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="studies/bench-kill-storm")
    args = parser.parse_args()
    _common.header("kill storm: random SIGKILLs of runs, --workers parents and children", torch.device("cpu"))
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    out = root / "study"
    start = time.perf_counter()
    kills = storm(config, out, args.trials, args.kills, random.Random(args.seed))
    deadline = time.time() + 600  # orphaned children of killed parents finish their trials first
    while time.time() < deadline and subprocess.run(["pgrep", "-f", "search.cli._worker"], capture_output=True).stdout:
        time.sleep(1)
    final = subprocess.run(command(config, out, kills["total"], 1), cwd=REPO, capture_output=True, text=True)
    if final.returncode != 0:
        print(f"the last run failed: {final.stderr.strip().splitlines()[-1:]}")
    result = verify(out, kills["total"])
    print(f"kills: {kills}")
    print(f"after the storm: {result}")
    print(f"wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
