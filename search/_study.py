"""Opening, seeding and running the Optuna study of a (model, dataset) pair."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tqdm.auto import tqdm

from search._cli import UsageError
from search._config import StudyConfig
from search._objective import CATCH, METRIC_NAMES, Objective

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def journal_path(cfg: StudyConfig) -> Path:
    return cfg.out_dir / "journal.log"


def artifact_dir(cfg: StudyConfig) -> Path:
    return cfg.out_dir / "artifacts"


def open_storage(cfg: StudyConfig) -> BaseStorage:
    """The journal file of the study folder, or the RDB at ``--storage`` (heartbeats on, so a
    killed worker's trial is failed and retried)."""
    if cfg.storage is None:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(journal_path(cfg))))
    try:
        return RDBStorage(cfg.storage, heartbeat_interval=10, grace_period=30)
    except Exception as exc:  # sqlalchemy raises many types for a bad URL or an unreachable server
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot open storage {cfg.storage!r}: {first}") from None


def dashboard_command(cfg: StudyConfig) -> str:
    storage = cfg.storage if cfg.storage else str(journal_path(cfg))
    return f"optuna-dashboard {storage} --artifact-dir {artifact_dir(cfg)}"


def make_sampler(cfg: StudyConfig) -> optuna.samplers.BaseSampler:
    name, seed = cfg.search.sampler, cfg.seed
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def open_study(cfg: StudyConfig, storage: BaseStorage, *, base: str, create: bool = True) -> optuna.Study:
    """Create or resume the study named ``<model>-<dataset>``; ``base`` says what its candidates
    are pruned from, and a study is never resumed from a different base."""
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if cfg.study_name not in names and not create:
        raise UsageError(f"no study {cfg.study_name!r} in {cfg.storage or journal_path(cfg)}; run search.run first")
    if cfg.study_name in names:  # load_study reads; create_study(load_if_exists) would append to the journal
        study = optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=make_sampler(cfg))
    else:
        study = optuna.create_study(storage=storage, study_name=cfg.study_name, sampler=make_sampler(cfg),
                                    directions=["maximize", "minimize"])
    if create:
        known = study.user_attrs.get("base")
        if known is not None and known != base:
            raise UsageError(f"study {cfg.study_name!r} prunes from {known!r}, not {base!r}; use another --out")
        if known is None:
            study.set_user_attr("base", base)
            study.set_metric_names(["val_accuracy", METRIC_NAMES[cfg.search.objective]])
    return study


def fail_stale_trials(study: optuna.Study) -> int:
    """Mark trials RUNNING under a process of this host that no longer exists as FAIL (a killed run)."""
    host, failed = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        name, _, pid = worker.rpartition(":")
        if name == host and pid.isdigit() and not _alive(int(pid)):
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "its worker process died")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            failed += 1
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def seed_uniform(study: optuna.Study, keys: list[str], ratios: tuple[float, ...]) -> int:
    """Enqueue the classic same-ratio-everywhere plans not yet measured (or lost to a failure)."""
    present = {t.user_attrs.get("uniform") for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING))}
    added = 0
    for r in ratios:
        if float(r) not in present:
            study.enqueue_trial({k: float(r) for k in keys}, user_attrs={"uniform": float(r)})
            added += 1
    return added


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_trials(study: optuna.Study, objective: Objective, total: int, *, progress: bool = True) -> None:
    """Run until the study holds ``total`` finished trials (complete or pruned), with a progress bar
    showing the front size and the best accuracy at the smallest size."""
    done = finished(study)
    if done >= total:
        return
    bar = tqdm(total=total, initial=done, desc="trials", unit="trial", disable=not progress)
    start = time.perf_counter()

    def update(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        front = study.best_trials
        postfix = {"front": len(front)}
        if front:
            smallest = min(front, key=lambda t: t.values[1])
            postfix["acc@smallest"] = f"{smallest.values[0]:.3f}"
        bar.set_postfix(postfix)
        bar.n = finished(study)
        bar.refresh()
        if finished(study) >= total:
            study.stop()

    try:
        study.optimize(objective, n_trials=total - done, catch=CATCH, callbacks=[update],
                       gc_after_trial=True, show_progress_bar=False)
    finally:
        bar.close()
    if progress:
        print(f"{finished(study)} trials finished in {time.perf_counter() - start:.0f} s", flush=True)
