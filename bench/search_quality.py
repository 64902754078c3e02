"""LeNet5 on Fashion-MNIST, several seeds: what successive halving saves and what the search buys.

    python bench/search_quality.py [--seeds 0 1 2] [--trials 60] [--budget default] [--out studies/bench-search-quality]
                                   [--old-journals DIR]

Per seed, on one trained baseline:
  (a) no early stopping: every candidate fine-tuned to the end;
  (c) successive halving across the rungs (the default), then extended in steps of --extend trials
      until it has spent (a)'s fine-tune compute: the HV it reaches for the same hours;
  then the recovery stage on (c)'s first study, timed against its search.
(b), the proxy rule of the previous version, is read from the journals of studies run with that
version (--old-journals DIR holding seed<N>/journal.log), when given.

Prints per seed: hypervolume (reference point: the baseline's size, accuracy 0) of the whole front
and of the searched candidates alone, fine-tune seconds and steps, the worst gap of the searched
candidates at any uniform / global reference point, the recovered headline; writes hv_vs_finetune.png.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import _common
from _common import hypervolume
import optuna
import torch
from optuna.trial import TrialState

from search import recover as recover_cmd
from search import run
from search.config import RunOptions, load_config
from search.storage import TrialRecord, recoveries
from search.trial import load_data, train_baseline

NAME = "lenet5-fashion-mnist"


def load(out: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "journal.log")))
    return optuna.load_study(study_name=NAME, storage=storage)


def summary(study: optuna.Study, ref_size: float, steps: int) -> dict:
    """HV of the whole front and of the searched candidates, fine-tune spent, reference gaps."""
    done = [(t, TrialRecord.read(t)) for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))]
    tuned = [(t, r) for t, r in done if r.val_accuracy is not None]
    points = [(r.size_mb, r.val_accuracy) for _, r in tuned]
    searched = [(r.size_mb, r.val_accuracy) for _, r in tuned if not r.reference]
    gaps = []
    for _, r in tuned:
        if r.reference:
            best = max((a for s, a in searched if s <= r.size_mb), default=float("nan"))
            gaps.append((r.reference, r.reference_ratio, 100 * (best - r.val_accuracy)))
    spent_steps = sum(steps if r.val_accuracy is not None else (r.rungs[-1].steps if r.rungs else 0) for _, r in done)
    return {"trials": len(done), "stopped": sum(t.state == TrialState.PRUNED for t, _ in done),
            "hv": hypervolume(points, ref_size), "hv_searched": hypervolume(searched, ref_size),
            "finetune_s": sum(r.finetune_seconds or 0.0 for _, r in done), "finetune_steps": spent_steps,
            "worst_gap": min((g for *_, g in gaps), default=float("nan")), "gaps": gaps}


def old_summary(journal: Path, ref_size: float) -> dict:
    """The previous version's attributes: val_accuracy, size_mb, finetune_seconds, uniform."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=NAME, storage=storage)
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    tuned = [t.user_attrs for t in done if "val_accuracy" in t.user_attrs]
    return {"trials": len(done), "stopped": sum(t.state == TrialState.PRUNED for t in done),
            "hv": hypervolume([(u["size_mb"], u["val_accuracy"]) for u in tuned], ref_size),
            "hv_searched": hypervolume([(u["size_mb"], u["val_accuracy"]) for u in tuned if "uniform" not in u],
                                       ref_size),
            "finetune_s": sum(u.get("finetune_seconds", 0.0) for u in tuned),
            "finetune_steps": 250 * len(tuned), "worst_gap": float("nan"), "gaps": []}


