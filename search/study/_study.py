"""Opening, pinning and seeding the Optuna study of a (model, dataset) pair."""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from pruning import BaselineFigures, CheckpointError, read_meta, to_plain
from search.config import (RESOLVED_NAME, RunOptions, StudyConfig, UsageError, make_sampler,
                           config_from_plain, fingerprint, first_difference, quiet_libraries)
from search.storage import (BASE_KEY, BASELINE_FIGURES_KEY, CONFIG_KEY, DIGEST_KEY, KEY_FIELDS, PRECISION_KEY, SETTINGS_KEY,
                            TrialRecord, baseline_path, open_storage)
from search.trial import OpenStudy

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def sampler_for(cfg: StudyConfig, salt: int) -> optuna.samplers.BaseSampler:
    """The config's sampler. ``salt`` 0 (the process that creates a study) samples reproducibly from
    ``seed``; every other process (a worker, a resume, an extension) mixes in its own salt, so two
    processes never draw the same candidates."""
    seed = cfg.seed if salt == 0 else zlib.crc32(f"{cfg.seed}:{salt}".encode()) & 0x7FFFFFFF
    return make_sampler(cfg, seed)


def find_study(storage: BaseStorage, name: str) -> bool:
    return any(s.study_name == name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))


def load_existing(storage: BaseStorage, name: str, *, salt: int = 1, cfg: StudyConfig | None = None) -> optuna.Study:
    """An existing study (its sampler is the stored config's, salted)."""
    study = optuna.load_study(study_name=name, storage=storage)
    stored = stored_config(study)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler_for(cfg or stored, salt))


def stored_config(study: optuna.Study) -> StudyConfig:
    plain = study.user_attrs.get(CONFIG_KEY)
    if plain is None:
        raise UsageError(f"study {study.study_name!r} has no stored config; it was not made by this version of "
                         f"search.run; start a new study with another --out")
    return config_from_plain(plain)


def base_label(cfg: StudyConfig) -> str:
    return cfg.from_checkpoint or "baseline"


def check_resume(study: optuna.Study, cfg: StudyConfig, out: Path) -> None:
    """Refuse, with one line, to go on with settings or a starting model other than the study's."""
    diff = first_difference(study.user_attrs.get(SETTINGS_KEY, {}), fingerprint(cfg))
    if diff:
        raise UsageError(f"study {cfg.study_name!r} cannot resume with other settings ({diff}); "
                         f"use the same settings (--config {out / RESOLVED_NAME}) or another --out")
    known = study.user_attrs.get(BASE_KEY)
    if known is not None and (known == "baseline") != (cfg.from_checkpoint is None):
        raise UsageError(f"study {cfg.study_name!r} prunes from {known!r}, not {base_label(cfg)!r}; use another --out")
    digest = study.user_attrs.get(DIGEST_KEY)
    if digest is not None:
        source = Path(cfg.from_checkpoint) if cfg.from_checkpoint else baseline_path(out)
        if not source.exists():
            raise UsageError(f"{source}, the model study {cfg.study_name!r} prunes from, is missing; restore it "
                             f"(checksum {digest[:12]}...) or start a new study with another --out")
        try:
            _, current = read_meta(source)
        except CheckpointError as exc:
            raise UsageError(f"the model study {cfg.study_name!r} prunes from is unusable: {exc}") from None
        if current != digest:
            raise UsageError(f"{source} is not the model study {cfg.study_name!r} prunes from (checksum "
                             f"{current[:12]}... instead of {digest[:12]}...); restore it or use another --out")


def create_study(storage: BaseStorage, cfg: StudyConfig, *, digest: str, baseline: BaselineFigures,
                 precision: str) -> optuna.Study:
    """A new study holding its config, fingerprint, base model's digest, baseline figures and the one
    precision its figures are scored in."""
    study = optuna.create_study(storage=storage, study_name=cfg.study_name, sampler=sampler_for(cfg, 0),
                                directions=[d for _, d in cfg.search.objectives()])
    study.set_user_attr(CONFIG_KEY, to_plain(cfg))
    study.set_user_attr(SETTINGS_KEY, fingerprint(cfg))
    study.set_user_attr(BASE_KEY, base_label(cfg))
    study.set_user_attr(DIGEST_KEY, digest)
    study.set_user_attr(BASELINE_FIGURES_KEY, to_plain(baseline))
    study.set_user_attr(PRECISION_KEY, precision)
    study.set_metric_names([name for name, _ in cfg.search.objectives()])
    return study


def placeholders() -> dict:
    """The key attributes a trial is created with, so the dashboard lists them first."""
    return {k: None for k in KEY_FIELDS}


def seed_references(study: optuna.Study, keys: list[str], plans: dict[tuple[str, float], tuple[dict, dict]]) -> int:
    """Enqueue the classic reference plans not yet measured (or lost to a failure).

    ``plans``: (kind, ratio) -> (params for the sampler, the exact per-unit plan or {}).
    """
    present = set()
    for t in study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING, TrialState.WAITING)):
        rec = TrialRecord.read(t) if t.state != TrialState.WAITING else None
        kind, ratio = (rec.reference, rec.reference_ratio) if rec else (t.user_attrs.get("reference"),
                                                                         t.user_attrs.get("reference_ratio"))
        present.add((kind, ratio))
    added = 0
    for (kind, ratio), (params, plan) in plans.items():
        if (kind, ratio) not in present:
            attrs = {**placeholders(), "reference": kind, "reference_ratio": ratio, "enqueued": dict(params)}
            if plan:
                attrs["plan"] = plan
            study.enqueue_trial(params, user_attrs=attrs)
            added += 1
    return added


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def occupied(study: optuna.Study) -> int:
    """Trials that count towards the total: finished, or running now."""
    return len(study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,)))


def trial_handle(study: optuna.Study, storage: BaseStorage, number: int) -> optuna.Trial:
    """A writable handle on an existing trial, found through the storage's public API."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))


def worker_id(host: str) -> str:
    return f"{host}:{os.getpid()}"


def join_study(cfg: StudyConfig, opts: RunOptions, out: Path) -> OpenStudy:
    """The one way a second process of a run (a ``--workers`` process, a Ray actor) opens its study:
    its own sampler seed (salted by the pid), the shared storage, and the context trials need."""
    quiet_libraries()
    storage = open_storage(out, opts.storage, heartbeat_s=opts.heartbeat_s)
    study = load_existing(storage, cfg.study_name, salt=os.getpid(), cfg=cfg)
    joined = OpenStudy(cfg=cfg, opts=opts, out=out, storage=storage, study=study)
    _ = joined.ctx  # built now, with the centre, precision and aim targets the first process stored
    return joined
