"""report.md of a study (its figures: _plots.py)."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from pruning import BaselineFigures
from search.config import StudyConfig
from search.storage import fmt_accuracy
from search.trial import SECONDS_KEY


PROJECTIONS = "pareto-projections.png"  # the front's 2-D projections, in a study of 3+ objectives
SENSITIVITY_PNG = "sensitivity.png"     # the sensitivity map as a heat map, in a study that has one

@dataclass
class Results:
    """What the report files show: the front with search-time, recovered and latency figures, the
    headline, the references, a warning about the baseline, and the headline's channel widths."""

    table: pd.DataFrame
    headline: pd.Series | None
    references: pd.DataFrame
    warning: str | None
    baseline_latency: dict | None = None   # {"ort": {batch: ms}, "device": {batch: ms}} of the pruned-from model
    latency_setting: str | None = None
    widths: list = field(default_factory=list)  # (layer, channels before, after) of the headline
    verdict: list = field(default_factory=list)  # what the search bought, in sentences (search.results._verdict)
    device: str | None = None              # where the trials ran ("cpu", "cuda:0")
    wall_s: float | None = None            # first trial's start to last trial's end, seconds
    gain: dict | None = None               # the headline against the best reference no larger (search.results._verdict)
    size_gain: dict | None = None          # the smallest reference within the bar against the headline (search.results._verdict)
    sensitivity: object | None = None      # the study's sensitivity map (search.trial.SensitivityMap), when it has one
    int8_failed: dict = field(default_factory=dict)  # trial -> why its INT8 file could not be made (report.int8)
    holdout_images: int = 0                # the validation images the search never read that recovered points were judged on
    judged: str | None = None              # the images the references and their searched rivals are compared on, in words


def selection_drop(row: pd.Series, baseline: BaselineFigures) -> float:
    """The points of validation accuracy a point is chosen by, below the baseline's on the same images:
    on the holdout when the point was judged there (the images the search never read), else
    ``selection_accuracy`` against the baseline's val accuracy."""
    hd = row.get("holdout_drop")
    return chosen_drop(selection_accuracy(row), None if hd is None or pd.isna(hd) else float(hd), baseline)


def chosen_drop(val_accuracy: float, holdout_drop: float | None, baseline: BaselineFigures) -> float:
    """The drop a point is chosen by (points): ``holdout_drop`` where it was judged on the holdout,
    else ``val_accuracy`` below the baseline's."""
    return holdout_drop if holdout_drop is not None else 100.0 * (baseline.val_accuracy - val_accuracy)


DROP_TOLERANCE = 1e-9  # points: 20 of 2,000 images is 1.0 pt, which floating point reads as 1.0000000000000009


def within_drop(drop: float, max_drop: float) -> bool:
    """Whether a drop (points) holds the bar ``max_drop``: exactly on it counts as within."""
    return drop <= max_drop + DROP_TOLERANCE


def selection_accuracy(row: pd.Series) -> float:
    """The validation accuracy a point is chosen by: after recovery when it was recovered."""
    rv = row["recovered_val_accuracy"]
    return float(rv) if rv is not None and not pd.isna(rv) else float(row["val_accuracy"])


def counts(study: optuna.Study) -> dict[TrialState, int]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {s: states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}


SMOKE_CAVEAT = ("> **Smoke run.** This study used the `smoke` budget (data subsets, a few training steps): its "
                "numbers only show that the pipeline runs end to end. They say nothing about the model; run the "
                "`default` budget for results.")


def format_speedup(median: float, low: float, high: float) -> str:
    """A speed-up with its range; one whose range includes 1 is noise and prints as '≈ 1x'."""
    if low <= 1.0 <= high:
        return "≈ 1x"
    return f"{median:.2f}x ({low:.2f}-{high:.2f})"


def speedup_text(row: pd.Series, kind: str, batch: int) -> str | None:
    """The formatted ``kind`` (ort, device) speed-up at ``batch`` of a table row, None when not measured."""
    col = f"{kind}_b{batch}_speedup"
    if col not in row or pd.isna(row[col]):
        return None
    return format_speedup(float(row[col]), float(row[f"{col}_low"]), float(row[f"{col}_high"]))


