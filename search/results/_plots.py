"""The report's figures: the front (and its latency panel), a 3+-objective front's projections, the
sensitivity map as a heat map; matplotlib on the Agg backend, nothing written outside the study."""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import optuna
from optuna.trial import TrialState

from pruning import BaselineFigures
from search.config import StudyConfig
from search.storage import completed
from search.results._render import Results, selection_accuracy


def pyplot():
    """matplotlib's pyplot on the Agg backend, its font cache and config in a temporary folder removed
    at exit (unless MPLCONFIGDIR is set): a report writes nothing outside the study, ~/.cache included."""
    if "MPLCONFIGDIR" not in os.environ and "matplotlib" not in sys.modules:
        os.environ["MPLCONFIGDIR"] = folder = tempfile.mkdtemp(prefix="automl-prune-matplotlib-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_projections(cfg: StudyConfig, study: optuna.Study):
    """The figure of a 3+-objective study's front: one panel per pair of objectives."""
    import itertools

    plt = pyplot()

    names = [name for name, _ in cfg.search.objectives()]
    pairs = list(itertools.combinations(range(len(names)), 2))
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 4.2), squeeze=False)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    front = study.best_trials
    for ax, (i, j) in zip(axes[0], pairs):
        ax.scatter([t.values[j] for t in done], [t.values[i] for t in done], s=12, c="0.75", label="all candidates")
        ax.scatter([t.values[j] for t in front], [t.values[i] for t in front], s=28, c="tab:blue",
                   label=f"{len(names)}-objective front")
        ax.set_xlabel(names[j])
        ax.set_ylabel(names[i])
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="best", fontsize=8)
    fig.suptitle(f"{cfg.model} on {cfg.dataset}: the front's 2-D projections")
    fig.tight_layout()
    return fig


def plot_sensitivity(results: Results):
    """sensitivity.png: keys x ratios, the drop in points as colour."""
    plt = pyplot()
    smap = results.sensitivity
    keys = list(smap.accuracy)
    drops = [[100 * (smap.base_accuracy - a) for a in smap.accuracy[k]] for k in keys]
    # room for the key names at the left and the axis label below, however few the ratios
    labels = 0.07 * max(map(len, keys), default=0)
    fig, ax = plt.subplots(figsize=(max(5.5, 2.8 + labels + 0.55 * len(smap.ratios)), 1.5 + 0.28 * len(keys)))
    image = ax.imshow(drops, aspect="auto", cmap="magma_r", vmin=0)
    ax.set_xticks(range(len(smap.ratios)), [f"{r:g}" for r in smap.ratios])
    ax.set_yticks(range(len(keys)), keys, fontsize=7 if len(keys) > 20 else 9)
    ax.set_xlabel("ratio of the key's channels removed (alone)")
    fig.colorbar(image, ax=ax, label="val accuracy drop (pts)")
    ax.set_title("sensitivity map")
    fig.tight_layout()
    return fig


def plot_front(cfg: StudyConfig, study: optuna.Study, results: Results, baseline: BaselineFigures):
    """The figure of pareto.png: all candidates, the references, the front (search-time and
    recovered), the baseline and the headline."""
    plt = pyplot()

    done = completed(study)
    fig, (ax, lat) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    ax.scatter([r.size_mb for _, r in done], [r.val_accuracy for _, r in done], s=14, c="0.75", label="all candidates")
    for kind, style in (("uniform", "s--"), ("global", "^--"), ("sensitivity", "v--")):
        pts = sorted((r.reference_ratio, r.size_mb, r.val_accuracy) for _, r in done if r.reference == kind)
        if pts:
            ax.plot([p[1] for p in pts], [p[2] for p in pts], style, ms=5, label=f"{kind} (classic)")
    table = results.table
    ax.step(table["size_mb"], table["val_accuracy"], "o-", where="post", c="tab:blue", label="Pareto front (search)")
    rec = table[table["recovered_val_accuracy"].notna()]
    if not rec.empty:
        ax.plot(rec["size_mb"], rec["recovered_val_accuracy"], "D", c="tab:green", label="recovered")
    ax.scatter([baseline.size_mb], [baseline.val_accuracy], marker="*", s=160, c="k", zorder=5, label="baseline (unpruned)")
    if results.headline is not None:
        h = results.headline
        ax.scatter([h["size_mb"]], [selection_accuracy(h)], s=220, facecolors="none", edgecolors="tab:red",
                   linewidths=2, zorder=6, label=f"headline (trial {int(h['trial'])})")
    ax.set_xlabel("size (MB of fp32 weights)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{cfg.model} on {cfg.dataset}" + (" (smoke run)" if cfg.scope == "smoke" else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _latency_panel(lat, results, baseline)
    fig.tight_layout()
    return fig


def _latency_panel(ax, results: Results, baseline: BaselineFigures) -> None:
    """Validation accuracy against measured latency (onnxruntime, batch 1) of the front."""
    table = results.table
    if results.baseline_latency is None or table.empty:
        ax.set_axis_off()
        return
    acc = [selection_accuracy(r) for _, r in table.iterrows()]
    ax.plot(table["ort_b1_ms"], acc, "o", c="tab:blue", label="front (recovered where recovered)")
    ax.scatter([results.baseline_latency["ort"][1]], [baseline.val_accuracy], marker="*", s=160, c="k", zorder=5,
               label="pruned-from model")
    if results.headline is not None:
        h = results.headline
        ax.scatter([h["ort_b1_ms"]], [selection_accuracy(h)], s=220, facecolors="none", edgecolors="tab:red",
                   linewidths=2, zorder=6, label="headline")
    ax.set_xlabel("latency, ms at batch 1 (onnxruntime, CPU, 1 thread)")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
