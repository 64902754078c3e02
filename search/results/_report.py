"""The study's outputs: pareto.csv, report.md and pareto.png, from the trial and recovery records."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import FrozenTrial
from torch import nn

from pruning import (BaselineFigures, Checkpoint, Dataset, atomic_write, atomic_write_text, correct, evaluate,
                     load_checkpoint)
from search.config import StudyConfig
from search.results._int8 import front_int8
from search.results._plots import plot_front, plot_projections, plot_sensitivity, pyplot
from search.results._render import (PROJECTIONS, SENSITIVITY_PNG, Results, int8_speedup_text, pick_command,
                                    render_markdown, selection_drop, speedup_text, within_drop)
from search.results._noise import Paired, trial_hits
from search.results._verdict import headline_gain, size_gain, verdict
from search.storage import (TEST_CACHE, RecoveryRecord, TrialRecord, artifact_path, axes, completed, precision_of, recoveries,
                            trial_artifact)
from search.trial import MAP_KEY, SECONDS_KEY, OpenStudy, SensitivityMap, latencies, setting

LATENCY_COLUMNS = ["ort_b1_ms", "ort_b64_ms", "device_b1_ms", "device_b64_ms"]
# the INT8 file of a recovered point (report.int8): its top-1 (fractions), MB, onnxruntime ms, its speed-up
# over the same point's FP32 file (interleaved repeats) and the layers its accuracy bar kept in FP32
INT8_COLUMNS = ["int8_val_accuracy", "int8_test_accuracy", "int8_top1_agreement", "int8_size_mb", "int8_ort_b1_ms",
                "int8_ort_b64_ms", *[f"int8_b{b}_speedup{end}" for b in (1, 64) for end in ("", "_low", "_high")],
                "int8_kept_fp32"]
CSV_COLUMNS = ["trial", "headline", "reference", "size_mb", "params", "macs", "pruned_pct", "val_accuracy",
               "test_accuracy", "recovered_val_accuracy", "recovered_test_accuracy", "accuracy_drop", "holdout_drop",
               *LATENCY_COLUMNS, *[c.replace("_ms", "_speedup") + end for c in LATENCY_COLUMNS for end in ("", "_low", "_high")],
               *INT8_COLUMNS, "checkpoint", "recovered_checkpoint", "plan"]


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible non-dominated trials that were fine-tuned, smallest first."""
    front = [t for t in study.best_trials if TrialRecord.read(t).checkpoint is not None]
    acc, size = axes(study)
    return sorted(front, key=lambda t: (t.values[size], -t.values[acc]))


def test_accuracies(out: Path, model: str, items: dict[str, str], data: Dataset, precision: str) -> dict[str, float | None]:
    """Test accuracy of checkpoints (key -> artifact id) in the study's precision, cached in
    ``test_accuracy.json`` by artifact id and precision."""
    cache_file = out / TEST_CACHE
    try:
        cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
        cache = {k: float(v) for k, v in cache.items()} if isinstance(cache, dict) else {}
    except (ValueError, TypeError):
        cache = {}  # a damaged cache is only a cache
    if not data.has_test:
        return {key: None for key in items}
    keys = {a: f"{a}@{precision}" for a in items.values()}
    new = [a for a in items.values() if keys[a] not in cache]
    for artifact in new:
        cache[keys[artifact]] = evaluate(load_checkpoint(artifact_path(out, artifact), expect_model=model).model, data,
                                         "test", precision=precision)
    if new:
        try:
            atomic_write_text(cache_file, json.dumps(cache, indent=1))
        except OSError:
            pass  # a read-only copy of a study (how results are shared) is read, not cached into
    return {key: cache[keys[a]] for key, a in items.items()}