def int8_speedup_text(row: pd.Series, batch: str | int) -> str | None:
    """The INT8 file's formatted speed-up over the same point's FP32 file at ``batch``, None when not measured."""
    col = f"int8_b{batch}_speedup"
    if col not in row or pd.isna(row[col]):
        return None
    return format_speedup(float(row[col]), float(row[f"{col}_low"]), float(row[f"{col}_high"]))


def _fmt_drop(points: float | None) -> str:
    if points is None or pd.isna(points):
        return "— (no test split)"
    return f"{points:.2f} pts" if points >= 0 else f"{points:.2f} pts (gain)"


def _num(value, digits: int = 2) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def render_markdown(cfg: StudyConfig, out: Path, study: optuna.Study, results: Results, baseline: BaselineFigures,
                    data=None) -> str:
    """report.md; ``data`` (the study's :class:`pruning.Dataset`) adds its input, augmentation and folder."""
    data_dir = data.root if data is not None else None
    n = counts(study)
    lines = [f"# Pruning study: {cfg.model} on {cfg.dataset}", ""]
    if results.verdict:
        lines += [" ".join(results.verdict), ""]
    if cfg.scope == "smoke":
        lines += [SMOKE_CAVEAT, ""]
    if results.warning:
        lines += [f"> **Warning:** {results.warning}", ""]
    lines += [f"Budget `{cfg.budget}`: {n[TrialState.COMPLETE]} complete, {n[TrialState.PRUNED]} stopped early, "
              f"{n[TrialState.FAIL]} failed trials; objectives: {_objectives_text(cfg)}. "
              f"Granularity `{cfg.search.granularity}`, importance "
              f"`{cfg.search.importance}`, sampler `{cfg.search.sampler}`.", "",
              f"Baseline: {baseline.params:,} parameters, {baseline.size_mb:.3f} MB, {baseline.macs / 1e6:.1f} M MACs, "
              f"val accuracy {baseline.val_accuracy:.4f}, test accuracy {fmt_accuracy(baseline.test_accuracy)}.", ""]
    if data is not None:
        lines += [_data_line(data), "", _spend_line(cfg, data), ""]
    lines += _headline(cfg, results, baseline)
    lines += _commands(cfg, out, results, data_dir)
    lines += _latency(results)
    lines += _front(results.table)
    lines += _int8_failures(results.int8_failed)
    lines += _projections(cfg, study)
    lines += _widths(results)
    lines += _references(results.references, results.judged)
    lines += _sensitivity(results, study.user_attrs.get(SECONDS_KEY))
    return "\n".join(lines) + "\n"


def _data_line(data) -> str:
    """What the model saw: input size, preprocessing, training augmentation, split sizes."""
    pre = data.preprocessing
    bring = (f"shorter side resized to {pre.resize_size} ({pre.resize}), centre {pre.input_size}x{pre.input_size} "
             f"crop" if pre.resize_size else f"{pre.input_size}x{pre.input_size}" +
             (f" ({pre.resize} resize)" if pre.resize != "none" else ""))
    test = f"{data.count('test'):,} test" if data.has_test else "no test split"
    return (f"Data: `{data.name}`{f' from {data.root}' if data.root else ''}, {pre.channels} channel(s), {bring}; "
            f"mean {tuple(round(m, 4) for m in pre.mean)}, std {tuple(round(s, 4) for s in pre.std)}; training "
            f"augmentation `{data.augment}`; {data.count('train'):,} training, {data.count('val'):,} validation, "
            f"{test} images.")


def _spend_line(cfg: StudyConfig, data) -> str:
    """What the budget paid for in training, in steps and images, so a short study (``cpu``,
    ``smoke``) is never mistaken for a full one."""
    n = data.count("train")
    spend, base, ft, rec = cfg.spend, cfg.baseline_recipe(), cfg.finetune_recipe(0), cfg.recovery_recipe(0)
    if cfg.weights:
        baseline = "the baseline is your weights (evaluated, not retrained)"
    elif cfg.from_checkpoint:
        baseline = "the study starts from the --from checkpoint (not retrained)"
    else:
        baseline = (f"the baseline trained {base.total_steps(n):,} steps at batch {base.batch_size} "
                    f"({base.epochs:g} epochs)")
    subset = " (the budget's train_subset)" if spend.train_subset else ""
    short = "" if cfg.scope == "full" else \
        " A short budget: its figures are not those of a `default` study."
    return (f"What budget `{cfg.budget}` trained, on {n:,} training images{subset}: {baseline}; each candidate "
            f"{ft.total_steps(n):,} fine-tuning steps at batch {ft.batch_size} "
            f"({ft.total_steps(n) * ft.batch_size / max(1, n):.2f} epochs); each recovered front point "
            f"{rec.total_steps(n):,} steps ({rec.epochs:g} epochs).{short}")


