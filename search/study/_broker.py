"""The trial broker: it runs no trial itself, it hands trials to the backends that do and takes
their outcomes back, on Optuna's public ask/tell.

Under the study lock the broker fails trials whose worker is gone, checks the total and the
failure streak, asks for a trial, records its worker and samples its plan (refusing a plan the
study already evaluated); the lock is released while the trial runs anywhere (this process, a
worker process, a Ray actor); the broker then tells the outcome: values, PRUNED or FAIL with its
reason, and a dashboard note. Every backend shares these policies.
"""
from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from datetime import datetime
from typing import Callable

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryFailedTrialCallback
from optuna.trial import FrozenTrial, TrialState

from search.config import UsageError, fault
from search.storage import (TrialRecord, cleared_outputs, inputs_of, record_value, save_trial_note, study_lock,
                            trial_note)
from search.study._progress import Progress
from search.study._study import FINISHED, finished, occupied, placeholders, trial_handle, worker_id
from search.trial import OpenStudy, Outcome, sample

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


Callback = Callable[[optuna.Study, FrozenTrial], None]  # Optuna's callback shape


class TrialBroker:
    """Ask/tell with the study's policies, shared by every backend; after each trial it tells, the
    callbacks run (the first is the run's :class:`Progress`)."""

    def __init__(self, opened: OpenStudy, *, seconds_per_trial: float | None = None, after_trials_s: float = 0.0,
                 callbacks: tuple[Callback, ...] = ()) -> None:
        self.study, self.storage, self.out = opened.study, opened.storage, opened.out
        self.cfg, self.opts = opened.cfg, opened.opts
        self.keys, self.baseline = opened.ctx.keys, opened.baseline
        self.total = self.opts.total_trials(self.cfg)
        self.streak: list[str] = []
        self.progress = Progress(self.study, self.total, enabled=self.opts.progress, workers=self.opts.workers,
                                 guess=seconds_per_trial, after_s=after_trials_s)
        self.callbacks: tuple[Callback, ...] = (self.progress, *callbacks)
        self._waiting = False

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
            if not self._waiting:
                self.progress.note(f"waiting for {occupied(self.study) - finished(self.study)} trial(s) "
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
                return trial
            self._finish(trial.number, Outcome(TrialState.FAIL, reason=f"duplicate of trial {twin}: not evaluated"),
                         counts=False)
        raise UsageError("the sampler keeps proposing plans the study has already evaluated; "
                         "use another --sampler or --seed")

    def _queued(self, number: int) -> bool:
        """Whether the asked trial came off the queue: a retry (its parameters are set) or a
        reference plan (its record names it)."""
        frozen = self.study.get_trials(deepcopy=False)[number]
        return bool(frozen.params) or TrialRecord.read(frozen).reference is not None

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

    def _fail_lost(self, t: FrozenTrial, reason: str) -> bool:
        """Fail a trial whose run was lost and enqueue its plan again; False if it had finished already."""
        handle = trial_handle(self.study, self.storage, t.number)
        try:
            handle.set_user_attr("fail_reason", reason)
            self.study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # another worker failed it first
            return False
        save_trial_note(handle, trial_note(TrialRecord.read(handle), TrialState.FAIL, reason, self.baseline))
        self._retry(t)
        return True

    def lost(self, number: int, reason: str) -> None:
        """A backend lost a trial's run (a Ray actor or its node died): the trial is failed and its
        plan retried, as a trial whose worker died is; it counts towards the failure streak, so a
        backend that loses every run stops the study instead of looping."""
        t = self.study.get_trials(deepcopy=False)[number]
        if t.state != TrialState.RUNNING or not self._fail_lost(t, reason):
            return  # failed by a stale check first, or its outcome was told
        self.streak.append(reason)
        self.progress.note(f"trial {number} failed: {reason}; its plan runs again")

    def _retry(self, t: FrozenTrial) -> None:
        """Run a lost trial's plan again (at most twice, as Optuna's heartbeat retries do)."""
        history = RetryFailedTrialCallback.retry_history(t) + [t.number]
        if len(history) > MAX_RETRIES:
            return
        rec = TrialRecord.read(t)
        if not t.params and not rec.enqueued:
            return  # lost before its plan was sampled: the sampler proposes another
        first = RetryFailedTrialCallback.retried_trial_number(t)
        # the record RetryFailedTrialCallback reads and writes, whether the plan was sampled or not
        system = {"failed_trial": t.number if first is None else first, "retry_history": history}
        if not t.params:  # an enqueued plan lost before it was sampled: queued again as enqueue_trial does
            system["fixed_params"] = dict(rec.enqueued)
        self.study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=t.params, distributions=t.distributions, user_attrs=inputs_of(rec),
            system_attrs=system))

    # --- tell --------------------------------------------------------------------------------

    def tell(self, number: int, outcome: Outcome) -> None:
        """Finish a trial with its outcome, write its note, and update the progress."""
        self._finish(number, outcome, counts=True)

    def _finish(self, number: int, outcome: Outcome, *, counts: bool) -> None:
        handle = trial_handle(self.study, self.storage, number)
        save_trial_note(handle, trial_note(TrialRecord.read(handle), outcome.state, outcome.reason, self.baseline))
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
            self.progress.note(f"trial {number} failed: {outcome.reason}")
        elif outcome.state == TrialState.COMPLETE:
            self.streak.clear()
        frozen = self.study.get_trials(deepcopy=False)[number]
        for callback in self.callbacks:
            callback(self.study, frozen)

    def close(self) -> None:
        self.progress.close()


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
