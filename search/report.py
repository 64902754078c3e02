"""Rewrite a study's pareto.csv, report.md and pareto.png: ``python -m search.report --model lenet5``."""
from __future__ import annotations

from search._cli import common_parser, run_cli
from search._config import load_config
from search._context import existing_study
from search._report import write_report
from search.run import quiet_optuna


def get_args_parser():
    parser = common_parser("search.report", "Write the report files of an existing study.")
    parser.add_argument("--storage", help="the Optuna RDB URL the study was run with")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    quiet_optuna()
    cfg = load_config(args.model, path=args.config, dataset=args.dataset, budget=args.budget, out=args.out,
                      data_dir=args.data_dir, device=args.device, seed=args.seed, storage=args.storage)
    study, data, _, reference = existing_study(cfg)
    for path in write_report(cfg, study, data, reference).values():
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main)