def pick_command(cfg: StudyConfig, out: Path, trial: int, data_dir: str | None = None) -> str:
    """The command that returns a front point as a checkpoint and its ONNX export."""
    dataset = "" if cfg.dataset == "fashion-mnist" else f" --dataset {cfg.dataset}"
    folder = f" --data-dir {shlex.quote(data_dir)}" if data_dir else ""
    return (f"python -m search.pick --model {shlex.quote(cfg.model)}{dataset}{folder} --out {shlex.quote(str(out))} "
            f"--trial {trial} --save {cfg.source.slug}-trial{trial}.pt --export onnx")


def _commands(cfg: StudyConfig, out: Path, results: Results, data_dir: str | None) -> list[str]:
    if results.headline is None:
        return []
    trial = int(results.headline["trial"])
    code = f" --model {shlex.quote(cfg.model)}" if cfg.source.kind == "code" else ""
    folder = f" --data-dir {shlex.quote(data_dir)}" if data_dir else ""
    return ["Take it (a checkpoint, plus `.onnx` and a `.json` sidecar with the preprocessing):", "", "```",
            pick_command(cfg, out, trial, data_dir),
            f"python -m search.export --checkpoint {cfg.source.slug}-trial{trial}.pt{code}{folder}   # any checkpoint, "
            f"later", "```", ""]


def _latency(results: Results) -> list[str]:
    base = results.baseline_latency
    if not base:
        return []
    return [f"Latency of the model pruned from: onnxruntime {base['ort'][1]:.3f} ms at batch 1, "
            f"{base['ort'][64]:.2f} ms at batch 64; PyTorch on the study's device {base['device'][1]:.3f} / "
            f"{base['device'][64]:.2f} ms. Measured: {results.latency_setting}.", ""]


def _widths(results: Results) -> list[str]:
    if not results.widths:
        return []
    lines = ["<details><summary>Channel widths of the headline, before → after "
             f"({len(results.widths)} layers narrowed)</summary>", "", "| layer | before | after |", "|---|---|---|"]
    lines += [f"| `{name}` | {b} | {a} |" for name, b, a in results.widths]
    return lines + ["", "</details>", ""]


def _headline(cfg: StudyConfig, results: Results, baseline: BaselineFigures) -> list[str]:
    best = results.headline
    lines = ["| Model | Original Size | Pruned Size | Pruned % | Accuracy Drop |", "|---|---|---|---|---|"]
    if best is None:
        lines.append(f"| {cfg.model} | {baseline.size_mb:.3f} MB | no front point within "
                     f"{cfg.report.headline_max_drop} pts | | |")
        return lines + [""]
    lines.append(f"| {cfg.model} | {baseline.size_mb:.3f} MB | {best['size_mb']:.3f} MB | {best['pruned_pct']:.1f} % | "
                 f"{_fmt_drop(best['accuracy_drop'])} |")
    recovered = best["recovered_val_accuracy"] is not None and not pd.isna(best["recovered_val_accuracy"])
    held = best.get("holdout_drop") is not None and not pd.isna(best.get("holdout_drop"))
    judged = (f"on {results.holdout_images:,} validation images the search never read ({_below(best['holdout_drop'])} "
              f"the baseline's there; the search's own val images, on which its front was selected, "
              f"read optimistic)" if held else f"({selection_accuracy(best):.4f})")
    lines += ["", f"Headline: trial {int(best['trial'])}, the smallest "
              f"{'recovered ' if recovered else ''}front point whose validation accuracy "
              f"{judged} is within {cfg.report.headline_max_drop} point(s) of the baseline's; "
              f"chosen on the validation split, the drop reported on the test split. Sizes are MB of fp32 weights "
              f"(10^6 bytes).", ""]
    return lines


def _below(drop: float) -> str:
    return f"{drop:.2f} pts below" if drop >= 0 else f"{-drop:.2f} pts above"


