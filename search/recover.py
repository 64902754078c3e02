"""Recover a spread of an existing study's front (a longer, distilled fine-tune) and rewrite its
report: ``python -m search.recover --model lenet5``. search.run does this at its end."""
from __future__ import annotations

from dataclasses import replace

from search.cli import add_study_flags, number, open_study, run_cli, study_parser
from search.config import quiet_libraries
from search.results import write_report
from search.storage import fmt_accuracy
from search.study import recover


def get_args_parser():
    parser = study_parser("search.recover", "Fine-tune a spread of a study's front longer; rewrite its report.",
                          "python -m search.recover --model lenet5 --points 8")
    add_study_flags(parser)  # search.run's flags, checked against the study
    parser.add_argument("--points", type=number(int, low=0, high=1000),
                        help="front points to recover (default: the config's report.recover_points)")
    parser.add_argument("--holdout", type=number(int, low=1, high=100_000_000), metavar="N",
                        help="judge the recovered points, and the baseline, on N validation images the search never "
                             "read (of those the budget's val_subset leaves), also the points recovered before "
                             "(default: the budget's holdout_subset)")
    parser.add_argument("--quiet", dest="progress", action="store_const", const=False,
                        help="no progress output (default: progress on stderr)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    points, holdout = args.points, args.holdout
    del args.points, args.holdout
    quiet_libraries()
    found = open_study(args)
    if points is not None:
        found.cfg = replace(found.cfg, report=replace(found.cfg.report, recover_points=points))
    if holdout is not None:
        cfg = found.cfg
        found.cfg = replace(cfg, budgets={**cfg.budgets, cfg.budget: replace(cfg.spend, holdout_subset=holdout)})
    for rec in recover(found, progress=found.opts.progress):
        held = "" if rec.holdout_drop is None else f", {rec.holdout_drop:.2f} pts down on {rec.holdout_images:,} held-out val images"
        print(f"trial {rec.trial}: val {rec.val_accuracy:.4f}, test {fmt_accuracy(rec.test_accuracy)} after {rec.epochs:g} "
              f"epochs ({rec.seconds:.0f} s){held}")
    for path in write_report(found, progress=found.opts.progress).paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main)