def collect(cfg: StudyConfig, out: Path, study: optuna.Study, data: Dataset, baseline: BaselineFigures, start: Checkpoint, *,
            latency: bool = True, noise: bool = True, progress: bool = False, holdout: Dataset | None = None) -> Results:
    """Everything the report files show. ``start`` is the model the study prunes (the speed-up
    reference and the "before" of the channel widths); ``latency`` measures every front point;
    ``noise`` gives every gain its paired interval (each compared checkpoint scored image by image, on
    ``holdout``'s validation images when the budget holds some out)."""
    front = front_trials(study)
    recovered = recoveries(study)
    for t in front:  # every front artifact is the file its trial wrote, before any figure is read from it
        rec = TrialRecord.read(t)
        trial_artifact(out, rec.checkpoint, rec.checkpoint_sha256, t.number)
    items = {f"t{t.number}": TrialRecord.read(t).checkpoint for t in front}
    items.update({f"r{n}": r.checkpoint for n, r in recovered.items()})
    tests = test_accuracies(out, cfg.model, items, data, precision_of(study, cfg.finetune.precision, data.device))
    timed = [t for t in front if cfg.latency == "all" or t.number in recovered]
    timing = _latencies(cfg, out, timed, data, start, progress) if latency and cfg.latency != "none" else {}
    int8 = {}
    if timing and cfg.report.int8 == "recovered":  # the recovered points among the timed: what pick ships
        int8 = front_int8(out, cfg.model, {f"t{t.number}": recovered[t.number].checkpoint for t in timed
                                           if t.number in recovered}, data, progress=progress)
    rows = [{**_row(out, t, TrialRecord.read(t), recovered.get(t.number), tests, baseline, timing),
             **_int8_row(int8.get(f"t{t.number}"))} for t in front]
    table = pd.DataFrame(rows, columns=CSV_COLUMNS)
    best = headline(table, baseline, cfg.report.headline_max_drop)
    widths = []
    if best is not None:
        table.loc[table["trial"] == best["trial"], "headline"] = True
        best = table[table["trial"] == best["trial"]].iloc[0]
        widths = channel_widths(start.model, load_checkpoint(out / best["checkpoint"], expect_model=cfg.model).model)
    paired = study_pairs(cfg, out, study, data, holdout, start=start.model) if noise else None
    failed = {int(k[1:]): v["error"] for k, v in int8.items() if "error" in v}
    return Results(table=table, headline=best, references=reference_gaps(study, paired), int8_failed=failed,
                   warning=undertrained(study, recovered, baseline, cfg.report.undertrained_margin),
                   baseline_latency=timing.get("start"), latency_setting=setting(data.device) if timing else None,
                   widths=widths, holdout_images=max((r.holdout_images for r in recovered.values()), default=0),
                   verdict=verdict(completed(study), best, baseline, cfg.report.headline_max_drop, paired),
                   device=str(data.device), wall_s=wall_seconds(study),
                   gain=headline_gain(completed(study), best, paired), sensitivity=study_map(study),
                   judged=paired.where() if paired else None,
                   size_gain=size_gain(completed(study), best, baseline, cfg.report.headline_max_drop))


def study_pairs(cfg: StudyConfig, out: Path, study: optuna.Study, data: Dataset, holdout: Dataset | None = None,
                start: nn.Module | None = None) -> Paired:
    """Per-image validation hits of the study's fine-tuned trials, loaded on demand, in the one
    precision the study scores every figure in: on ``holdout``'s validation images (the ones the search
    never read) when the budget holds some out, else on the search's own; and ``start``'s, the model the
    study pruned from, when it is given (what each reference lost)."""
    precision = precision_of(study, cfg.finetune.precision, data.device)
    checkpoints = {t.number: (r.checkpoint, r.checkpoint_sha256) for t, r in completed(study) if r.checkpoint}
    images = holdout if holdout is not None else data
    baseline = None if start is None else (lambda: correct(start, images, "val", precision=precision))
    return Paired(trial_hits(out, cfg.model, checkpoints, images, precision), images=images.count("val"),
                  held_out=holdout is not None, baseline=baseline)


def study_map(study: optuna.Study) -> SensitivityMap | None:
    plain = study.user_attrs.get(MAP_KEY)
    return None if plain is None else SensitivityMap.from_plain(plain)


