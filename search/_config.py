"""Study configuration: YAML defaults, CLI overrides, merged into frozen dataclasses that reject
unknown keys and are written next to the results they produce."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from models import list_models
from pruning import DATASETS, GRANULARITIES, IMPORTANCES, TrainConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
OBJECTIVES = ("size", "params", "macs", "latency")
SAMPLERS = ("tpe", "nsga2", "random")
BUDGETS = ("smoke", "default", "full")


class ConfigError(ValueError):
    """A configuration that cannot be used: the message says which key and what is allowed."""


@dataclass(frozen=True)
class Budget:
    """How much compute a study spends (``smoke``: whole pipeline in minutes on a CPU)."""

    trials: int
    finetune_steps: int            # optimizer steps of each candidate's brief fine-tune
    bn_batches: int                # training batches for adaptive-BatchNorm recalibration
    baseline_epochs: float         # epochs of the unpruned baseline when it has to be trained
    batch_size: int | None = None  # overrides the recipes' batch size (small for CPU smoke runs)
    train_subset: int | None = None
    val_subset: int | None = None
    test_subset: int | None = None


@dataclass(frozen=True)
class FinetuneConfig:
    lr: float = 0.01
    kd_weight: float = 0.0
    batch_size: int = 128


@dataclass(frozen=True)
class SearchSpace:
    granularity: str = "unit"
    max_ratio: float = 0.9
    importance: str = "l1"
    round_to: int | None = None
    uniform_ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    objective: str = "size"
    sampler: str = "tpe"
    early_stop_margin: float = 0.05        # accuracy points (fraction) a proxy must trail by
    early_stop_size_tolerance: float = 0.05  # "no larger" allows this relative slack
    headline_max_drop: float = 1.0         # report headline: max test accuracy drop, in points


@dataclass(frozen=True)
class StudyConfig:
    """Everything that defines one study; written as ``config.resolved.yaml``."""

    model: str
    dataset: str
    val_fraction: float
    baseline: TrainConfig
    finetune: FinetuneConfig
    search: SearchSpace
    budgets: dict[str, Budget]
    budget: str = "default"
    trials: int | None = None      # the study's total; the budget's when None
    seed: int = 0
    device: str = "auto"
    data_dir: str = "data"
    out: str | None = None
    storage: str | None = None
    max_size_mb: float | None = None
    min_accuracy: float | None = None
    from_checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spend(self) -> Budget:
        return self.budgets[self.budget]

    @property
    def total_trials(self) -> int:
        return self.trials if self.trials is not None else self.spend.trials

    def fingerprint(self) -> dict[str, Any]:
        """The settings a study cannot change once it has trials (their values would not compare)."""
        s = self.search
        return {"budget": self.budget, "objective": s.objective, "granularity": s.granularity,
                "importance": s.importance, "max_ratio": s.max_ratio, "round_to": s.round_to}

    @property
    def study_name(self) -> str:
        return f"{self.model}-{self.dataset}"

    @property
    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        suffix = "" if self.budget == "default" else f"-{self.budget}"
        return Path("studies") / f"{self.study_name}{suffix}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(dataclasses.asdict(self)), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, data: Any, where: str):
    """Construct a dataclass from a mapping, rejecting unknown keys with a one-line error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key {where}.{unknown[0]}; allowed: {', '.join(sorted(known))}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_budget(name: str, b: Budget) -> None:
    def whole(value, key, low):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"budgets.{name}.{key} must be a whole number >= {low}, got {value!r}")
    whole(b.trials, "trials", 1)
    whole(b.finetune_steps, "finetune_steps", 1)
    whole(b.bn_batches, "bn_batches", 0)
    for key in ("batch_size", "train_subset", "val_subset", "test_subset"):
        if getattr(b, key) is not None:
            whole(getattr(b, key), key, 1)
    if not isinstance(b.baseline_epochs, (int, float)) or b.baseline_epochs <= 0:
        raise ConfigError(f"budgets.{name}.baseline_epochs must be a positive number, got {b.baseline_epochs!r}")


