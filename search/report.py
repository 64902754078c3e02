"""Rewrite a study's pareto.csv, report.md and pareto.png: ``python -m search.report --model lenet5``."""
from __future__ import annotations

from search.cli import add_study_flags, open_study, run_cli, study_parser
from search.config import quiet_libraries
from search.results import write_report


def get_args_parser():
    parser = study_parser("search.report", "Write the report files of an existing study.",
                          "python -m search.report --model lenet5")
    add_study_flags(parser)  # search.run's flags, checked against the study
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    quiet_libraries()
    found = open_study(args)
    for path in write_report(found, progress=found.opts.progress).paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main)
