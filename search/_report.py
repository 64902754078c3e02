"""The study's outputs: pareto.csv, report.md, pareto.png (and the test accuracy of front trials)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from pruning import Dataset, evaluate, load_checkpoint
from search._config import StudyConfig
from search._study import artifact_dir

CSV_COLUMNS = ["trial", "val_accuracy", "test_accuracy", "params", "macs", "size_mb", "pruned_pct",
               "accuracy_drop", "latency_ms", "uniform", "checkpoint", "plan"]


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible non-dominated trials (``study.best_trials``), smallest first."""
    return sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0]))


def uniform_trials(study: optuna.Study) -> list[FrozenTrial]:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted((t for t in done if t.user_attrs.get("uniform") is not None and "val_accuracy" in t.user_attrs),
                  key=lambda t: t.user_attrs["uniform"])


def checkpoint_path(cfg: StudyConfig, trial: FrozenTrial) -> Path:
    return artifact_dir(cfg) / trial.user_attrs["checkpoint_artifact"]


def test_accuracies(cfg: StudyConfig, trials: list[FrozenTrial], data: Dataset) -> dict[int, float]:
    """Test accuracy of each trial's checkpoint, cached in ``test_accuracy.json`` by artifact id."""
    cache_file = cfg.out_dir / "test_accuracy.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    new = {t.user_attrs["checkpoint_artifact"]: t for t in trials if t.user_attrs["checkpoint_artifact"] not in cache}
    for artifact, t in new.items():
        cache[artifact] = evaluate(load_checkpoint(checkpoint_path(cfg, t), expect_model=cfg.model).model, data, "test")
    if new:
        _write_text(cache_file, json.dumps(cache, indent=1))
    return {t.number: cache[t.user_attrs["checkpoint_artifact"]] for t in trials}


def _atomic(path: Path, write) -> None:
    """Write through a uniquely named temp file, then rename (several workers may report at once)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_text(path: Path, text: str) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(text))


def front_table(cfg: StudyConfig, study: optuna.Study, data: Dataset, reference: dict) -> pd.DataFrame:
    """One row per front trial with the columns of ``pareto.csv`` (accuracies as fractions)."""
    front = [t for t in front_trials(study) if "checkpoint_artifact" in t.user_attrs]
    tests = test_accuracies(cfg, front, data)
    rows = [{
        "trial": t.number, "val_accuracy": t.values[0], "test_accuracy": tests[t.number],
        "params": t.user_attrs["params"], "macs": t.user_attrs["macs"], "size_mb": t.user_attrs["size_mb"],
        "pruned_pct": t.user_attrs["pruned_pct"],
        "accuracy_drop": 100.0 * (reference["test_accuracy"] - tests[t.number]),
        "latency_ms": t.user_attrs.get("latency_ms"), "uniform": t.user_attrs.get("uniform"),
        "checkpoint": str(checkpoint_path(cfg, t)), "plan": json.dumps(t.user_attrs["plan"]),
    } for t in front]
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


def matched_sizes(study: optuna.Study) -> pd.DataFrame:
    """Each uniform point beside the best searched (non-uniform) candidate of no larger size, on
    validation accuracy: the metric both were selected by."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "val_accuracy" in t.user_attrs]
    searched = [t for t in done if t.user_attrs.get("uniform") is None]
    rows = []
    for u in uniform_trials(study):
        size = u.user_attrs["size_mb"]
        rivals = [t for t in searched if t.user_attrs["size_mb"] <= size]
        best = max(rivals, key=lambda t: t.user_attrs["val_accuracy"], default=None)
        rows.append({"uniform_ratio": u.user_attrs["uniform"], "size_mb": size,
                     "uniform_val_accuracy": u.user_attrs["val_accuracy"],
                     "searched_trial": best.number if best else None,
                     "searched_size_mb": best.user_attrs["size_mb"] if best else None,
                     "searched_val_accuracy": best.user_attrs["val_accuracy"] if best else None})
    return pd.DataFrame(rows)


def headline(table: pd.DataFrame, max_drop: float) -> pd.Series | None:
    """The smallest front point whose test accuracy drop is at most ``max_drop`` points."""
    ok = table[table["accuracy_drop"] <= max_drop]
    return None if ok.empty else ok.sort_values("size_mb").iloc[0]


def write_report(cfg: StudyConfig, study: optuna.Study, data: Dataset, reference: dict) -> dict[str, Path]:
    """Write pareto.csv, report.md and pareto.png into the study folder; return their paths."""
    table = front_table(cfg, study, data, reference)
    matched = matched_sizes(study)
    out = cfg.out_dir
    paths = {"csv": out / "pareto.csv", "md": out / "report.md", "png": out / "pareto.png"}
    _write_text(paths["csv"], table.to_csv(index=False))
    _write_text(paths["md"], render_markdown(cfg, study, table, matched, reference))
    plot_front(study, table, paths["png"], cfg)
    return paths


