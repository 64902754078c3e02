"""Typed records of what a study writes: one place knows the attribute keys.

A trial's attributes are one :class:`TrialRecord`, written field by field as the trial goes
(``TrialIO.write``) and read back whole (``TrialRecord.read``); the study's own attributes
(its config, fingerprint, base model, baseline figures, recoveries) are keyed by the constants here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from pruning import BaselineFigures, from_plain, precision_for, to_plain
from search.config import ConfigError

# study user attributes
CONFIG_KEY = "config"              # the resolved StudyConfig, plain
SETTINGS_KEY = "settings"          # its fingerprint (dotted keys)
BASE_KEY = "base"                  # "baseline" or the --from path the study prunes
DIGEST_KEY = "base_digest"         # checksum of the model the study prunes
BASELINE_FIGURES_KEY = "reference"        # the unpruned baseline's figures (pruning.BaselineFigures)
RECOVERED_PREFIX = "recovered:"    # + trial number -> RecoveryRecord
REPORT_ARTIFACTS_KEY = "report_artifacts"  # file name -> artifact id of the study-level artifacts
PRECISION_KEY = "precision"        # the one precision (fp32 / bf16) every figure of the study is scored in


@dataclass(frozen=True)
class Rung:
    """A trial's validation accuracy after ``steps`` fine-tune steps (rung 0: the adaptive-BN proxy)."""

    rung: int
    steps: int
    val_accuracy: float


@dataclass(frozen=True)
class TrialRecord:
    """Everything a trial records, in the order the dashboard shows it (the key figures first).

    Sizes are MB of fp32 weights, ``pruned_pct`` the size reduction in percent, accuracies fractions.
    """

    val_accuracy: float | None = None        # after the full fine-tune (None: stopped or over budget)
    size_mb: float | None = None
    pruned_pct: float | None = None
    macs: int | None = None
    params: int | None = None
    latency_ms: float | None = None          # batch 1, when the objective is latency
    objective_value: float | None = None     # the size measure the study minimizes (its first)
    objective_values: tuple[float, ...] = ()  # every measure the study minimizes, in its order
    proxy_accuracy: float | None = None      # after adaptive BatchNorm, before any fine-tune (rung 0)
    rungs: tuple[Rung, ...] = ()
    stop_rung: int | None = None             # the rung where successive halving stopped it
    stop_reason: str | None = None
    fail_reason: str | None = None
    skipped: str | None = None               # why it was not fine-tuned (over the size budget)
    finetune_seconds: float | None = None
    checkpoint: str | None = None            # artifact id of its checkpoint
    checkpoint_sha256: str | None = None     # that file's SHA-256 when written: a swapped artifact is refused
    reference: str | None = None             # "uniform" or "global" for the enqueued classic plans
    reference_ratio: float | None = None
    plan: dict[str, float] = field(default_factory=dict)  # unit -> ratio
    enqueued: dict[str, float] = field(default_factory=dict)  # the sampler's parameters a reference was queued with
    worker: str | None = None                # host:pid that ran it
    heartbeat: float | None = None           # unix time of its worker's last sign of life (journal storages)

    @classmethod
    def read(cls, trial: FrozenTrial | optuna.Trial) -> "TrialRecord":
        """The record of a trial (attributes this version does not know are ignored)."""
        known = {k: v for k, v in trial.user_attrs.items() if k in _FIELDS}
        try:
            return from_plain(cls, known, where=f"trial {trial.number}", error=ConfigError)
        except ConfigError as exc:
            raise ConfigError(f"the study's trial {trial.number} has a malformed attribute ({exc}); "
                              f"the storage was edited by hand or damaged") from None


_FIELDS = {f.name for f in dataclasses.fields(TrialRecord)}
KEY_FIELDS = ("val_accuracy", "size_mb", "pruned_pct")  # written first so the dashboard lists them first


def inputs_of(rec: TrialRecord) -> dict[str, Any]:
    """What a trial is asked to evaluate (its reference kind, and a reference's exact plan): the
    attributes a retry or a re-enqueued reference starts from. Everything else is an output.

    Every reference keeps its plan: its sampler parameters only approximate it (around a map's
    centre a shape moves a key's ratio by at most ``OFFSET``), and a "uniform 0.5" that pruned
    LeNet5's conv1 at 0.25 would not be the allocation the report names."""
    attrs = {k: None for k in KEY_FIELDS}
    if rec.reference:
        attrs.update(reference=rec.reference, reference_ratio=rec.reference_ratio)
        if rec.enqueued:
            attrs["enqueued"] = dict(rec.enqueued)
        if rec.plan:
            attrs["plan"] = dict(rec.plan)
    return attrs


