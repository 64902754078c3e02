"""The one trial runner, on Optuna's public ask/tell, and the backends that execute its trials.

Under the study lock the runner fails trials whose worker is gone, checks the total and the
failure streak, asks for a trial, records its worker and samples its plan (refusing a plan the
study already evaluated); the lock is released while the trial runs anywhere (this process, a
worker process, a Ray actor); the runner then tells the outcome: values, PRUNED or FAIL with its
reason, and a dashboard note. Every backend shares these policies.
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from pruning import Reference
from search._cli import UsageError
from search._config import RunOptions, StudyConfig
from search._dashboard import save_trial_note, trial_note
from search._faults import fault
from search._objective import Outcome
from search._records import TrialRecord, cleared_outputs, inputs_of, record_value
from search._space import sample
from search._storage import study_lock
from search._study import FINISHED, finished, occupied, placeholders, trial_handle, worker_id

MAX_FAILURES_IN_A_ROW = 5  # then the settings are wrong, not the candidates: stop instead of looping
MAX_RETRIES = 2            # a trial whose worker died runs again at most this often
WAIT = "wait"              # ask(): the total is reached by trials that are running elsewhere
HOST = socket.gethostname()


def alive(pid: int) -> bool:
    """Whether a process of this host is running (a zombie, dead but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class _Clock:
    """Seconds per finished trial of this runner, for the study's ETA."""

    guess: float | None = None
    spent: float = 0.0
    count: int = 0

    def per_trial(self) -> float | None:
        return self.spent / self.count if self.count else self.guess


class TrialRunner:
    """Ask/tell with the study's policies, shared by every backend."""

    def __init__(self, study: optuna.Study, storage: BaseStorage, cfg: StudyConfig, opts: RunOptions, out: Path,
                 keys: list[str], reference: Reference, *, seconds_per_trial: float | None = None,
                 after_trials_s: float = 0.0) -> None:
        self.study, self.storage, self.cfg, self.opts, self.out = study, storage, cfg, opts, out
        self.keys, self.reference = keys, reference
        self.total = opts.total_trials(cfg)
        self.streak: list[str] = []
        self.started: dict[int, float] = {}
        self.clock = _Clock(guess=seconds_per_trial)
        self.after_trials_s = after_trials_s  # the recovery that follows, for the ETA
        self._bar: tqdm | None = None
        self._waiting = False

    @property
    def bar(self) -> tqdm:
        """The progress bar, made at first use (after the run's header lines)."""
        if self._bar is None:
            self._bar = tqdm(total=self.total, initial=min(self.total, finished(self.study)), desc="trials",
                             unit="trial", disable=not self.opts.progress, dynamic_ncols=True)
        return self._bar

    # --- ask ---------------------------------------------------------------------------------

    def ask(self, *, block: bool = True, poll_s: float = 1.0, reap: Callable[[], None] | None = None):
        """The next trial to run (its plan sampled, its worker recorded), ``None`` when the study
        holds its total, or (``block=False``) ``WAIT`` while the rest runs in other workers."""
        while True:
            if reap is not None:
                reap()
            with study_lock(self.out):
                result = self._ask_locked()
            if result != WAIT or not block:
                return result
            if not self._waiting and self.opts.progress:
                self.bar.write(f"waiting for {occupied(self.study) - finished(self.study)} trial(s) "
                               f"running in other workers")
            self._waiting = True
            time.sleep(poll_s)

    def _ask_locked(self):
        self.fail_stale()
        if finished(self.study) >= self.total:
            return None
        if len(self.streak) >= MAX_FAILURES_IN_A_ROW:
            raise UsageError(f"{len(self.streak)} trials in a row failed (last: {self.streak[-1]}); "
                             f"the settings are wrong, not the candidates: check the fine-tune recipe of the config")
        if occupied(self.study) >= self.total:
            return WAIT
        for _ in range(20):
            trial = self.study.ask()
            fault("after_ask")
            queued = self._queued(trial.number)  # enqueued on purpose: a reference plan or a retry
            if queued:  # a retry carries the failed run's attributes: clear its outputs
                for key, value in cleared_outputs(TrialRecord.read(trial), set(trial.user_attrs)).items():
                    trial.set_user_attr(key, value)
            else:
                for key, value in placeholders().items():
                    trial.set_user_attr(key, value)
            trial.set_user_attr("worker", record_value("worker", worker_id(HOST)))
            sample(trial, self.keys, self.cfg.search.granularity, self.cfg.search.max_ratio)
            twin = None if queued else self._twin(trial)
            if twin is None:
                self.started[trial.number] = time.perf_counter()
                return trial
            self._finish(trial.number, Outcome(TrialState.FAIL, reason=f"duplicate of trial {twin}: not evaluated"),
                         counts=False)
        raise UsageError("the sampler keeps proposing plans the study has already evaluated; "
                         "use another --sampler or --seed")

    def _queued(self, number: int) -> bool:
        frozen = self.study.get_trials(deepcopy=False)[number]
        return bool(frozen.params) or "fixed_params" in frozen.system_attrs

    def _twin(self, trial: optuna.Trial) -> int | None:
        """An earlier trial that evaluated (or is evaluating) the very same parameters."""
        for t in self.study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,)):
            if t.number != trial.number and t.params and t.params == trial.params:
                return t.number
        return None

    # --- stale trials ------------------------------------------------------------------------

    def fail_stale(self) -> int:
        """Fail RUNNING trials whose worker is gone; a lost reference plan is enqueued again."""
        if isinstance(self.storage, RDBStorage) and self.storage.get_heartbeat_interval():
            optuna.storages.fail_stale_trials(self.study)  # other hosts: heartbeats, with retries
        count = 0
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            reason = self._gone(t, TrialRecord.read(t))
            if reason is not None:
                self._fail_lost(t, reason)
                count += 1
        return count

    def _gone(self, t: FrozenTrial, rec: TrialRecord) -> str | None:
        age = time.time() - (t.datetime_start or datetime.now()).timestamp()
        if rec.worker is None:
            # workers of one study folder create trials under its lock, which this process holds now
            journal = not isinstance(self.storage, RDBStorage)
            return "its worker died while creating it" if journal or age > 2 * self.opts.heartbeat_s else None
        host, _, pid = rec.worker.rpartition(":")
        if host == HOST:
            return None if not pid.isdigit() or alive(int(pid)) else f"its worker process {pid} died"
        if isinstance(self.storage, RDBStorage):
            return None  # RDB heartbeats cover other hosts
        silent = time.time() - (rec.heartbeat or (t.datetime_start or datetime.now()).timestamp())
        limit = 3 * self.opts.heartbeat_s
        return f"no sign of life from {host} for {silent:.0f} s (limit {limit} s)" if silent > limit else None

    def _fail_lost(self, t: FrozenTrial, reason: str) -> None:
        handle = trial_handle(self.study, self.storage, t.number)
        handle.set_user_attr("fail_reason", reason)
        try:
            self.study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # another worker failed it first
            return
        save_trial_note(handle, trial_note(TrialRecord.read(handle), TrialState.FAIL, reason, self.reference))
        self._retry(t)

    def _retry(self, t: FrozenTrial) -> None:
        """Run a lost trial's plan again (at most twice, as Optuna's heartbeat retries do)."""
        history = list(t.system_attrs.get("retry_history", [])) + [t.number]
        if len(history) > MAX_RETRIES:
            return
        if not t.params:  # lost before its plan was sampled: only an enqueued plan is worth retrying
            if "fixed_params" in t.system_attrs:
                self.study.enqueue_trial(t.system_attrs["fixed_params"], user_attrs=inputs_of(TrialRecord.read(t)))
            return
        self.study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=t.params, distributions=t.distributions,
            user_attrs=inputs_of(TrialRecord.read(t)),
            system_attrs={"failed_trial": t.system_attrs.get("failed_trial", t.number), "retry_history": history}))

    # --- tell --------------------------------------------------------------------------------

    def tell(self, number: int, outcome: Outcome) -> None:
        """Finish a trial with its outcome, write its note, and update the progress."""
        self._finish(number, outcome, counts=True)

    def _finish(self, number: int, outcome: Outcome, *, counts: bool) -> None:
        handle = trial_handle(self.study, self.storage, number)
        save_trial_note(handle, trial_note(TrialRecord.read(handle), outcome.state, outcome.reason, self.reference))
        if outcome.state == TrialState.COMPLETE:
            self.study.tell(number, list(outcome.values))
        else:
            if outcome.state == TrialState.FAIL and outcome.reason:
                handle.set_user_attr("fail_reason", outcome.reason)
            self.study.tell(number, state=outcome.state)
        if not counts:
            return
        if outcome.state == TrialState.FAIL:
            self.streak.append(outcome.reason or "unknown")
            if self.opts.progress:
                self.bar.write(f"trial {number} failed: {outcome.reason}")
        elif outcome.state == TrialState.COMPLETE:
            self.streak.clear()
        if number in self.started:
            self.clock.spent += time.perf_counter() - self.started.pop(number)
            self.clock.count += 1
        self.refresh()

    def refresh(self) -> None:
        front = self.study.best_trials
        postfix = {"front": len(front)}
        if front:
            postfix["acc@smallest"] = f"{min(front, key=lambda t: t.values[1]).values[0]:.3f}"
        per = self.clock.per_trial()
        if per is not None:
            left = max(0, self.total - finished(self.study))
            postfix["study_eta"] = _duration(left * per / max(1, self.opts.workers) + self.after_trials_s)
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.n = min(self.total, finished(self.study))
        self.bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


@contextlib.contextmanager
def heartbeat(trial: optuna.Trial, storage: BaseStorage, study: optuna.Study, period_s: float):
    """Signs of life while a trial runs: RDB heartbeats, or a ``heartbeat`` attribute on journal
    storages (read by workers of other hosts sharing the study folder)."""
    if isinstance(storage, RDBStorage) and storage.get_heartbeat_interval():
        study_id = storage.get_study_id_from_name(study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        beat = lambda: storage.record_heartbeat(trial_id)  # noqa: E731
    else:
        beat = lambda: trial.set_user_attr("heartbeat", time.time())  # noqa: E731
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period_s):
            try:
                beat()
            except Exception:  # a storage hiccup must not kill the trial; the next beat may pass
                pass

    beat()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
