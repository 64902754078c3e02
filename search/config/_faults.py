"""Fault injection for the project's own kill tests: ``AUTOML_PRUNE_FAULT=<point>`` makes the
process SIGKILL itself when it reaches that point (e.g. ``after_ask``: a trial exists, its worker
is not yet recorded). Unset, this costs one dictionary lookup."""
from __future__ import annotations

import os
import signal

ENV = "AUTOML_PRUNE_FAULT"


def fault(point: str) -> None:
    if os.environ.get(ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