def _fmt_drop(points: float) -> str:
    return f"{points:.2f} pts" if points >= 0 else f"{points:.2f} pts (gain)"


def render_markdown(cfg: StudyConfig, study: optuna.Study, table: pd.DataFrame, matched: pd.DataFrame,
                    reference: dict) -> str:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    count = {s: states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    lines = [f"# Pruning study: {cfg.model} on {cfg.dataset}", "",
             f"Budget `{cfg.budget}`: {count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} stopped "
             f"early, {count[TrialState.FAIL]} failed trials; objectives: validation accuracy (max) and "
             f"{cfg.search.objective} (min). Granularity `{cfg.search.granularity}`, importance "
             f"`{cfg.search.importance}`, sampler `{cfg.search.sampler}`.", "",
             f"Baseline: {reference['params']:,} parameters, {reference['size_mb']:.3f} MB, "
             f"val accuracy {reference['val_accuracy']:.4f}, test accuracy {reference['test_accuracy']:.4f}.", "",
             "| Model | Original Size | Pruned Size | Pruned % | Accuracy Drop |", "|---|---|---|---|---|"]
    best = headline(table, cfg.search.headline_max_drop) if not table.empty else None
    if best is None:
        lines.append(f"| {cfg.model} | {reference['size_mb']:.3f} MB | no front point within "
                     f"{cfg.search.headline_max_drop} pts | | |")
    else:
        lines.append(f"| {cfg.model} | {reference['size_mb']:.3f} MB | {best['size_mb']:.3f} MB | "
                     f"{best['pruned_pct']:.1f} % | {_fmt_drop(best['accuracy_drop'])} |")
    lines += ["", f"Headline: the smallest Pareto point whose test accuracy is within "
              f"{cfg.search.headline_max_drop} point(s) of the baseline (trial "
              f"{'-' if best is None else int(best['trial'])}). Sizes are MB of fp32 weights (10^6 bytes); "
              "the drop is in accuracy points on the test split.", "",
              "## Pareto front", "", "Selected on the validation split; test accuracy is measured for front points only.", "",
              "| trial | size MB | params | MACs | pruned % | val acc | test acc | drop | uniform |",
              "|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        uni = "" if pd.isna(r["uniform"]) else f"{r['uniform']:.1f}"
        lines.append(f"| {r['trial']} | {r['size_mb']:.4f} | {r['params']:,} | {r['macs']:,} | {r['pruned_pct']:.1f} | "
                     f"{r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['accuracy_drop']:.2f} | {uni} |")
    lines += ["", "## Search vs. the uniform baseline", "",
              "Each uniform plan (the same ratio in every unit, classic L1 pruning under the same fine-tune "
              "budget) beside the best searched candidate of no larger size, on validation accuracy.", "",
              "| uniform ratio | size MB | uniform val acc | searched trial | searched size MB | searched val acc | gain (pts) |",
              "|---|---|---|---|---|---|---|"]
    for _, r in matched.iterrows():
        if pd.isna(r["searched_trial"]):
            lines.append(f"| {r['uniform_ratio']:.1f} | {r['size_mb']:.4f} | {r['uniform_val_accuracy']:.4f} | - | - | - | - |")
        else:
            gain = 100 * (r["searched_val_accuracy"] - r["uniform_val_accuracy"])
            lines.append(f"| {r['uniform_ratio']:.1f} | {r['size_mb']:.4f} | {r['uniform_val_accuracy']:.4f} | "
                         f"{int(r['searched_trial'])} | {r['searched_size_mb']:.4f} | {r['searched_val_accuracy']:.4f} | {gain:+.2f} |")
    return "\n".join(lines) + "\n"


def plot_front(study: optuna.Study, table: pd.DataFrame, path: Path, cfg: StudyConfig) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "val_accuracy" in t.user_attrs]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([t.user_attrs["size_mb"] for t in done], [t.user_attrs["val_accuracy"] for t in done],
               s=14, c="0.7", label="all candidates")
    uni = uniform_trials(study)
    ax.plot([t.user_attrs["size_mb"] for t in uni], [t.user_attrs["val_accuracy"] for t in uni],
            "s--", c="tab:orange", label="uniform ratio (classic baseline)")
    ax.step(table["size_mb"], table["val_accuracy"], "o-", where="post", c="tab:blue", label="Pareto front")
    ax.set_xlabel("size (MB of fp32 weights)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{cfg.model} on {cfg.dataset}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    _atomic(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
