"""Take one Pareto-optimal checkpoint off a study's front:

    python -m search.pick --model lenet5 --max-size-mb 0.05 --save picked.pt
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from pruning import BaselineFigures, PruningRecord, evaluate, load_checkpoint, measure, save_pruned, train, with_metrics
from search.cli import add_int8_flags, add_study_flags, int8_settings, number, open_study, run_cli, study_parser
from search.config import UsageError, quiet_libraries
from search.results import (check_calibration_count, collect, export_paths, int8_table, selection_accuracy,
                            selection_drop, ship, within_drop)
from search.storage import check_targets, precision_of, refuse_other_study, refuse_own_file
from search.trial import in_precision, test_accuracy


def get_args_parser():
    parser = study_parser("search.pick", "Choose a Pareto-optimal pruned model and save it.",
                          "python -m search.pick --model lenet5 --max-drop 1.0 --save picked.pt")
    add_study_flags(parser)  # search.run's flags, checked against the study
    rule = parser.add_mutually_exclusive_group(required=True)
    rule.add_argument("--max-size-mb", type=number(float, above=0, high=1e6),
                      help="the most accurate front point of at most this size (MB)")
    rule.add_argument("--min-accuracy", type=number(float, low=0, high=1, fraction=True),
                      help="the smallest front point with at least this val accuracy (a fraction)")
    rule.add_argument("--max-drop", type=number(float, low=0, high=100),
                      help="the smallest front point within this many val accuracy points of the baseline")
    rule.add_argument("--trial", type=number(int, low=0), help="this front trial, e.g. the report's headline")
    parser.add_argument("--finetune-epochs", type=number(float, low=0, high=10_000), default=0.0,
                        help="a further fine-tune with the recovery recipe, distilled when recovery.kd_weight > 0")
    parser.add_argument("--save", required=True, help="where to write the picked checkpoint (required)")
    parser.add_argument("--force", action="store_true",
                        help="replace existing files at --save / the export's paths (default: refuse them)")
    parser.add_argument("--export", choices=("onnx",),
                        help="also write <save>.onnx and a <save>.json sidecar, verified against onnxruntime "
                             "(default: the checkpoint only)")
    add_int8_flags(parser)
    return parser


def _describe(rows: pd.DataFrame) -> str:
    return ", ".join(f"trial {int(r['trial'])} ({r['size_mb']:.4f} MB, val {selection_accuracy(r):.4f})"
                     for _, r in rows.iterrows())


def choose(table: pd.DataFrame, *, max_size_mb=None, min_accuracy=None, max_drop=None, trial=None,
           baseline: BaselineFigures) -> pd.Series:
    """Apply one budget to the front; selection reads validation accuracy (after recovery when the
    point was recovered; a drop is read on the holdout when the point was judged there), never test."""
    table = table.assign(selection=[selection_accuracy(r) for _, r in table.iterrows()],
                         drop=[selection_drop(r, baseline) for _, r in table.iterrows()])
    if trial is not None:
        hit = table[table["trial"] == trial]
        if hit.empty:
            raise UsageError(f"trial {trial} is not on the front; front trials: {', '.join(map(str, table['trial']))}")
        return hit.iloc[0]
    if max_size_mb is not None:
        ok = table[table["size_mb"] <= max_size_mb]
        if ok.empty:
            raise UsageError(f"no front point is at most {max_size_mb} MB; the smallest: "
                             f"{_describe(table.sort_values('size_mb').head(3))}")
        return ok.sort_values(["selection", "size_mb"], ascending=[False, True]).iloc[0]
    if min_accuracy is not None:
        ok, what = table[table["selection"] >= min_accuracy - 1e-12], f"val accuracy {min_accuracy:.4f}"
    else:
        ok = table[[within_drop(d, max_drop) for d in table["drop"]]]
        what = f"val accuracy {baseline.val_accuracy - max_drop / 100.0:.4f} (within {max_drop:g} pts of the baseline's)"
    if ok.empty:
        raise UsageError(f"no front point reaches {what}; the most accurate: "
                         f"{_describe(table.sort_values('selection', ascending=False).head(3))}")
    return ok.sort_values(["size_mb", "selection"], ascending=[True, False]).iloc[0]


def _int8_line(block: dict, folder: Path) -> dict:
    """The INT8 figures for the JSON line (the sidecar has the rest)."""
    keys = ("val_accuracy", "test_accuracy", "fp32_val_accuracy", "fp32_test_accuracy", "val_drop_pt", "test_drop_pt",
            "top1_agreement", "size_mb", "fp32_size_mb", "latency_ms", "speedup", "kept_fp32")
    return {"onnx": str(folder / block["onnx"]), **{k: block[k] for k in keys}}


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
    int8 = int8_settings(args)
    if int8 is not None and not args.export:
        raise UsageError("--int8 quantizes the ONNX export; add --export onnx")
    rule = {k: getattr(args, k) for k in ("max_size_mb", "min_accuracy", "max_drop", "trial")}
    epochs, save, export, force = args.finetune_epochs, Path(args.save), args.export, args.force
    for k in (*rule, "finetune_epochs", "save", "export", "force"):
        delattr(args, k)
    found = open_study(args)
    cfg, out = found.cfg, found.out
    refuse_own_file(out, save, "--save")
    check_targets((save,), "--save", force=force, pinned=(cfg.from_checkpoint,))
    exports = export_paths(save.with_suffix(".onnx"), int8=int8 is not None) if export else ()
    if export:
        check_targets(exports, "--export", force=force, pinned=(cfg.from_checkpoint,))
    refuse_other_study((save,), "--save", own=out)
    refuse_other_study(exports, "--export", own=out)
    data, baseline, start = found.data, found.baseline, found.start
    if int8 is not None:
        check_calibration_count(int8, data)
    results = collect(cfg, out, found.study, data, baseline, start, latency=False, noise=False)
    if results.table.empty:
        raise UsageError(f"study {cfg.study_name} has no finished front point yet; run search.run first")
    row = choose(results.table, baseline=baseline, **rule)
    path = out / (row["recovered_checkpoint"] if isinstance(row["recovered_checkpoint"], str) else row["checkpoint"])
    # (both were checked to lie inside the study's artifact store when the table was made)
    ckpt = load_checkpoint(path, expect_model=cfg.model)
    model = ckpt.model
    precision = precision_of(found.study, cfg.finetune.precision, data.device)  # the study's, as in its report
    if epochs > 0:
        teacher = start.model if cfg.recovery.kd_weight > 0 else None
        recipe = in_precision(replace(cfg.recovery_recipe(cfg.seed), epochs=epochs), precision)
        train(model, data, recipe, teacher=teacher, progress=found.opts.progress, desc="pick fine-tune")
    m = measure(model, data.example_input(1))
    val, test = evaluate(model, data, "val", precision=precision), test_accuracy(model, data, precision)
    meta = with_metrics(replace(ckpt.meta, provenance={**ckpt.meta.provenance, "study": cfg.study_name,
                                                       "trial": int(row["trial"]), "finetune_epochs": epochs}),
                        val_accuracy=val, params=m.params, macs=m.macs, size_mb=m.size_mb,
                        **({} if test is None else {"test_accuracy": test}))
    shipped = {}
    if export:  # before the checkpoint: a failed export or INT8 bar leaves nothing written
        sidecar = ship(model, meta, ckpt.plan, data, save.with_suffix(".onnx"), int8=int8, progress=found.opts.progress)
        shipped = {"onnx": str(save.with_suffix(".onnx")), "onnx_latency_ms": sidecar["latency_ms"]["onnxruntime_cpu"]}
        if int8 is not None:
            print(int8_table(sidecar["int8"]), file=sys.stderr)
            shipped["int8"] = _int8_line(sidecar["int8"], save.with_suffix(".onnx").parent)
    save_pruned(save, model, PruningRecord(history=ckpt.history, plan=ckpt.plan), meta)
    print(json.dumps({"checkpoint": str(save), **shipped, "trial": int(row["trial"]),
                      "recovered": isinstance(row["recovered_checkpoint"], str), "size_mb": m.size_mb,
                      "params": m.params, "macs": m.macs, "pruned_pct": 100 * (1 - m.size_mb / baseline.size_mb),
                      "val_accuracy": val, "test_accuracy": test,
                      "accuracy_drop": None if test is None or baseline.test_accuracy is None
                      else 100 * (baseline.test_accuracy - test), "finetune_epochs": epochs}))
    return 0


if __name__ == "__main__":
    run_cli(main)