def wall_seconds(study: optuna.Study) -> float | None:
    """Seconds from the first trial's start to the last trial's end (None before any trial ended)."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    if not trials:
        return None
    start = min(t.datetime_start for t in trials)
    return (max(t.datetime_complete for t in trials) - start).total_seconds()


def _latencies(cfg: StudyConfig, out: Path, front: list[FrozenTrial], data: Dataset, start: Checkpoint,
               progress: bool = False) -> dict:
    example = data.example_input(1)
    models = {"start": (start.checksum, lambda: copy.deepcopy(start.model))}
    for t in front:
        artifact = TrialRecord.read(t).checkpoint
        models[f"t{t.number}"] = (artifact, lambda a=artifact: load_checkpoint(
            artifact_path(out, a), expect_model=cfg.model).model)
    return latencies(out, models, example, progress=progress)


def channel_widths(before: nn.Module, after: nn.Module) -> list[tuple[str, int, int]]:
    """(layer, output channels before, after) of every conv/linear layer the pruning narrowed."""
    widths = []
    old = dict(before.named_modules())
    for name, layer in after.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and name in old:
            a = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
            b = old[name].out_channels if isinstance(old[name], nn.Conv2d) else old[name].out_features
            if a != b:
                widths.append((name, b, a))
    return widths


def _relative(out: Path, artifact: str) -> str:
    """An artifact's checkpoint path relative to the study folder (checked to stay in its store)."""
    return str(artifact_path(out, artifact).relative_to(out))


def _row(out: Path, t: FrozenTrial, rec: TrialRecord, recovery: RecoveryRecord | None, tests: dict,
         baseline: BaselineFigures, timing: dict) -> dict:
    test = tests[f"t{t.number}"]
    final_test = recovery.test_accuracy if recovery else test
    speed = {}
    if f"t{t.number}" in timing:
        mine = timing[f"t{t.number}"]
        for kind, batch in (("ort", 1), ("ort", 64), ("device", 1), ("device", 64)):
            speed[f"{kind}_b{batch}_ms"] = mine[kind][batch]
            up = mine["speedup"][kind][batch]  # interleaved with the baseline, never a ratio of separate runs
            speed.update({f"{kind}_b{batch}_speedup": up.median, f"{kind}_b{batch}_speedup_low": up.low,
                          f"{kind}_b{batch}_speedup_high": up.high})
    return {**speed, "trial": t.number, "headline": False, "reference": _ref_label(rec), "size_mb": rec.size_mb,
            "params": rec.params, "macs": rec.macs, "pruned_pct": rec.pruned_pct, "val_accuracy": rec.val_accuracy,
            "test_accuracy": test, "recovered_val_accuracy": recovery.val_accuracy if recovery else None,
            "recovered_test_accuracy": recovery.test_accuracy if recovery else None,
            "accuracy_drop": 100.0 * (baseline.test_accuracy - final_test) if final_test is not None
            and baseline.test_accuracy is not None else None,
            "holdout_drop": recovery.holdout_drop if recovery else None,
            "checkpoint": _relative(out, rec.checkpoint),
            "recovered_checkpoint": _relative(out, recovery.checkpoint) if recovery else None,
            "plan": json.dumps(rec.plan)}


def _int8_row(block: dict | None) -> dict:
    """The INT8 columns of a point from its INT8 block (none when not measured or not made)."""
    if not block or "error" in block:
        return {}
    row = {"int8_val_accuracy": block["val_accuracy"], "int8_test_accuracy": block["test_accuracy"],
           "int8_top1_agreement": block["top1_agreement"], "int8_size_mb": block["size_mb"],
           "int8_ort_b1_ms": block["latency_ms"]["int8"]["1"], "int8_ort_b64_ms": block["latency_ms"]["int8"]["64"],
           "int8_kept_fp32": " ".join(block["kept_fp32"])}
    for b in ("1", "64"):
        up = block["speedup"][b]
        row.update({f"int8_b{b}_speedup": up["median"], f"int8_b{b}_speedup_low": up["low"],
                    f"int8_b{b}_speedup_high": up["high"]})
    return row


def _ref_label(rec: TrialRecord) -> str | None:
    return f"{rec.reference} {rec.reference_ratio:g}" if rec.reference else None


def headline(table: pd.DataFrame, baseline: BaselineFigures, max_drop: float) -> pd.Series | None:
    """The smallest front point whose *validation* accuracy (recovered, when any point was; on the
    holdout, when the point was judged there) is within ``max_drop`` points of the baseline's on the
    same images; the test split is never read here."""
    if table.empty:
        return None
    pool = table[table["recovered_val_accuracy"].notna()] if table["recovered_val_accuracy"].notna().any() else table
    ok = pool[[within_drop(selection_drop(r, baseline), max_drop) for _, r in pool.iterrows()]]
    return None if ok.empty else ok.sort_values("size_mb").iloc[0]


