"""What every command shares: one-line errors with exit code 2, and the common flags."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from models import UnknownModelError, list_models
from pruning import DATASETS, PruningError, TrainingDiverged
from search._config import BUDGETS, ConfigError


class UsageError(ValueError):
    """A request that cannot be carried out as given (e.g. no front point meets a budget)."""


USER_ERRORS = (ConfigError, PruningError, UnknownModelError, UsageError, TrainingDiverged)


class Parser(argparse.ArgumentParser):
    """argparse with a single-line error instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def common_parser(prog: str, description: str) -> Parser:
    parser = Parser(prog=prog, description=description)
    parser.add_argument("--model", required=True, choices=list_models(), metavar="{" + ",".join(list_models()) + "}")
    parser.add_argument("--dataset", choices=DATASETS, metavar="{" + ",".join(DATASETS) + "}",
                        help="default: the config's (fashion-mnist)")
    parser.add_argument("--config", help="YAML config (default: configs/<model>.yaml)")
    parser.add_argument("--budget", choices=BUDGETS, default="default")
    parser.add_argument("--out", help="study folder (default: studies/<model>-<dataset>[-smoke|-full])")
    parser.add_argument("--data-dir", default="data", help="where datasets are found or downloaded")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> NoReturn:
    """Run ``main`` and turn a user error into one line on stderr and exit code 2."""
    try:
        code = main(argv)
    except USER_ERRORS as exc:
        sys.stderr.write(f"error: {exc}\n")
        code = 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; run the same command again to resume\n")
        code = 130
    sys.exit(code)