def _front(table: pd.DataFrame) -> list[str]:
    int8 = bool(table["int8_val_accuracy"].notna().any())  # the INT8 columns only where they were measured
    lines = ["## Pareto front", "",
             "Search-time figures after each candidate's brief fine-tune; recovered figures after the longer, "
             "distilled recovery fine-tune of a spread of front points (holdout: the drop from the baseline's "
             "accuracy on validation images the search never read, where the budget holds some out). Test "
             "accuracy is measured for front points only. ★ marks the headline. Latency: ms at batch 1 (onnxruntime, CPU) and the speed-up over the "
             "model pruned from at batch 1 / 64: median (range) of interleaved repeats, '≈ 1x' inside the noise." +
             (INT8_NOTE if int8 else ""), "",
             "| trial | size MB | params | MACs | pruned % | val acc | test acc | recovered val | recovered test "
             "| drop (pts) | ORT ms b1 | speed-up b1 / b64 | " + ("INT8 val | INT8 MB | INT8 ms b1 / b64 | "
                                                               "INT8 vs FP32 b1 / b64 | " if int8 else "") + "reference |",
             "|---" * (17 if int8 else 13) + "|"]
    for _, r in table.iterrows():
        rv = "" if pd.isna(r["recovered_val_accuracy"]) else f"{r['recovered_val_accuracy']:.4f}"
        if not pd.isna(r.get("holdout_drop")):
            rv += f" (holdout: {_below(r['holdout_drop'])})"
        rt = "" if pd.isna(r["recovered_test_accuracy"]) else f"{r['recovered_test_accuracy']:.4f}"
        ms = "" if pd.isna(r["ort_b1_ms"]) else f"{r['ort_b1_ms']:.3f}"
        up = "" if pd.isna(r["ort_b1_speedup"]) else f"{speedup_text(r, 'ort', 1)} / {speedup_text(r, 'ort', 64)}"
        mark = " ★" if r["headline"] else ""
        lines.append(f"| {r['trial']}{mark} | {r['size_mb']:.4f} | {r['params']:,} | {r['macs']:,} | "
                     f"{r['pruned_pct']:.1f} | {r['val_accuracy']:.4f} | {fmt_accuracy(r['test_accuracy'])} | {rv} | {rt} | "
                     f"{_num(r['accuracy_drop'])} | {ms} | {up} | {_int8_cells(r) if int8 else ''}"
                     f"{'' if pd.isna(r['reference']) else r['reference']} |")
    return lines + [""]


INT8_NOTE = (" INT8: the recovered point's static INT8 ONNX file, made as `search.pick --export onnx --int8` makes "
             "it with its defaults (onnxruntime QDQ, per-channel weights, up to 512 calibration images, the layers "
             "INT8 makes noisiest kept FP32 until its val top-1 is within 0.5 pt of the FP32 file's); its val "
             "top-1, file MB, onnxruntime ms (1 thread) and its speed-up over the same point's FP32 file "
             "(interleaved repeats; below 1x: INT8 is slower). pareto.csv adds its test top-1, its top-1 "
             "agreement with FP32 and the layers kept in FP32.")


def _int8_cells(r: pd.Series) -> str:
    if pd.isna(r["int8_val_accuracy"]):
        return "| | | | "
    return (f"{r['int8_val_accuracy']:.4f} | {r['int8_size_mb']:.4f} | {r['int8_ort_b1_ms']:.3f} / "
            f"{r['int8_ort_b64_ms']:.2f} | {int8_speedup_text(r, 1)} / {int8_speedup_text(r, 64)} | ")


def _int8_failures(failed: dict) -> list[str]:
    """Points whose INT8 file could not be made, each with its one-line reason."""
    if not failed:
        return []
    return [f"- INT8 of trial {n}: not made — {why}" for n, why in sorted(failed.items())] + [""]


def _objectives_text(cfg: StudyConfig) -> str:
    return ", ".join(f"{name} ({'max' if direction == 'maximize' else 'min'})" for name, direction in
                     cfg.search.objectives())


