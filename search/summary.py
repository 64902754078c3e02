"""The seed's table over every study: ``python -m search.summary [--studies studies] [--out studies/summary]``.

Reads each study folder's report.json, config.resolved.yaml and pareto.csv (never writes inside a
study folder) and writes ``OUT.md``, ``OUT.csv`` and ``OUT.png``: Model | Original Size | Pruned Size |
Pruned % | Accuracy Drop, with the budget, device, wall time, the headline's kind and its gain over
the best reference no larger, and one plot of every model's recovered front.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import yaml

from pruning import atomic_write, atomic_write_text
from search.cli import Parser, run_cli
from search.config import UsageError
from search.results import pyplot

REPORT, RESOLVED, FRONT = "report.json", "config.resolved.yaml", "pareto.csv"
COLUMNS = ["model", "dataset", "original_size_mb", "pruned_size_mb", "pruned_pct", "accuracy_drop_pts",
           "headline", "gain_pts", "gain_reference", "smallest_reference_at_bar", "reference_size_ratio", "budget",
           "device", "wall_s", "study"]


def get_args_parser() -> Parser:
    parser = Parser(prog="search.summary", description=__doc__.splitlines()[0],
                    example="python -m search.summary --studies studies --out studies/summary")
    parser.add_argument("--studies", default="studies", help="folder holding the study folders (default: studies)")
    parser.add_argument("--out", help="output path without suffix; existing PATH.md/.csv/.png are replaced only with "
                                      "--force (default: STUDIES/summary, the command's own files, regenerated)")
    parser.add_argument("--force", action="store_true", help="replace existing --out files")
    return parser


def study_folders(root: Path) -> list[Path]:
    """Every folder under ``root`` holding a study's report.json, sorted by path."""
    return sorted(p.parent for p in root.rglob(REPORT) if p.is_file())


def row(folder: Path) -> dict:
    """The table row of one study, from its report.json and config.resolved.yaml."""
    answer = json.loads((folder / REPORT).read_text())
    resolved = folder / RESOLVED
    config = yaml.safe_load(resolved.read_text()) if resolved.is_file() else {}
    head = answer.get("headline") or {}
    gain, size = head.get("gain") or {}, head.get("size_gain") or {}
    return {"model": answer["model"], "dataset": answer.get("dataset"),
            "original_size_mb": answer["baseline"]["size_mb"], "pruned_size_mb": head.get("size_mb"),
            "pruned_pct": head.get("pruned_pct"), "accuracy_drop_pts": head.get("accuracy_drop"),
            "headline": head.get("kind") or ("none" if not head else None),
            "gain_pts": gain.get("gain_pts"), "gain_reference": gain.get("reference"),
            "smallest_reference_at_bar": size.get("reference"), "reference_size_ratio": size.get("ratio"),
            "budget": answer.get("budget") or config.get("budget"), "device": answer.get("device"),
            "wall_s": answer.get("wall_s"), "study": str(folder)}


def markdown(table: pd.DataFrame) -> str:
    """The seed's table and the columns that qualify it, as Markdown."""
    lines = ["| Model | Original Size | Pruned Size | Pruned % | Accuracy Drop | Headline | Gain vs reference | "
             "Smallest reference at the bar | Budget | Device | Search wall time | Study |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        none = pd.isna(r["pruned_size_mb"])
        gain = "" if pd.isna(r["gain_pts"]) else f"{r['gain_pts']:+.2f} pts vs {r['gain_reference']}"
        wall = "" if pd.isna(r["wall_s"]) else f"{r['wall_s'] / 60:.1f} min"
        at_bar = "" if pd.isna(r["reference_size_ratio"]) else \
            f"{r['smallest_reference_at_bar']}: {r['reference_size_ratio']:.2f}x the headline's size"
        lines.append(f"| {r['model']} | {r['original_size_mb']:.3f} MB | "
                     + ("no point within the bar | | |" if none else
                        f"{r['pruned_size_mb']:.3f} MB | {r['pruned_pct']:.1f} % | {r['accuracy_drop_pts']:.2f} pts |")
                     + f" {r['headline'] or ''} | {gain} | {at_bar} | {r['budget'] or ''} | {r['device'] or ''} | {wall} | "
                       f"`{r['study']}` |")
    return "\n".join(lines) + "\n\nAccuracy drop: test accuracy points below the baseline's (recovered figures " \
                              "where recovered); gain: validation points over the best reference no larger (on the images the " \
                              "search never read, where the budget holds some out); smallest reference at the " \
                              "bar: the smallest classic plan within the same accuracy bar at search time; search " \
                              "wall time: the first trial's start to the last one's end.\n"


def front(folder: Path) -> pd.DataFrame:
    """A study's recovered front (its searched front when nothing was recovered): pruned %, drop (pts)."""
    table = pd.read_csv(folder / FRONT) if (folder / FRONT).is_file() else pd.DataFrame()
    if table.empty:
        return table
    recovered = table[table["recovered_test_accuracy"].notna()]
    return (recovered if not recovered.empty else table).sort_values("pruned_pct")


def plot(folders: list[Path], table: pd.DataFrame):
    """One figure: every study's front, pruned % against accuracy drop."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for folder, (_, r) in zip(folders, table.iterrows()):
        pts = front(folder)
        if not pts.empty:
            ax.plot(pts["pruned_pct"], pts["accuracy_drop"], "o-", ms=4, label=f"{r['model']} ({r['budget']})")
    ax.axhline(0, c="0.6", lw=0.8)
    ax.set_xlabel("pruned % (size)")
    ax.set_ylabel("accuracy drop (test, pts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def refuse_study_paths(targets: list[Path], folders: list[Path]) -> None:
    """One line and no write when an output would land inside a study folder."""
    inside = {f.resolve() for f in folders}
    for target in targets:
        parents = {target.resolve().parent, *target.resolve().parents}
        if parents & inside or (target.resolve().parent / REPORT).exists():
            raise UsageError(f"--out {target} lies inside a study folder; the summary never writes there, "
                             f"choose another path")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    root = Path(args.studies)
    folders = study_folders(root) if root.is_dir() else []
    if not folders:
        raise UsageError(f"--studies {root} holds no study folder (one with {REPORT}); run search.run first")
    base = Path(args.out) if args.out else root / "summary"
    paths = {ext: base.with_name(base.name + f".{ext}") for ext in ("md", "csv", "png")}
    refuse_study_paths(list(paths.values()), folders)
    existing = [p for p in paths.values() if os.path.lexists(p)]
    if args.out and existing and not args.force:
        raise UsageError(f"--out {base}: {existing[0]} exists; pass --force to replace it, or name another path")
    table = pd.DataFrame([row(f) for f in folders], columns=COLUMNS)
    atomic_write_text(paths["md"], markdown(table))
    atomic_write_text(paths["csv"], table.to_csv(index=False))
    figure = plot(folders, table)
    try:
        atomic_write(paths["png"], lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    finally:
        import matplotlib.pyplot as plt
        plt.close(figure)
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main)
