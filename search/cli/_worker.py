"""A ``--workers`` process: ``python -m search.cli._worker`` reads the resolved config and run options
of its study as JSON on stdin (never a re-parsed command line) and runs trials until the study
holds its total. Not a command: ``search.run`` starts it."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from search.cli._cli import run_cli
from search.config import config_from_plain, options_from_plain
from search.study import TrialBroker, join_study, run_local, signal_ready


def main(argv: list[str] | None = None) -> int:
    message = json.loads(sys.stdin.read())
    cfg, opts = config_from_plain(message["config"]), options_from_plain(message["options"])
    out = Path(message["out"])
    joined = join_study(cfg, opts, out)
    broker = TrialBroker(joined)
    signal_ready()
    try:
        run_local(broker, joined.ctx)
    finally:
        broker.close()
    return 0


if __name__ == "__main__":
    run_cli(main)