GAP_COLUMNS = ["reference", "ratio", "trial", "size_mb", "reference_val_accuracy", "searched_trial", "searched_size_mb",
               "searched_val_accuracy", "gain_pts", "gain_low", "gain_high", "reference_loss", "loss_low", "loss_high"]


def reference_gaps(study: optuna.Study, paired: Paired | None = None) -> pd.DataFrame:
    """Each reference point (uniform, global ranking, sensitivity) beside the best searched candidate
    of no larger size (chosen on the search's validation accuracy, after the same fine-tune): what the
    search bought. With ``paired``, the two accuracies and the gain are scored on its images (those the
    search never read, where the budget holds some out), the gain with its paired bootstrap interval, and
    what the reference lost against the start model there when ``paired`` has it (its room to be beaten)."""
    done = completed(study)
    searched = [(t, r) for t, r in done if r.reference is None]
    rows = []
    for t, r in sorted(((t, r) for t, r in done if r.reference), key=lambda p: (p[1].reference, p[1].reference_ratio)):
        rivals = [(s, sr) for s, sr in searched if sr.size_mb <= r.size_mb]
        best = max(rivals, key=lambda p: p[1].val_accuracy, default=None)
        gain = paired.gain(best[0].number, t.number) if best and paired else None
        loss = paired.loss(t.number) if paired else None
        if gain:  # both scored on the pairs' images
            ref_acc, best_acc, points = paired.accuracy(t.number), paired.accuracy(best[0].number), gain.points
        else:
            ref_acc, best_acc = r.val_accuracy, best[1].val_accuracy if best else None
            points = 100 * (best_acc - ref_acc) if best else None
        rows.append({"reference": r.reference, "ratio": r.reference_ratio, "trial": t.number, "size_mb": r.size_mb,
                     "reference_val_accuracy": ref_acc,
                     "searched_trial": best[0].number if best else None,
                     "searched_size_mb": best[1].size_mb if best else None,
                     "searched_val_accuracy": best_acc, "gain_pts": points,
                     "gain_low": gain.low if gain else None, "gain_high": gain.high if gain else None,
                     "reference_loss": loss.points if loss else None, "loss_low": loss.low if loss else None,
                     "loss_high": loss.high if loss else None})
    return pd.DataFrame(rows, columns=GAP_COLUMNS)


def undertrained(study: optuna.Study, recovered: dict[int, RecoveryRecord], baseline: BaselineFigures,
                 margin: float) -> str | None:
    """A warning when a pruned candidate beats the baseline's validation accuracy by more than
    ``margin`` points: then the baseline was not trained to convergence and "gains" are not gains.

    Where recovered points were judged on the holdout, their accuracy there against the baseline's
    there decides, and the search's own figures do not: the most accurate of dozens of candidates on
    the images that chose them beats a converged baseline by chance (MobileNetV2 `cpu`: +0.7 pt on the
    searched 1,000, while 18 baseline epochs instead of 12 moved the 15,000 held-out and test images by
    -0.17)."""
    held = [(n, r) for n, r in recovered.items() if r.holdout_drop is not None]
    if held:
        n, r = min(held, key=lambda p: p[1].holdout_drop)
        acc, base, who = r.holdout_val_accuracy, r.holdout_baseline_val_accuracy, f"recovered trial {n}"
        where = f" on {r.holdout_images:,} validation images the search never read"
    else:
        candidates = [(r.val_accuracy, f"trial {t.number}") for t, r in completed(study)]
        candidates += [(r.val_accuracy, f"recovered trial {n}") for n, r in recovered.items()]
        if not candidates:
            return None
        (acc, who), base, where = max(candidates), baseline.val_accuracy, ""
    gain = 100.0 * (acc - base)
    if gain <= margin:
        return None
    return (f"the baseline looks under-trained: {who} reaches val accuracy {acc:.4f}{where}, {gain:.2f} points above "
            f"the baseline's {base:.4f} (margin {margin} points); train the baseline longer "
            f"(baseline.epochs / min_steps) before trusting the accuracy drops")


@dataclass(frozen=True)
class Written:
    """The report files of a study (csv, md, png, json) and report.json's answer, as written."""

    paths: dict[str, Path]
    answer: dict


