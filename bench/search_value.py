"""Does the search beat what a practitioner gets without it? Several seeds of one model's study on
one baseline, each searched front against every classic reference (uniform, global, sensitivity) at
the reference's size, with the paired bootstrap interval of the gain.

    python bench/search_value.py [--model lenet5] [--budget default] [--seeds 0 1 2] [--out DIR]
    python bench/search_value.py --existing DIR [DIR ...]     # analyse finished study folders only

Per seed (one ``search.run`` each, the first one's baseline copied into the others): at every
reference, the best searched trial of no larger size (the most accurate on the search's validation
images) and its gain (validation, points; on the images the search never read where the budget holds
some out, as the report) with the paired 95 % interval — "win" when the interval is above 0, "loss" below, "noise" across —
and what the reference itself lost against the baseline on those images (where that holds 0, no plan of its
size can win beyond the noise without beating the baseline: the wins are counted among the others too); the
recovered headline (its kind, % smaller, test drop); hypervolume of the searched trials alone and of
the references alone (reference point: the baseline's size, accuracy 0); the map's seconds, the
trials' fine-tune seconds and steps, and the whole run's wall time. Then the medians over seeds.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _common
from _common import hypervolume

from search.cli import resolve, study_parser
from search.config import quiet_libraries
from search.results import reference_gaps, study_pairs
from search.storage import TrialRecord, completed
from search.study import open_existing
from search.trial import SECONDS_KEY


def analyse(out: Path, model: str, budget: str) -> dict:
    """The figures of one finished study folder."""
    args = study_parser("bench", "", "").parse_args(["--model", model, "--budget", budget, "--out", str(out)])
    found = open_existing(*resolve(args))
    study = found.study
    # the report's images, and the baseline's hits on them (what each reference lost)
    pairs = study_pairs(found.cfg, found.out, study, found.data, found.holdout, start=found.start.model)
    gaps = reference_gaps(study, pairs)
    done = completed(study)
    base = found.baseline
    searched = [(r.size_mb, r.val_accuracy) for _, r in done if not r.reference]
    refs = [(r.size_mb, r.val_accuracy) for _, r in done if r.reference]
    every = [TrialRecord.read(t) for t in study.get_trials(deepcopy=False)]
    steps = sum(r.rungs[-1].steps if r.val_accuracy is None and r.rungs else
                found.cfg.spend.finetune_steps if r.val_accuracy is not None else 0 for r in every)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    head = report.get("headline") or {}
    rows = []
    for _, g in gaps.iterrows():
        if g["searched_trial"] != g["searched_trial"]:  # NaN: no searched trial that small
            rows.append({"ref": f"{g['reference']} {g['ratio']:g}", "gain": None, "verdict": "none as small"})
            continue
        low, high = g["gain_low"], g["gain_high"]
        rows.append({"ref": f"{g['reference']} {g['ratio']:g}", "size_mb": g["size_mb"], "gain": g["gain_pts"],
                     "low": low, "high": high, "verdict": "win" if low > 0 else "loss" if high < 0 else "noise",
                     "ref_loss": g["reference_loss"], "ref_loss_low": g["loss_low"], "ref_loss_high": g["loss_high"]})
    return {"folder": str(out), "gaps": rows, "judged": pairs.where(), "headline_kind": head.get("kind"),
            "headline_pct": head.get("pruned_pct"), "headline_drop": head.get("accuracy_drop"),
            "headline_trial": head.get("trial"), "hv_searched": hypervolume(searched, base.size_mb),
            "hv_references": hypervolume(refs, base.size_mb), "map_s": study.user_attrs.get(SECONDS_KEY),
            "finetune_s": sum(r.finetune_seconds or 0.0 for r in every), "finetune_steps": steps,
            "stopped": sum(1 for r in every if r.stop_rung is not None), "trials": len(every)}


def run_seed(root: Path, model: str, budget: str, seed: int, baseline: Path | None,
             sampler: str | None = None) -> tuple[Path, float]:
    out = root / f"seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if baseline is not None:
        shutil.copy(baseline, out / "baseline.pt")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "search.run", "--model", model, "--budget", budget, "--seed", str(seed),
                    "--out", str(out), "--yes", "--quiet", *(["--sampler", sampler] if sampler else [])],
                   check=True, cwd=_common.REPO)
    return out, time.perf_counter() - start


def _share(r: dict) -> str:
    """The map's share of the trials' fine-tune seconds and of the whole job's wall time."""
    if not r.get("map_s"):
        return ""
    parts = [f"{100 * r['map_s'] / r['finetune_s']:.0f} % of the fine-tune"] if r.get("finetune_s") else []
    parts += [f"{100 * r['map_s'] / r['wall_s']:.1f} % of the job"] if r.get("wall_s") else []
    return f" ({', '.join(parts)})" if parts else ""


