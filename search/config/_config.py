"""Study configuration in one schema: YAML -> flags -> one frozen :class:`StudyConfig` -> the
written ``config.resolved.yaml``, which ``--config`` reads back to the same study.

Settings a trial's values depend on are fingerprinted (a study refuses to resume with others);
where and how a run executes is a :class:`~search.config._options.RunOptions`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from models import SourceError, model_spec, parse_source
from pruning import (AUGMENTATIONS, DATASETS, GRANULARITIES, IMPORTANCES, TrainConfig, bounds, check_fields, from_plain,
                     to_plain)
from search.config._errors import ConfigError
from search.config._samplers import SAMPLER_CHOICES, sampler_refusal
from search.config._tables import (CENTERS, INT8_CHOICES, LATENCY_BACKENDS, LATENCY_CHOICES, OBJECTIVES, REFERENCES,
                                   SCOPES)
from search.config._yaml import read_yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
ANY_MODEL_CONFIG = "any-model.yaml"  # the defaults of a model without its own configs/<name>.yaml
RESOLVED_NAME = "config.resolved.yaml"
OPTIONS_NAME = "run-options.yaml"


def _ratio(low: float = 0.0) -> dict:
    return bounds(low=low, below=1)


@dataclass(frozen=True)
class Budget:
    """How much compute a study spends (``smoke``: the whole pipeline in minutes on a CPU)."""

    trials: int = field(metadata=bounds(low=1, high=100_000))  # the study's default total
    finetune_steps: int = field(metadata=bounds(low=1, high=10_000_000))  # each candidate's brief fine-tune
    bn_batches: int = field(metadata=bounds(low=0, high=100_000))  # batches for adaptive BatchNorm
    baseline_epochs: float = field(metadata=bounds(above=0, high=10_000))
    baseline_min_steps: int | None = field(default=None, metadata=bounds(low=0, high=10_000_000))
    recovery_epochs: float | None = field(default=None, metadata=bounds(above=0, high=10_000))
    batch_size: int | None = field(default=None, metadata=bounds(low=1, high=65_536))  # overrides the recipes'
    train_subset: int | None = field(default=None, metadata=bounds(low=2, high=100_000_000))
    val_subset: int | None = field(default=None, metadata=bounds(low=1, high=100_000_000))
    test_subset: int | None = field(default=None, metadata=bounds(low=1, high=100_000_000))
    # validation images the search never reads (a stratified draw of those val_subset leaves), on which the
    # recovered points and the baseline are judged and the headline is taken; None: on the search's own val
    # images, whose front was selected on them (optimistic: docs/measurements.md). Not fingerprinted.
    holdout_subset: int | None = field(default=None, metadata=bounds(low=1, high=100_000_000))
    # the reference plans' ratios under this budget (a short study spends its trials on the search);
    # None: search.reference_ratios
    reference_ratios: tuple[float, ...] | None = field(default=None, metadata=_ratio())
    # false: this budget fine-tunes every candidate to the end (a short study, whose few searched
    # candidates successive halving would stop at rungs the references pass unjudged); None: search.early_stop
    early_stop: bool | None = None
    # which front points the report times (all, recovered, none) under this budget: a short CPU study
    # spends minutes timing every front point on onnxruntime; None: report.latency
    latency: str | None = field(default=None, metadata=bounds(choices=LATENCY_CHOICES))
    # what the budget is for (search.config._tables.SCOPES): smoke, short or full; None: as its name says
    # (a budget named smoke is one, default and full are full, any other is short). Not fingerprinted.
    scope: str | None = field(default=None, metadata=bounds(choices=SCOPES))

    def __post_init__(self) -> None:
        check_fields(self, "budget")


@dataclass(frozen=True)
class SearchSpace:
    """What is searched and how candidates are stopped early (see docs/design.md, "Rungs")."""

    granularity: str = field(default="unit", metadata=bounds(choices=GRANULARITIES))
    max_ratio: float = field(default=0.9, metadata=bounds(above=0, below=1))
    importance: str = field(default="l1", metadata=bounds(choices=tuple(IMPORTANCES)))
    round_to: int | None = field(default=None, metadata=bounds(low=1, high=1024))
    references: tuple[str, ...] = field(default=("uniform", "global"), metadata=bounds(choices=REFERENCES))
    # shape 0 of the space: the uniform plan, or the sensitivity map's cost-aware allocation (uniform by
    # default so a study made before the map resumes as it was; the configs choose sensitivity)
    center: str = field(default="uniform", metadata=bounds(choices=CENTERS))
    # around the map's centre, the most a sampled shape moves a key's ratio either way (search.trial._space)
    center_offset: float = field(default=0.25, metadata=bounds(above=0, high=1))
    # the sensitivity map's grid: every key pruned alone at each of these ratios (at most max_ratio)
    sensitivity_ratios: tuple[float, ...] = field(default=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                                                  metadata=bounds(above=0, below=1))
    # the map's share of the trials' fine-tune work: it scores as many validation images as that share
    # allows (at least MAP_MIN_IMAGES, at most rung_val_images), so a short budget gets a short map
    map_share: float = field(default=0.1, metadata=bounds(above=0, high=10))
    reference_ratios: tuple[float, ...] = field(default=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
                                                metadata=_ratio())
    objective: str = field(default="size", metadata=bounds(choices=tuple(OBJECTIVES)))
    # more measures to minimize beside ``objective`` (e.g. latency: a 3-objective study); none by default
    extra_objectives: tuple[str, ...] = field(default=(), metadata=bounds(choices=tuple(OBJECTIVES)))
    latency_backend: str = field(default="torch", metadata=bounds(choices=LATENCY_BACKENDS))
    sampler: str = field(default="tpe", metadata=bounds(choices=SAMPLER_CHOICES))
    early_stop: bool = True
    eta: int = field(default=3, metadata=bounds(low=2, high=100))
    rungs: tuple[float, ...] = field(default=(0.0, 1 / 9, 1 / 3), metadata=_ratio())
    rung_min_trials: int = field(default=4, metadata=bounds(low=1, high=100_000))
    rung_val_images: int | None = field(default=2000, metadata=bounds(low=1, high=100_000_000))  # None: all
    keep_layers: tuple[str, ...] = ()  # layers whose outputs are kept besides the classifier (heads, custom outputs)

    def __post_init__(self) -> None:
        check_fields(self, "search")

    def minimized(self) -> tuple[str, ...]:
        """The measures the study minimizes, in order (the first is the size axis of the report)."""
        return (self.objective, *self.extra_objectives)

    def objectives(self) -> list[tuple[str, str]]:
        """The study's objectives as data: (metric name, direction), validation accuracy first; the
        study's directions, the dashboard's metric names, the rungs and the report derive from it."""
        return [("val_accuracy", "maximize")] + [(OBJECTIVES[o], "minimize") for o in self.minimized()]


@dataclass(frozen=True)
class Constraints:
    max_size_mb: float | None = field(default=None, metadata=bounds(above=0, high=1e6))
    min_accuracy: float | None = field(default=None, metadata=bounds(low=0, high=1))

    def __post_init__(self) -> None:
        check_fields(self, "constraints")


@dataclass(frozen=True)
class ReportConfig:
    """How the results are summarized; not part of the fingerprint (no trial depends on it)."""

    headline_max_drop: float = field(default=1.0, metadata=bounds(low=0, high=100))  # points of val accuracy
    recover_points: int = field(default=5, metadata=bounds(low=0, high=1000))  # front points recovered
    undertrained_margin: float = field(default=0.5, metadata=bounds(low=0, high=100))  # points
    latency: str = field(default="all", metadata=bounds(choices=LATENCY_CHOICES))  # which front points are timed
    # the recovered points among the timed ones also get an INT8 file, made and measured as pick --int8 would
    # (6-7 s per point on a tiny LeNet5 smoke study, 2 busy cores; docs/usage.md, "INT8"); "none" skips it
    int8: str = field(default="recovered", metadata=bounds(choices=INT8_CHOICES))

    def __post_init__(self) -> None:
        check_fields(self, "report")


@dataclass(frozen=True)
class StudyConfig:
    """Everything that defines one study; written as ``config.resolved.yaml`` in the input schema."""

    model: str  # a model source: registry name, torchvision:<arch>, timm:<name>, pkg.module:fn or file.py:fn
    budgets: dict[str, Budget]
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the source's builder
    weights: str | None = None  # the user's trained weights (a state dict): the baseline, never retrained
    weights_sha256: str | None = None  # their checksum (fingerprinted, so a resume with others is refused)
    image_size: int | None = field(default=None, metadata=bounds(low=8, high=4096))  # None: the source's
    crop_pct: float | None = field(default=None, metadata=bounds(above=0, high=1))  # None: the source's
    mean: tuple[float, ...] | None = None  # normalization; None: the source's (ImageNet) or the dataset's
    std: tuple[float, ...] | None = field(default=None, metadata=bounds(above=0))
    dataset: str = field(default="fashion-mnist", metadata=bounds(choices=DATASETS))
    val_fraction: float = field(default=0.1, metadata=bounds(above=0, below=1))
    augment: str = field(default="auto", metadata=bounds(choices=AUGMENTATIONS))
    seed: int = field(default=0, metadata=bounds(low=0, high=2**31 - 1))
    budget: str = "default"
    baseline: TrainConfig = TrainConfig(epochs=8, lr=0.05)
    finetune: TrainConfig = TrainConfig(lr=0.01)
    recovery: TrainConfig = TrainConfig(epochs=4, lr=0.01, kd_weight=0.5)
    search: SearchSpace = SearchSpace()
    constraints: Constraints = Constraints()
    report: ReportConfig = ReportConfig()
    from_checkpoint: str | None = None  # prune this checkpoint instead of the study's baseline

    def __post_init__(self) -> None:
        check_fields(self, "config")

    @property
    def spend(self) -> Budget:
        return self.budgets[self.budget]

    @property
    def scope(self) -> str:
        """What the active budget is for: ``smoke``, ``short`` or ``full`` (its ``scope`` field)."""
        return scope_of(self.budget, self.spend)

    def budget_of_scope(self, scope: str) -> str | None:
        """The name of the config's first budget of this scope, if any (what a refusal suggests)."""
        return next((name for name, b in self.budgets.items() if scope_of(name, b) == scope), None)

    @property
    def source(self):
        """The :class:`models.ModelSource` this study prunes."""
        return parse_source(self.model, self.model_kwargs)

    @property
    def study_name(self) -> str:
        return f"{self.source.slug}-{self.dataset}"

    @property
    def batch_size(self) -> int | None:
        return self.spend.batch_size

    @property
    def reference_ratios(self) -> tuple[float, ...]:
        """The reference plans' target ratios: the budget's where it names them, else the search's."""
        own = self.spend.reference_ratios
        return own if own is not None else self.search.reference_ratios

    @property
    def latency(self) -> str:
        """Which front points the report times: the budget's choice where it makes one, else the report's."""
        return self.spend.latency or self.report.latency

    @property
    def early_stop(self) -> bool:
        """Whether candidates are stopped at rungs: only if the search and the budget both allow it."""
        return self.search.early_stop and self.spend.early_stop is not False

    def baseline_recipe(self, epochs: float | None = None) -> TrainConfig:
        """The baseline's recipe under the budget (``epochs`` overrides the budget's)."""
        b = self.spend
        return replace(self.baseline, epochs=epochs if epochs is not None else b.baseline_epochs, seed=self.seed,
                       batch_size=b.batch_size or self.baseline.batch_size,
                       min_steps=b.baseline_min_steps if b.baseline_min_steps is not None else self.baseline.min_steps)

    def finetune_recipe(self, seed: int) -> TrainConfig:
        """A candidate's fine-tune: the budget's steps; ``seed`` orders its batches."""
        return replace(self.finetune, steps=self.spend.finetune_steps, seed=seed,
                       batch_size=self.spend.batch_size or self.finetune.batch_size)

    def recovery_recipe(self, seed: int) -> TrainConfig:
        """The longer, distilled fine-tune of a front point after the search."""
        b = self.spend
        return replace(self.recovery, epochs=b.recovery_epochs or self.recovery.epochs, seed=seed,
                       batch_size=b.batch_size or self.recovery.batch_size)

    def to_yaml(self) -> str:
        header = ("# The resolved configuration of this study (YAML + flags), in the input schema:\n"
                  f"# python -m search.run --config {RESOLVED_NAME} ... reproduces it.\n")
        plain = to_plain(self)
        plain["budgets"] = plain.pop("budgets")  # the long part last, as in configs/
        return header + yaml.safe_dump(plain, sort_keys=False)