def _projections(cfg: StudyConfig, study: optuna.Study) -> list[str]:
    """A study of three or more objectives: its front in every objective, and the figure of the
    front's 2-D projections (the table above is its size-ordered view)."""
    names = [name for name, _ in cfg.search.objectives()]
    if len(names) < 3:
        return []
    lines = [f"## The {len(names)}-objective front", "",
             f"{len(study.best_trials)} trials are non-dominated in ({', '.join(names)}); "
             f"`{PROJECTIONS}` shows the front's 2-D projections (every pair of objectives; grey: all "
             f"candidates).", "", f"![front projections]({PROJECTIONS})", "",
             "| trial | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for t in sorted(study.best_trials, key=lambda t: tuple(t.values[1:])):
        lines.append(f"| {t.number} | " + " | ".join(f"{v:.4g}" for v in t.values) + " |")
    return lines + [""]


def _references(gaps: pd.DataFrame, judged: str | None = None) -> list[str]:
    room = "reference_loss" in gaps and gaps["reference_loss"].notna().any()
    lines = ["## Search vs. the classic allocations", "",
             "Each reference plan — the same ratio in every unit (uniform), Torch-Pruning's global L1 ranking "
             "at the same target ratio (global), and the sensitivity map's threshold allocation at the uniform "
             "plan's size (sensitivity: NVIDIA Model Optimizer's FastNAS, AIMET) — measured under the same "
             "fine-tune budget, beside the best searched candidate of no larger size (the most accurate on the "
             "search's validation images), on validation accuracy"
             + (f" {judged}" if judged else "") + ". The gain's interval is a paired bootstrap over the same "
             "images (95 %); one that holds 0 is inside the noise."
             + (" The last column is what the reference itself lost against the baseline (the model the study "
                "pruned from) on those images, paired: where that holds 0 too, the reference already keeps the "
                "baseline's accuracy, and a plan of its size can beat it beyond the noise only by beating the "
                "baseline." if room else ""), "",
             "| reference | ratio | size MB | reference val acc | searched trial | searched size MB | "
             "searched val acc | gain (pts) | 95 % interval |" + (" reference's loss (pts, 95 %) |" if room else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if room else "")]
    for _, r in gaps.iterrows():
        lost = f" {_loss(r)} |" if room else ""
        if pd.isna(r["searched_trial"]):
            lines.append(f"| {r['reference']} | {r['ratio']:g} | {r['size_mb']:.4f} | "
                         f"{r['reference_val_accuracy']:.4f} | - | - | - | - | - |{lost}")
            continue
        interval = "-"
        if not pd.isna(r["gain_low"]):
            interval = f"{r['gain_low']:+.2f} to {r['gain_high']:+.2f}" + (
                " (inside the noise)" if r["gain_low"] <= 0 <= r["gain_high"] else "")
        lines.append(f"| {r['reference']} | {r['ratio']:g} | {r['size_mb']:.4f} | {r['reference_val_accuracy']:.4f} | "
                     f"{int(r['searched_trial'])} | {r['searched_size_mb']:.4f} | {r['searched_val_accuracy']:.4f} | "
                     f"{r['gain_pts']:+.2f} | {interval} |{lost}")
    return lines + [""]


def _loss(r: pd.Series) -> str:
    """A reference's loss against the baseline, with its interval; "no loss beyond the noise" when it holds 0."""
    if pd.isna(r["reference_loss"]):
        return "-"
    text = f"{r['reference_loss']:+.2f} ({r['loss_low']:+.2f} to {r['loss_high']:+.2f})"
    return text + (" no loss beyond the noise" if r["loss_low"] <= 0 else "")


def _sensitivity(results: Results, seconds: float | None) -> list[str]:
    """The map as a table of drops (points of validation accuracy on the map's images, after adaptive
    BN, each key pruned alone): the heat map of sensitivity.png in numbers."""
    smap = results.sensitivity
    if smap is None:
        return []
    cost = f" It took {seconds:.0f} s." if seconds is not None else ""
    lines = ["## Sensitivity map", "",
             f"Each plan key pruned alone at each ratio, BatchNorm recalibrated, scored on the map's validation "
             f"images (unpruned: {smap.base_accuracy:.4f}); the drop in points (negative: better than unpruned, "
             f"noise). The `sensitivity` reference and the centre of the search space come from it "
             f"(docs/design.md, \"The sensitivity map\").{cost} Picture: `{SENSITIVITY_PNG}`.", "",
             "| key | " + " | ".join(f"{r:g}" for r in smap.ratios) + " |",
             "|---|" + "---|" * len(smap.ratios)]
    for key, accs in smap.accuracy.items():
        lines.append(f"| {key} | " + " | ".join(f"{100 * (smap.base_accuracy - a):.1f}" for a in accs) + " |")
    return lines + [""]