def cleared_outputs(rec: TrialRecord, present: set[str]) -> dict[str, Any]:
    """The output attributes among ``present`` reset to their defaults (a retried trial's copies of
    the failed run's figures must not pass for its own)."""
    keep = inputs_of(rec)
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(TrialRecord)}
    return {k: to_plain(defaults[k]) for k in present & _FIELDS if k not in keep}


def record_value(name: str, value: Any) -> Any:
    """A field's value as stored (plain JSON values); unknown names are a bug, so they raise."""
    if name not in _FIELDS:
        raise KeyError(f"TrialRecord has no field {name!r}")
    return to_plain(value)


@dataclass(frozen=True)
class RecoveryRecord:
    """A front point after the recovery fine-tune (stored on the study: finished trials are frozen)."""

    trial: int
    val_accuracy: float
    test_accuracy: float | None  # None: the dataset has no test split
    checkpoint: str          # artifact id (a study-level artifact)
    epochs: float
    seconds: float
    # judged on the validation images the search never read (the budget's holdout_subset): the point's and
    # the baseline's accuracy there, and how many images; None / 0 where the budget sets no holdout
    holdout_val_accuracy: float | None = None
    holdout_baseline_val_accuracy: float | None = None
    holdout_images: int = 0

    @property
    def holdout_drop(self) -> float | None:
        """Points of validation accuracy below the baseline's on the holdout (None: not judged there)."""
        if self.holdout_val_accuracy is None or self.holdout_baseline_val_accuracy is None:
            return None
        return 100.0 * (self.holdout_baseline_val_accuracy - self.holdout_val_accuracy)


def recoveries(study: optuna.Study) -> dict[int, RecoveryRecord]:
    """Trial number -> its recovery, for the front points recovered so far."""
    found = {}
    for key, value in study.user_attrs.items():
        if key.startswith(RECOVERED_PREFIX):
            rec = from_plain(RecoveryRecord, value, where=key, error=ConfigError)
            found[rec.trial] = rec
    return found


def save_recovery(study: optuna.Study, rec: RecoveryRecord) -> None:
    study.set_user_attr(f"{RECOVERED_PREFIX}{rec.trial}", to_plain(rec))


def baseline_of(study: optuna.Study) -> BaselineFigures:
    """The unpruned baseline's figures the study compares with."""
    plain = study.user_attrs.get(BASELINE_FIGURES_KEY)
    if plain is None:
        raise ConfigError(f"study {study.study_name!r} has no baseline figures; it was not made by search.run")
    return from_plain(BaselineFigures, plain, where="the study's baseline figures", error=ConfigError)


def precision_of(study: optuna.Study, precision: str, device) -> str:
    """The precision every figure of the study is computed in (trials, map, recovery, report, pick): the
    one it recorded when it was made; for a study made before it recorded one, ``precision`` (the config's
    ``finetune.precision``) resolved on its unpruned baseline, as :func:`search.trial.study_precision` does."""
    return study.user_attrs.get(PRECISION_KEY) or precision_for(precision, baseline_of(study).params, device)


def completed(study: optuna.Study) -> list[tuple[FrozenTrial, TrialRecord]]:
    """Complete trials that were fine-tuned, with their records."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rec = TrialRecord.read(t)
        if rec.val_accuracy is not None:
            out.append((t, rec))
    return out


def fmt_accuracy(value) -> str:
    """An accuracy (a fraction) with 4 decimals, or "—" where it was not measured (no test split)."""
    try:
        return "—" if value is None or value != value else f"{float(value):.4f}"
    except (TypeError, ValueError):
        return "—"


def axes(study: optuna.Study) -> tuple[int, int]:
    """Where a trial's values hold the validation accuracy and the size axis (the first minimized
    objective: size, params, MACs or latency), found by the study's metric names and directions."""
    size = next(i for i, d in enumerate(study.directions) if d == StudyDirection.MINIMIZE)
    return study.metric_names.index("val_accuracy"), size