def scope_of(name: str, budget: Budget) -> str:
    """A budget's scope: its own field, or for a config that does not say, what its name has always meant."""
    return budget.scope or {"smoke": "smoke", "default": "full", "full": "full"}.get(name, "short")


def fingerprint(cfg: StudyConfig) -> dict[str, Any]:
    """The settings a trial's values depend on, flattened to dotted keys: the config less the report
    section, the other budgets, the budget's trial total and holdout, and the starting checkpoint's path (its
    digest is pinned separately)."""
    plain = to_plain(cfg)
    plain.pop("report"), plain.pop("from_checkpoint"), plain.pop("weights")  # the weights count by checksum
    active = dict(plain.pop("budgets")[cfg.budget])
    active.pop("trials"), active.pop("scope"), active.pop("holdout_subset")  # none changes what a trial scores
    plain["budgets"] = {cfg.budget: active}
    return dict(_flatten(plain))


def _flatten(value: Any, prefix: str = ""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], value


_NEUTRAL = (None, {}, [], (), "auto")  # defaults that change nothing for a study made before their key existed
# settings added since studies were first made, at the value that behaves as before they existed (a
# study without a sensitivity map is centred on the uniform plan, and its grid is never read; a stored map
# keeps the images it was scored on)
_AS_BEFORE = {"search.center": ("uniform",), "search.sensitivity_ratios": None, "search.map_share": None,
              "search.center_offset": (0.25,)}


