"""A ``--workers`` process: ``python -m search._worker`` reads the resolved config and run options
of its study as JSON on stdin (never a re-parsed command line) and runs trials until the study
holds its total. Not a command: ``search.run`` starts it."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from search._backends import run_local
from search._cli import quiet_libraries, run_cli
from search._config import config_from_plain, options_from_plain
from search._objective import build_context
from search._records import reference_of
from search._runner import TrialRunner
from search._storage import open_storage
from search._study import load_existing


def main(argv: list[str] | None = None) -> int:
    message = json.loads(sys.stdin.read())
    cfg, opts = config_from_plain(message["config"]), options_from_plain(message["options"])
    out = Path(message["out"])
    quiet_libraries()
    storage = open_storage(out, opts.storage, heartbeat_s=opts.heartbeat_s)
    study = load_existing(storage, cfg.study_name, salt=os.getpid(), cfg=cfg)
    ctx = build_context(cfg, opts, out)
    runner = TrialRunner(study, storage, cfg, opts, out, ctx.keys, reference_of(study))
    try:
        run_local(runner, ctx)
    finally:
        runner.close()
    return 0


if __name__ == "__main__":
    run_cli(main)
