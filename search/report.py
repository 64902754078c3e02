"""Rewrite a study's pareto.csv, report.md and pareto.png: ``python -m search.report --model lenet5``."""
from __future__ import annotations

from search._cli import quiet_libraries, resolve, run_cli, study_parser
from search._context import load_data, start_checkpoint
from search._records import reference_of
from search._report import write_report
from search._session import open_existing


def get_args_parser():
    return study_parser("search.report", "Write the report files of an existing study.",
                        "python -m search.report --model lenet5")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    quiet_libraries()
    found = open_existing(*resolve(args))
    data = load_data(found.cfg, found.opts)
    start = start_checkpoint(found.cfg, found.out, data)
    for path in write_report(found.cfg, found.out, found.study, data, reference_of(found.study), start,
                             progress=found.opts.progress).values():
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main)