def first_difference(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """``key: stored -> current`` for the first fingerprinted setting that differs, else None."""
    for key in list(stored) + [k for k in current if k not in stored]:
        a, b = stored.get(key, "<unset>"), current.get(key, "<unset>")
        if "<unset>" in (a, b) and (b if a == "<unset>" else a) in _NEUTRAL:
            continue  # a setting added since the study was made, at its neutral default
        if a == "<unset>" and key in _AS_BEFORE and (_AS_BEFORE[key] is None or b in _AS_BEFORE[key]):
            continue
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            return f"{key}: the study has {a!r}, this run {b!r}"
    return None


def _set(raw: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for p in parents:
        child = node.get(p)
        node[p] = child = dict(child) if isinstance(child, dict) else ({} if child is None else child)
        if not isinstance(child, dict):
            raise ConfigError(f"{p} must be a mapping of keys to values")
        node = child
    node[leaf] = value


def build_config(raw: dict, *, where: str, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """A :class:`StudyConfig` from a config mapping with ``overrides`` (dotted keys, e.g.
    ``search.objective``) applied on top, fully checked."""
    raw = dict(raw)
    for key, value in (overrides or {}).items():
        if key == "model" and raw.get("model") not in (None, value):
            raise ConfigError(f"{where} is a config of {raw['model']!r}, not {value!r}")
        _set(raw, key, value)
    raw.setdefault("model", None)
    _source(raw["model"], raw.get("model_kwargs"))
    if not raw.get("budgets"):
        raise ConfigError(f"{where} has no budgets; give at least budgets.default")
    cfg = from_plain(StudyConfig, raw, where="config", error=ConfigError)
    _check(cfg)
    return cfg


def _check(cfg: StudyConfig) -> None:
    """Rules that span several fields."""
    if cfg.budget not in cfg.budgets:
        raise ConfigError(f"the config has no budget {cfg.budget!r}; it has: {', '.join(cfg.budgets)}")
    s = cfg.search
    named = [("search.reference_ratios", s.reference_ratios)] + [
        (f"budgets.{b}.reference_ratios", budget.reference_ratios) for b, budget in cfg.budgets.items()
        if budget.reference_ratios is not None]
    for key, ratios in named:
        for r in ratios:
            if r > s.max_ratio:
                raise ConfigError(f"{key} has {r}, above search.max_ratio {s.max_ratio}")
    if list(s.sensitivity_ratios) != sorted(set(s.sensitivity_ratios)) or not s.sensitivity_ratios:
        raise ConfigError(f"search.sensitivity_ratios must be increasing ratios, got {list(s.sensitivity_ratios)}")
    if list(s.rungs) != sorted(set(s.rungs)):
        raise ConfigError(f"search.rungs must be increasing fractions of the fine-tune, got {list(s.rungs)}")
    if s.granularity == "stage" and cfg.source.kind == "registry" and model_spec(cfg.model).stage_of is None:
        raise ConfigError(f"{cfg.model} has no stage grouping; use search.granularity unit or global")
    refusal = sampler_refusal(s)
    if refusal:
        raise ConfigError(refusal)
    if len(set(s.minimized())) < len(s.minimized()):
        raise ConfigError(f"search.extra_objectives {list(s.extra_objectives)} repeats a measure (the first is "
                          f"search.objective {s.objective!r}); name each once")
    if "latency" in s.minimized() and s.latency_backend.startswith("onnxruntime"):
        _require_onnxruntime()


def _require_onnxruntime() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError("search.latency_backend onnxruntime(-int8) needs the onnxruntime package; "
                          "run make setup") from None


def _source(model: Any, kwargs: Any):
    if not isinstance(model, str):
        raise ConfigError(f"model must name a model source, got {model!r}"[:200])
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ConfigError(f"model_kwargs must be a mapping of keyword arguments, got {kwargs!r}"[:200])
    try:
        return parse_source(model, kwargs)
    except SourceError as exc:
        raise ConfigError(str(exc)) from None


def config_path(model: str | None) -> Path:
    """``configs/<model>.yaml`` of a registry model, ``configs/any-model.yaml`` for any other source."""
    source = _source(model, None)
    return CONFIG_DIR / (f"{model}.yaml" if source.kind == "registry" else ANY_MODEL_CONFIG)


def load_config(model: str | None, *, path: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read ``configs/<model>.yaml`` (``configs/any-model.yaml`` for a model of another source, or
    ``path``), apply ``overrides`` (dotted keys) and check it all."""
    if path is None:
        path = config_path(model)
    overrides = dict(overrides or {})
    if model is not None:
        overrides["model"] = model
    return build_config(read_yaml(path), where=f"config {path}", overrides=overrides)


def config_from_plain(plain: dict) -> StudyConfig:
    """The config a study stored (its user attribute, or a worker's message)."""
    return build_config(plain, where="the study's stored config")


def config_fields() -> set[str]:
    """Top-level config keys (flags with these destinations, or ``section.key``, override the config)."""
    return {f.name for f in dataclasses.fields(StudyConfig)}

