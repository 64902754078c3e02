"""The AutoML search over structured-pruning plans, in layers (each imports only those above it in
this list):

- ``search.config``  what a study is asked to do: the config schema, the tables, ``UsageError``;
- ``search.storage`` what a study writes and where: folder, journal/RDB, lock, records, dashboard notes;
- ``search.trial``   one trial: context (data, baseline), space, rungs, the objective, latency;
- ``search.results`` the front, the report files, the verdict, shipping a pick (ONNX + sidecar);
- ``search.study``   running a study: the broker on ask/tell, backends, estimate, recovery, session;
- ``search.cli``     what the commands share: flags, one-line errors, the ``--workers`` process;

and the commands on top, one module each: ``python -m search.run`` (``train``, ``pick``, ``report``,
``recover``, ``export``, ``summary``). The layers load on first use (``search.study`` …), so a
command imports only what it needs."""
from __future__ import annotations

import importlib

LAYERS = ("config", "storage", "trial", "results", "study", "cli")
__all__ = list(LAYERS)


def __getattr__(name: str):
    if name in LAYERS:
        return importlib.import_module(f"search.{name}")
    raise AttributeError(f"module 'search' has no attribute {name!r}")