def study_run(root: Path, baseline: Path, name: str, argv: list[str]) -> tuple[Path, float]:
    out = root / name
    if not out.exists():
        out.mkdir(parents=True)
        shutil.copy(baseline, out / "baseline.pt")
    start = time.perf_counter()
    assert run.main(argv + ["--out", str(out)]) == 0
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--extend", type=int, default=20, help="trials added per extension of (c)")
    parser.add_argument("--budget", default="default")
    parser.add_argument("--out", default="studies/bench-search-quality")
    parser.add_argument("--old-journals", help="folder with seed<N>/journal.log of the previous version's studies")
    args = parser.parse_args()
    _common.header("successive halving and search quality, LeNet5 on Fashion-MNIST", torch.device("cpu"))
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    cfg = load_config("lenet5", overrides={"budget": args.budget})
    baseline = root / "baseline" / "baseline.pt"
    if not baseline.exists():
        train_baseline(cfg, baseline.parent, load_data(cfg, RunOptions()), progress=False)
    ckpt = torch.load(baseline, weights_only=True)
    ref_size = sum(t.numel() * 4 for t in ckpt["state_dict"].values() if t.is_floating_point()) / 1e6
    steps = cfg.spend.finetune_steps
    print(f"baseline val {ckpt['metadata']['metrics']['val_accuracy']:.4f} test "
          f"{ckpt['metadata']['metrics']['test_accuracy']:.4f}, {ref_size:.4f} MB; {args.trials} trials per study, "
          f"budget {args.budget} ({steps} fine-tune steps); HV reference point (size {ref_size:.4f} MB, accuracy 0)")
    rows, curves = [], {}
    for seed in args.seeds:
        common = ["--model", "lenet5", "--budget", args.budget, "--seed", str(seed), "--quiet", "--no-report"]
        shutil.rmtree(root / f"seed{seed}-a", ignore_errors=True)
        shutil.rmtree(root / f"seed{seed}-c", ignore_errors=True)
        a_out, a_wall = study_run(root, baseline, f"seed{seed}-a", common + ["--trials", str(args.trials),
                                                                             "--no-early-stop", "--no-recover"])
        a = summary(load(a_out), ref_size, steps) | {"mode": "a", "seed": seed, "wall_s": a_wall}
        c_out, c_wall = study_run(root, baseline, f"seed{seed}-c", common + ["--trials", str(args.trials),
                                                                             "--no-recover"])
        c = summary(load(c_out), ref_size, steps) | {"mode": "c", "seed": seed, "wall_s": c_wall}
        rows += [a, c]
        shutil.rmtree(root / f"seed{seed}-c-recovered", ignore_errors=True)
        shutil.copytree(c_out, root / f"seed{seed}-c-recovered")  # (c) as it was after its first trials
        curve, total = [(c["finetune_s"], c["hv"], c["trials"])], args.trials
        while curve[-1][0] < a["finetune_s"] and total < 10 * args.trials:
            total += args.extend
            study_run(root, baseline, f"seed{seed}-c", common + ["--trials", str(total), "--no-recover"])
            s = summary(load(c_out), ref_size, steps)
            curve.append((s["finetune_s"], s["hv"], s["trials"]))
        curves[seed] = {"a": (a["finetune_s"], a["hv"]), "c": curve}
        rows.append(summary(load(c_out), ref_size, steps) | {"mode": "c, (a)'s compute", "seed": seed,
                                                            "wall_s": float("nan")})
        headline = recovered_headline(root, c_out, seed, args.budget, c_wall)
        rows[-2] |= headline  # recovery and headline of the 60-trial (c) study
        for r in rows[-3:]:
            print(_line(r), flush=True)
        if args.old_journals:
            journal = Path(args.old_journals) / f"seed{seed}" / "journal.log"
            if journal.exists():
                b = old_summary(journal, ref_size) | {"mode": "b (previous proxy rule)", "seed": seed, "wall_s": float("nan")}
                rows.append(b)
                curves[seed]["b"] = (b["finetune_s"], b["hv"])
                print(_line(b), flush=True)
    (root / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    _plot(curves, root / "hv_vs_finetune.png")
    _totals(rows)


def recovered_headline(root: Path, out: Path, seed: int, budget: str, search_s: float) -> dict:
    """The recovery stage on the copy of (c) at its first trial count, timed; its headline."""
    import pandas as pd
    copy = root / f"seed{seed}-c-recovered"
    start = time.perf_counter()
    recover_cmd.main(["--model", "lenet5", "--budget", budget, "--out", str(copy), "--quiet"])
    command_s = time.perf_counter() - start  # the recovery and the report (test accuracy, latency of the front)
    recovery_s = sum(r.seconds for r in recoveries(load(copy)).values())  # the recovery's fine-tunes
    table = pd.read_csv(copy / "pareto.csv")
    head = table[table["headline"]]
    out = {"search_s": search_s, "recovery_s": recovery_s, "recover_command_s": command_s, "headline": None}
    if not head.empty:
        h = head.iloc[0]
        out["headline"] = (f"trial {int(h['trial'])}: {h['pruned_pct']:.1f} % smaller, test drop "
                           f"{h['accuracy_drop']:.2f} pts")
    return out


def _line(r: dict) -> str:
    extra = (f"; headline {r['headline']}; recovery fine-tunes {r['recovery_s']:.0f} s vs search {r['search_s']:.0f} s "
             f"(search.recover with the report: {r['recover_command_s']:.0f} s)") if "headline" in r else ""
    return (f"seed {r['seed']} {r['mode']:<18} trials {r['trials']:>3} (stopped {r['stopped']:>2}): HV {r['hv']:.5f}, "
            f"HV searched {r['hv_searched']:.5f}; fine-tune {r['finetune_s']:.0f} s / {r['finetune_steps']} steps; "
            f"worst reference gap {r['worst_gap']:+.2f} pts{extra}")


def _totals(rows: list[dict]) -> None:
    for mode in dict.fromkeys(r["mode"] for r in rows):
        sel = [r for r in rows if r["mode"] == mode]
        print(f"{mode:<24} HV {_common.spread([r['hv'] for r in sel])}, HV searched "
              f"{_common.spread([r['hv_searched'] for r in sel])}, fine-tune s {_common.spread([r['finetune_s'] for r in sel])}, "
              f"steps {_common.spread([float(r['finetune_steps']) for r in sel])}")


def _plot(curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (seed, c) in enumerate(sorted(curves.items())):
        color = f"C{i}"
        xs, ys = [p[0] for p in c["c"]], [p[1] for p in c["c"]]
        ax.plot(xs, ys, "o-", c=color, label=f"seed {seed}: (c) rungs, extended")
        ax.plot([c["a"][0]], [c["a"][1]], "s", c=color, ms=9, mfc="none", label=f"seed {seed}: (a) no early stop")
        if "b" in c:
            ax.plot([c["b"][0]], [c["b"][1]], "^", c=color, ms=9, mfc="none", label=f"seed {seed}: (b) proxy rule")
    ax.set_xlabel("fine-tune seconds spent (2-core CPU)")
    ax.set_ylabel("hypervolume (size MB x val accuracy)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