def _check(cfg: StudyConfig) -> None:
    def choose(value, allowed, key):
        if value not in allowed:
            raise ConfigError(f"{key} {value!r} is not one of: {', '.join(map(str, allowed))}")
    choose(cfg.model, list_models(), "model")
    choose(cfg.dataset, DATASETS, "dataset")
    choose(cfg.budget, BUDGETS, "budget")
    choose(cfg.search.granularity, GRANULARITIES, "granularity")
    choose(cfg.search.importance, IMPORTANCES, "importance")
    choose(cfg.search.objective, OBJECTIVES, "objective")
    choose(cfg.search.sampler, SAMPLERS, "sampler")
    choose(cfg.device, ("auto", "cpu", "cuda"), "device")
    if cfg.budget not in cfg.budgets:
        raise ConfigError(f"the config has no budget {cfg.budget!r}; it has: {', '.join(cfg.budgets)}")
    for name, budget in cfg.budgets.items():
        _check_budget(name, budget)
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {cfg.val_fraction}")
    if cfg.search.round_to is not None and (not isinstance(cfg.search.round_to, int) or cfg.search.round_to < 1):
        raise ConfigError(f"search.round_to must be a whole number >= 1 or null, got {cfg.search.round_to!r}")
    if not 0 < cfg.search.max_ratio < 1:
        raise ConfigError(f"search.max_ratio must be in (0, 1), got {cfg.search.max_ratio}")
    for r in cfg.search.uniform_ratios:
        if not isinstance(r, (int, float)) or not 0 <= r <= cfg.search.max_ratio:
            raise ConfigError(f"uniform ratio {r!r} is outside [0, {cfg.search.max_ratio}]")
    if cfg.total_trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {cfg.total_trials}")
    if cfg.max_size_mb is not None and not (math.isfinite(cfg.max_size_mb) and cfg.max_size_mb > 0):
        raise ConfigError(f"--max-size-mb must be a positive number, got {cfg.max_size_mb}")
    if cfg.min_accuracy is not None and not 0 <= cfg.min_accuracy <= 1:
        raise ConfigError(f"--min-accuracy is a fraction in [0, 1], got {cfg.min_accuracy}")


def load_config(model: str, *, path: str | Path | None = None, **overrides: Any) -> StudyConfig:
    """Read ``configs/<model>.yaml`` (or ``path``), apply CLI ``overrides`` (None means "not given")
    and validate. Search-space keys (``granularity``, ``objective``, ...) may be overridden too."""
    if model not in list_models():
        raise ConfigError(f"unknown model {model!r}; choose one of: {', '.join(list_models())}")
    path = Path(path) if path else CONFIG_DIR / f"{model}.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config {path} is not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values")
    raw = dict(raw)
    allowed = {"dataset", "val_fraction", "baseline", "finetune", "search", "budgets"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {path}; allowed: {', '.join(sorted(allowed))}")
    if not isinstance(raw.get("search") or {}, dict):
        raise ConfigError(f"search in {path} must be a mapping of keys to values")
    search = dict(raw.get("search") or {})
    for key in ("granularity", "objective", "sampler", "importance"):
        if overrides.get(key) is not None:
            search[key] = overrides.pop(key)
        else:
            overrides.pop(key, None)
    if "uniform_ratios" in search:
        if not isinstance(search["uniform_ratios"], list):
            raise ConfigError(f"search.uniform_ratios in {path} must be a list of ratios")
        search["uniform_ratios"] = tuple(search["uniform_ratios"])
    budgets = raw.get("budgets") or {}
    if not isinstance(budgets, dict):
        raise ConfigError(f"budgets in {path} must be a mapping")
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        cfg = _assemble(model, raw, search, budgets, given)
        _check(cfg)
    except TypeError as exc:  # e.g. a string where a number belongs
        raise ConfigError(f"config {path}: a value has the wrong type ({exc})") from None
    return cfg


def _assemble(model: str, raw: dict, search: dict, budgets: dict, given: dict) -> StudyConfig:
    try:
        val_fraction = float(raw.get("val_fraction", 0.1))
    except (TypeError, ValueError):
        raise ConfigError(f"val_fraction must be a number, got {raw.get('val_fraction')!r}") from None
    return StudyConfig(
        model=model,
        dataset=given.pop("dataset", raw.get("dataset", "fashion-mnist")),
        val_fraction=val_fraction,
        baseline=_build(TrainConfig, raw.get("baseline") or {}, "baseline"),
        finetune=_build(FinetuneConfig, raw.get("finetune") or {}, "finetune"),
        search=_build(SearchSpace, search, "search"),
        budgets={k: _build(Budget, v, f"budgets.{k}") for k, v in budgets.items()},
        **_known_overrides(given),
    )


def _known_overrides(given: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(StudyConfig)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}")
    return given


def baseline_recipe(cfg: StudyConfig, epochs: float | None = None) -> TrainConfig:
    """The baseline's training recipe under the study's budget (``epochs`` overrides)."""
    spend = cfg.spend
    return dataclasses.replace(cfg.baseline, epochs=epochs if epochs is not None else spend.baseline_epochs,
                               batch_size=spend.batch_size or cfg.baseline.batch_size, seed=cfg.seed)
