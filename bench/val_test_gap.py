"""Do a study's recovered figures hold on images it never selected on? For every recovered front point
of the finished study folders given: its drop below the baseline on validation (the images the search
selected its front on), on the holdout where it was judged there (the budget's ``holdout_subset``), and
on test; then per model and budget the test-minus-validation gap (median, range), the headlines apart.
Reads the studies' report files only (``pareto.csv``, ``report.json``, ``config.resolved.yaml``).

    python bench/val_test_gap.py STUDY [STUDY ...]     # e.g. studies/*/ or the folders of bench/search_value.py
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import yaml

import _common


def points(folder: Path) -> list[dict]:
    """The recovered points of one finished study (none when it has no report or test split)."""
    try:
        answer = json.loads((folder / "report.json").read_text())
        cfg = yaml.safe_load((folder / "config.resolved.yaml").read_text())
        rows = list(csv.DictReader((folder / "pareto.csv").open()))
    except (OSError, ValueError, yaml.YAMLError):
        return []
    base = answer.get("baseline") or {}
    if base.get("val_accuracy") is None or base.get("test_accuracy") is None:
        return []
    out = []
    for r in rows:
        if not r.get("recovered_val_accuracy") or not r.get("recovered_test_accuracy"):
            continue
        out.append({"kind": f"{cfg.get('model')} {cfg.get('budget')}", "headline": r["headline"] == "True",
                    "val": 100 * (base["val_accuracy"] - float(r["recovered_val_accuracy"])),
                    "holdout": float(r["holdout_drop"]) if r.get("holdout_drop") else None,
                    "test": 100 * (base["test_accuracy"] - float(r["recovered_test_accuracy"]))})
    return out


def _spread(values: list[float]) -> str:
    ordered = sorted(values)
    mid = ordered[len(ordered) // 2] if len(ordered) % 2 else (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    return f"{mid:+.2f} ({ordered[0]:+.2f} to {ordered[-1]:+.2f}, n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path)
    args = parser.parse_args()
    print(f"# bench/val_test_gap.py, {len(args.studies)} study folders; CPU: {_common.cpu_model()} (reads files only)")
    groups: dict[tuple[str, bool], list[dict]] = defaultdict(list)
    for folder in args.studies:
        for p in points(folder):
            groups[(p["kind"], p["headline"])].append(p)
    print("| model, budget | points | test − val drop, pts: median (range, n) | test > val | "
          "test − holdout drop | test > holdout |")
    print("|---|---|---|---|---|---|")
    for (kind, head), ps in sorted(groups.items()):
        gap = [p["test"] - p["val"] for p in ps]
        held = [p["test"] - p["holdout"] for p in ps if p["holdout"] is not None]
        print(f"| {kind} | {'headlines' if head else 'other recovered'} | {_spread(gap)} | "
              f"{sum(g > 0 for g in gap)} of {len(gap)} | {_spread(held) if held else '—'} | "
              f"{f'{sum(g > 0 for g in held)} of {len(held)}' if held else '—'} |")


if __name__ == "__main__":
    main()
