"""Train the unpruned baseline: ``python -m search.train --model lenet5``."""
from __future__ import annotations

import json

from search.cli import add_study_flags, number, resolve, run_cli, study_parser
from search.config import UsageError, quiet_libraries
from search.storage import baseline_path, check_writable, journal_path
from search.trial import load_data, train_baseline


def get_args_parser():
    parser = study_parser("search.train", "Train the unpruned baseline and save <out>/baseline.pt.",
                          "python -m search.train --model lenet5 --epochs 8")
    add_study_flags(parser)
    parser.add_argument("--epochs", type=number(float, above=0, high=10_000),
                        help="default: the budget's baseline_epochs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    quiet_libraries()
    epochs = args.epochs
    del args.epochs
    cfg, opts = resolve(args)
    out = opts.out_dir(cfg)
    if cfg.weights:
        raise UsageError("--weights makes your model the baseline, which is never retrained; search.run adopts "
                         "it (python -m search.run --model ... --weights ...)")
    if journal_path(out).exists():
        raise UsageError(f"{out} holds a study pruned from its baseline; retraining would leave its trials "
                         f"without their base; use another --out")
    check_writable(out)
    data = load_data(cfg, opts)
    ckpt = train_baseline(cfg, out, data, epochs=epochs)
    m = ckpt.meta
    print(json.dumps({"model": m.model, "dataset": m.dataset, "steps": m.provenance["steps"],
                      "val_accuracy": m.metrics["val_accuracy"], "test_accuracy": m.metrics.get("test_accuracy"),
                      "train_seconds": m.metrics["train_seconds"], "checkpoint": str(baseline_path(out))}))
    return 0


if __name__ == "__main__":
    run_cli(main)
