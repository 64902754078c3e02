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
    parser.add_argument("--quiet", dest="progress", action="store_const", const=False,
                        help="no progress output (default: progress on stderr)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    points = args.points
    del args.points
    quiet_libraries()
    found = open_study(args)
    if points is not None:
        found.cfg = replace(found.cfg, report=replace(found.cfg.report, recover_points=points))
    for rec in recover(found, progress=found.opts.progress):
        print(f"trial {rec.trial}: val {rec.val_accuracy:.4f}, test {fmt_accuracy(rec.test_accuracy)} after {rec.epochs:g} "
              f"epochs ({rec.seconds:.0f} s)")
    for path in write_report(found, progress=found.opts.progress).paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main)
