"""Train the unpruned baseline: ``python -m search.train --model lenet5``."""
from __future__ import annotations

import json

from search._cli import UsageError, common_parser, run_cli
from search._config import load_config
from search._context import baseline_path, load_data, train_baseline


def get_args_parser():
    parser = common_parser("search.train", "Train the unpruned baseline and save <out>/baseline.pt.")
    parser.add_argument("--epochs", type=float, help="default: the budget's baseline_epochs")
    parser.add_argument("--no-download", action="store_true", help="never download a missing dataset")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.epochs is not None and args.epochs <= 0:
        get_args_parser().error(f"--epochs must be positive, got {args.epochs}")
    cfg = load_config(args.model, path=args.config, dataset=args.dataset, budget=args.budget,
                      out=args.out, data_dir=args.data_dir, device=args.device, seed=args.seed)
    if (cfg.out_dir / "journal.log").exists():
        raise UsageError(f"{cfg.out_dir} holds a study pruned from its baseline; retraining would leave its "
                         f"trials without their base; use another --out")
    data = load_data(cfg, download=not args.no_download)
    ckpt = train_baseline(cfg, data, epochs=args.epochs)
    keys = ("model", "dataset", "epochs", "val_accuracy", "test_accuracy", "train_seconds", "images_per_s")
    print(json.dumps({**{k: ckpt.metadata[k] for k in keys}, "checkpoint": str(baseline_path(cfg))}))
    return 0


if __name__ == "__main__":
    run_cli(main)