def _print(seed, r: dict) -> None:
    counts = {v: sum(1 for g in r["gaps"] if g["verdict"] == v) for v in ("win", "noise", "loss", "none as small")}
    print(f"seed {seed}: headline {r['headline_kind']} trial {r['headline_trial']}, "
          f"{_num(r['headline_pct'], 1)} % smaller, test drop {_num(r['headline_drop'])} pts; references: "
          f"{counts['win']} won, {counts['noise']} inside the noise, {counts['loss']} lost ({r['judged']}), "
          f"{counts['none as small']} with no searched trial as small; HV searched {r['hv_searched']:.5f} vs "
          f"references {r['hv_references']:.5f}; map {_num(r['map_s'], 0)} s{_share(r)}; fine-tune {r['finetune_s']:.0f} s / "
          f"{r['finetune_steps']} steps ({r['stopped']} of {r['trials']} trials stopped at a rung); "
          f"wall {_num(r.get('wall_s'), 0)} s", flush=True)
    roomy = [g for g in r["gaps"] if g["gain"] is not None and g["ref_loss_low"] > 0]
    print(f"    won at {sum(g['verdict'] == 'win' for g in roomy)} of the {len(roomy)} references that lost beyond "
          f"the noise against the baseline", flush=True)
    for g in r["gaps"]:
        if g["gain"] is not None:
            print(f"    {g['ref']:<16} {g['size_mb']:.4f} MB  gain {g['gain']:+6.2f} ({g['low']:+.2f} to {g['high']:+.2f}) "
                  f"{g['verdict']:<5}  the reference lost {g['ref_loss']:+.2f} ({g['ref_loss_low']:+.2f} to "
                  f"{g['ref_loss_high']:+.2f}) against the baseline{_room(g)}")
        else:
            print(f"    {g['ref']:<16} no searched trial as small")


def _room(g: dict) -> str:
    """A reference that lost nothing beyond the noise leaves a plan of its size nothing to win beyond it."""
    return ": no loss beyond the noise, no room to win" if g["ref_loss_low"] <= 0 else ""


def _num(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--budget", default="default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="studies/bench-search-value")
    parser.add_argument("--sampler", help="the study's --sampler (default: the config's)")
    parser.add_argument("--existing", nargs="+", help="finished study folders to analyse (no run)")
    parser.add_argument("--baseline", help="a trained baseline.pt to copy into every seed's folder (default: the "
                                            "first seed's study trains one and the others copy it)")
    args = parser.parse_args()
    quiet_libraries()
    import torch

    _common.header(f"search value, {args.model} `{args.budget}`", torch.device("cpu"))
    print(f"# cpu: {_common.cpu_model()}")
    results = []
    if args.existing:
        for i, folder in enumerate(args.existing):
            r = analyse(Path(folder), args.model, args.budget)
            results.append(r)
            _print(folder, r)
    else:
        root, baseline = Path(args.out), Path(args.baseline) if args.baseline else None
        for seed in args.seeds:
            out, wall = run_seed(root, args.model, args.budget, seed, baseline, args.sampler)
            baseline = baseline or out / "baseline.pt"
            r = analyse(out, args.model, args.budget) | {"wall_s": wall, "seed": seed}
            results.append(r)
            _print(seed, r)
        (root / "results.json").write_text(json.dumps(results, indent=1, default=str))
    pct = [r["headline_pct"] for r in results if r["headline_pct"] is not None]
    if pct:
        print(f"headline % smaller: median {statistics.median(pct):.1f} (range {min(pct):.1f}-{max(pct):.1f}, "
              f"n={len(pct)}); searched headlines: {sum(r['headline_kind'] == 'searched' for r in results)} of "
              f"{len(results)}")


if __name__ == "__main__":
    main()
