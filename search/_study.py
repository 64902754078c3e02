"""Opening, seeding and running the Optuna study of a (model, dataset) pair."""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tqdm.auto import tqdm

from search._cli import UsageError
from search._config import StudyConfig
from search._objective import CATCH, METRIC_NAMES, Objective

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_FAILURES_IN_A_ROW = 5  # then the settings are wrong, not the candidates: stop instead of looping


def journal_path(cfg: StudyConfig) -> Path:
    return cfg.out_dir / "journal.log"


def artifact_dir(cfg: StudyConfig) -> Path:
    return cfg.out_dir / "artifacts"


def open_storage(cfg: StudyConfig, *, heartbeat_s: int = 60) -> BaseStorage:
    """The journal file of the study folder, or the RDB at ``--storage`` with heartbeats every
    ``heartbeat_s`` seconds: a worker silent for twice that long has its trial failed, and the
    trial is enqueued again (up to twice)."""
    if cfg.storage is None:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(journal_path(cfg))))
    try:
        return RDBStorage(cfg.storage, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    except Exception as exc:  # sqlalchemy raises many types for a bad URL or an unreachable server
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot open storage {cfg.storage!r}: {first}") from None


@contextlib.contextmanager
def study_lock(cfg: StudyConfig):
    """Serialize the workers of one machine around seeding and starting trials (an advisory file
    lock in the study folder), so that ``--trials`` stays the total and no seed is enqueued twice."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.out_dir / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
        settings = study.user_attrs.get("settings", cfg.fingerprint())
        changed = [f"{k}={settings[k]!r}" for k in settings if settings[k] != cfg.fingerprint().get(k)]
        if changed:
            raise UsageError(f"study {cfg.study_name!r} was run with {', '.join(changed)}; resume it with the same "
                             f"settings or use another --out")
        if known is None:
            study.set_user_attr("base", base)
            study.set_user_attr("settings", cfg.fingerprint())
            study.set_metric_names(["val_accuracy", METRIC_NAMES[cfg.search.objective]])
    return study


def fail_stale_trials(study: optuna.Study) -> int:
    """Fail trials whose worker is gone: RUNNING under a process of this host that no longer exists
    (a killed run), or, on an RDB storage with heartbeats, silent past the grace period."""
    heartbeat = getattr(study._storage, "is_heartbeat_enabled", None)  # RDB storages (maybe cached)
    if heartbeat is not None and heartbeat():
        optuna.storages.fail_stale_trials(study)  # heartbeats cover every host, and retry the trial
        return 0
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


def occupied(study: optuna.Study) -> int:
    """Trials that count towards the total: finished, or running now."""
    return len(study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,)))


def run_trials(study: optuna.Study, objective: Objective, cfg: StudyConfig, *, progress: bool = True,
               poll_s: float = 1.0) -> None:
    """Run trials until the study holds ``cfg.total_trials`` finished ones (complete or pruned),
    cooperating with other workers on the same storage, with a progress bar showing the front size
    and the best accuracy at the smallest size."""
    total = cfg.total_trials
    bar = tqdm(total=total, initial=finished(study), desc="trials", unit="trial", disable=not progress)
    start, failures, waiting = time.perf_counter(), [], False

    def update(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        failures[:] = failures + [trial] if trial.state == TrialState.FAIL else []
        front = study.best_trials
        postfix = {"front": len(front)}
        if front:
            postfix["acc@smallest"] = f"{min(front, key=lambda t: t.values[1]).values[0]:.3f}"
        bar.set_postfix(postfix)
        bar.n = finished(study)
        bar.refresh()

    try:
        while True:
            gate = contextlib.ExitStack()
            gate.enter_context(study_lock(cfg))  # held until this worker's next trial exists
            try:
                fail_stale_trials(study)
                if finished(study) >= total:
                    break
                if len(failures) >= MAX_FAILURES_IN_A_ROW:
                    reason = failures[-1].user_attrs.get("fail_reason", "see the log")
                    raise UsageError(f"{len(failures)} trials in a row failed (last: {reason}); "
                                     f"check the fine-tune settings of the config")
                if occupied(study) >= total:  # the rest is running elsewhere; wait in case a worker dies
                    if progress and not waiting:
                        bar.write(f"waiting for {occupied(study) - finished(study)} trial(s) running in other workers")
                    waiting = True
                    gate.close()
                    time.sleep(poll_s)
                    continue
                objective.on_start = gate.close
                study.optimize(objective, n_trials=1, catch=CATCH, callbacks=[update],
                               gc_after_trial=True, show_progress_bar=False)
            finally:
                objective.on_start = None
                gate.close()
    finally:
        bar.close()
    if progress:
        print(f"{finished(study)} trials finished; this run took {time.perf_counter() - start:.0f} s", flush=True)
