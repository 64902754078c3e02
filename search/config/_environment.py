"""The process's environment: flags read from environment variables, and libraries kept quiet."""
from __future__ import annotations

import os
import warnings


def quiet_libraries() -> None:
    """Optuna's per-trial log lines and experimental warnings are noise in a command's output."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed to be used with Study.optimize.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "yes", "true")
