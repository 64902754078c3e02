"""Take one Pareto-optimal checkpoint off a study's front:

    python -m search.pick --model lenet5 --max-size-mb 0.05 --save picked.pt
"""
from __future__ import annotations

import json
from pathlib import Path

from optuna.trial import FrozenTrial

from pruning import evaluate, finetune, load_checkpoint, measure, save_pruned
from pruning._apply import PruningRecord
from search._cli import UsageError, common_parser, run_cli
from search._config import load_config
from search._context import baseline_path, existing_study
from search._report import checkpoint_path, front_trials
from search._study import artifact_dir
from search.run import quiet_optuna


def get_args_parser():
    parser = common_parser("search.pick", "Choose a Pareto-optimal pruned model and save it.")
    rule = parser.add_mutually_exclusive_group(required=True)
    rule.add_argument("--max-size-mb", type=float, help="the most accurate front point of at most this size")
    rule.add_argument("--min-accuracy", type=float, help="the smallest front point with at least this val accuracy")
    rule.add_argument("--max-drop", type=float, help="the smallest front point within this many val accuracy points")
    parser.add_argument("--finetune-epochs", type=float, default=0.0, help="recovery fine-tune, distilled")
    parser.add_argument("--storage", help="the Optuna RDB URL the study was run with")
    parser.add_argument("--save", required=True, help="where to write the picked checkpoint")
    return parser


def _describe(trials: list[FrozenTrial]) -> str:
    return ", ".join(f"trial {t.number} ({t.user_attrs['size_mb']:.4f} MB, val {t.values[0]:.4f})" for t in trials)


def choose(front: list[FrozenTrial], *, max_size_mb=None, min_accuracy=None, max_drop=None,
           baseline_val: float) -> FrozenTrial:
    """Apply one budget to the front (selection uses validation accuracy, never test)."""
    if max_size_mb is not None:
        ok = [t for t in front if t.user_attrs["size_mb"] <= max_size_mb]
        if not ok:
            nearest = sorted(front, key=lambda t: t.user_attrs["size_mb"])[:3]
            raise UsageError(f"no front point is at most {max_size_mb} MB; the smallest: {_describe(nearest)}")
        return max(ok, key=lambda t: (t.values[0], -t.user_attrs["size_mb"]))
    floor = min_accuracy if min_accuracy is not None else baseline_val - max_drop / 100.0
    ok = [t for t in front if t.values[0] >= floor]
    if not ok:
        nearest = sorted(front, key=lambda t: -t.values[0])[:3]
        raise UsageError(f"no front point reaches val accuracy {floor:.4f}; the most accurate: {_describe(nearest)}")
    return min(ok, key=lambda t: (t.user_attrs["size_mb"], -t.values[0]))


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    quiet_optuna()
    if args.finetune_epochs < 0:
        raise UsageError(f"--finetune-epochs must be 0 or more, got {args.finetune_epochs}")
    cfg = load_config(args.model, path=args.config, dataset=args.dataset, budget=args.budget, out=args.out,
                      data_dir=args.data_dir, device=args.device, seed=args.seed, storage=args.storage)
    target = Path(args.save).resolve()
    if target == baseline_path(cfg).resolve() or artifact_dir(cfg).resolve() in target.parents or target.is_dir():
        raise UsageError(f"--save {args.save} would overwrite the study's own files or is a folder; save elsewhere")
    study, data, start, reference = existing_study(cfg)
    front = [t for t in front_trials(study) if "checkpoint_artifact" in t.user_attrs]
    if not front:
        raise UsageError(f"study {cfg.study_name} has no finished front point yet; run search.run first")
    trial = choose(front, max_size_mb=args.max_size_mb, min_accuracy=args.min_accuracy, max_drop=args.max_drop,
                   baseline_val=reference["val_accuracy"])
    ckpt = load_checkpoint(checkpoint_path(cfg, trial), expect_model=cfg.model)
    model = ckpt.model
    if args.finetune_epochs > 0:
        kd = cfg.finetune.kd_weight
        finetune(model, data, epochs=args.finetune_epochs, lr=cfg.finetune.lr, teacher=start.model if kd > 0 else None,
                 kd_weight=kd, seed=cfg.seed, progress=True, batch_size=cfg.spend.batch_size or cfg.finetune.batch_size)
    m = measure(model, data.example_input(1))
    val, test = evaluate(model, data, "val"), evaluate(model, data, "test")
    meta = {**{k: ckpt.metadata[k] for k in ("model", "num_classes", "in_channels", "dataset", "reference")},
            "study": cfg.study_name, "trial": trial.number, "finetune_epochs": args.finetune_epochs,
            "val_accuracy": val, "test_accuracy": test, "params": m.params, "macs": m.macs, "size_mb": m.size_mb}
    save_pruned(args.save, model, PruningRecord(history=ckpt.history, plan=ckpt.metadata["plan"]), meta)
    print(json.dumps({"checkpoint": args.save, "trial": trial.number, "size_mb": m.size_mb, "params": m.params,
                      "macs": m.macs, "pruned_pct": 100 * (1 - m.size_mb / reference["size_mb"]),
                      "val_accuracy": val, "test_accuracy": test,
                      "accuracy_drop": 100 * (reference["test_accuracy"] - test),
                      "finetune_epochs": args.finetune_epochs}))
    return 0


if __name__ == "__main__":
    run_cli(main)
