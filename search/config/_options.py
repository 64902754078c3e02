"""Where and how a run executes (device, paths, storage, trial total, workers, backend): written
beside the config as ``run-options.yaml`` and free to change between runs of one study."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pruning import bounds, check_fields, from_plain, to_plain
from search.config._config import StudyConfig, config_fields
from search.config._errors import ConfigError


@dataclass(frozen=True)
class RunOptions:
    """Where and how a run executes: free to change between runs of one study (not fingerprinted)."""

    trials: int | None = field(default=None, metadata=bounds(low=1, high=100_000))  # total; the budget's when None
    device: str = field(default="auto", metadata=bounds(choices=("auto", "cpu", "cuda")))
    data_dir: str = "data"
    cache_mb: float = field(default=4096, metadata=bounds(low=0, high=1e7))  # image folders above it are streamed
    loader_workers: int = field(default=2, metadata=bounds(low=0, high=64))  # processes decoding image files
    accept_baseline: bool = False  # go on with user weights that score at chance level
    out: str | None = None
    storage: str | None = None
    workers: int = field(default=1, metadata=bounds(low=1, high=256))
    backend: str = "optuna"
    heartbeat_s: int = field(default=60, metadata=bounds(low=1, high=86_400))
    gpus_per_trial: float = field(default=0.0, metadata=bounds(low=0, high=64))
    cpus_per_trial: float = field(default=1.0, metadata=bounds(above=0, high=1024))
    max_concurrent: int | None = field(default=None, metadata=bounds(low=1, high=10_000))
    ray_address: str | None = None
    download: bool = True
    progress: bool = True
    write_report: bool = True
    recover: bool = True
    yes: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "option")

    def out_dir(self, cfg: StudyConfig) -> Path:
        """The study folder: ``--out``, or ``studies/<model>-<dataset>[-<budget>]``."""
        if self.out:
            return Path(self.out)
        suffix = "" if cfg.budget == "default" else f"-{re.sub(r'[^A-Za-z0-9_.-]+', '-', cfg.budget)}"
        return Path("studies") / f"{cfg.study_name}{suffix}"

    def total_trials(self, cfg: StudyConfig) -> int:
        return self.trials if self.trials is not None else cfg.spend.trials

    def to_yaml(self) -> str:
        plain = to_plain(self)
        if plain["storage"]:
            plain["storage"] = redact(plain["storage"])
        return "# How the last run of this study executed (not part of its fingerprint).\n" + \
            yaml.safe_dump(plain, sort_keys=False)


def redact(url: str) -> str:
    """A storage URL without its password, for printing and writing."""
    head, sep, tail = url.partition("://")
    if sep and "@" in tail:
        auth, _, host = tail.rpartition("@")
        user = auth.split(":", 1)[0]
        return f"{head}://{user}:***@{host}" if ":" in auth else url
    return url


def options_from_plain(plain: dict) -> RunOptions:
    return from_plain(RunOptions, plain, where="option", error=ConfigError)


def option_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(RunOptions)}


assert not config_fields() & option_fields(), "a flag's destination must name a config field or an option, not both"