def write_report(opened: OpenStudy, *, progress: bool = False) -> Written:
    """Write pareto.csv, report.md, report.json and pareto.png into the study folder (``progress``:
    a bar while the front points' latencies are measured)."""
    cfg, out, study, data, baseline, start = (opened.cfg, opened.out, opened.study, opened.data, opened.baseline,
                                              opened.start)
    results = collect(cfg, out, study, data, baseline, start, progress=progress, holdout=opened.holdout)
    paths = {"csv": out / "pareto.csv", "md": out / "report.md", "png": out / "pareto.png"}
    atomic_write_text(paths["csv"], results.table.to_csv(index=False))
    atomic_write_text(paths["md"], render_markdown(cfg, out, study, results, baseline, data))
    results_file = out / "report.json"  # what the console, the study note and the benchmarks read
    answer = summary(cfg, out, results, baseline, data.root, study.user_attrs.get(SECONDS_KEY))
    atomic_write_text(results_file, json.dumps(answer, indent=1))
    figures = {"png": plot_front(cfg, study, results, baseline)}
    if len(cfg.search.objectives()) > 2:
        paths["projections"] = out / PROJECTIONS
        figures["projections"] = plot_projections(cfg, study)
    if results.sensitivity is not None:
        paths["sensitivity"] = out / SENSITIVITY_PNG
        figures["sensitivity"] = plot_sensitivity(results)
    try:
        for key, figure in figures.items():
            atomic_write(paths[key], lambda tmp, figure=figure: figure.savefig(tmp, dpi=110, format="png"))
    finally:
        plt = pyplot()
        for figure in figures.values():
            plt.close(figure)
    return Written({**paths, "json": results_file}, answer)


def summary(cfg: StudyConfig, out: Path, results: Results, baseline: BaselineFigures, data_dir: str | None = None,
            seconds: float | None = None) -> dict:
    """The report's answer as plain values (report.json): headline, its command, the warning."""
    best = results.headline
    head = None
    if best is not None:
        head = {k: (None if pd.isna(best[k]) else best[k].item() if hasattr(best[k], "item") else best[k])
                for k in ("trial", "size_mb", "pruned_pct", "accuracy_drop", "val_accuracy", "test_accuracy",
                          "recovered_val_accuracy", "recovered_test_accuracy", "holdout_drop", "macs", "ort_b1_ms",
                          "ort_b1_speedup", "ort_b1_speedup_low", "ort_b1_speedup_high")}
        head["holdout_images"] = results.holdout_images if head["holdout_drop"] is not None else 0
        head["ort_b1_speedup_text"] = speedup_text(best, "ort", 1)
        head["kind"] = "reference" if isinstance(best["reference"], str) else "searched"
        head["gain"] = results.gain
        head["size_gain"] = results.size_gain
        head["pick_command"] = pick_command(cfg, out, int(best["trial"]), data_dir)
        head["int8"] = _int8_headline(best)
    return {"model": cfg.model, "dataset": cfg.dataset, "budget": cfg.budget, "baseline": {
            "size_mb": baseline.size_mb, "params": baseline.params, "macs": baseline.macs, "val_accuracy": baseline.val_accuracy,
            "test_accuracy": baseline.test_accuracy}, "headline": head, "front_points": len(results.table),
            "warning": results.warning, "verdict": results.verdict, "device": results.device,
            "wall_s": results.wall_s, "sensitivity": _map_summary(results, seconds)}


def _int8_headline(best: pd.Series) -> dict | None:
    """The headline's INT8 figures (pick --int8 with its defaults), None when they were not measured."""
    if pd.isna(best["int8_val_accuracy"]):
        return None
    plain = {c[len("int8_"):]: (None if pd.isna(best[c]) else best[c].item() if hasattr(best[c], "item") else best[c])
             for c in INT8_COLUMNS}
    plain["kept_fp32"] = plain["kept_fp32"].split() if plain["kept_fp32"] else []
    plain["speedup_text"] = {b: int8_speedup_text(best, b) for b in ("1", "64")}
    return plain


def _map_summary(results: Results, seconds: float | None) -> dict | None:
    smap = results.sensitivity
    if smap is None:
        return None
    worst = max(smap.accuracy, key=lambda k: sum(smap.drops(k)))
    return {"keys": len(smap.accuracy), "ratios": len(smap.ratios), "seconds": seconds or 0.0,
            "most_sensitive": worst}
