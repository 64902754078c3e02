"""Ray Tune backend: the broker's trials, executed on Ray Tune's actors.

This is the only module that imports Ray (about 4 s and 640 MB to start here). Ray Tune schedules
the trials (resources per trial, a local Ray or a cluster); the search itself stays the broker's:
a Tune ``Searcher`` asks the broker for each trial and tells it each outcome, so stale trials, the
failure streak, successive halving, notes and progress are the same as with the other backend. No
Tune scheduler is used: they would stop trials and report under-trained values as final.
"""
from __future__ import annotations

import logging
import os
import secrets
from dataclasses import replace
from functools import partial
from pathlib import Path

from optuna.trial import TrialState
from ray.tune.search import Searcher

from search.config import UsageError, config_from_plain, options_from_plain
from search.storage import record_value
from search.study._broker import HOST, WAIT, TrialBroker, heartbeat
from search.study._study import join_study, trial_handle, worker_id
from search.trial import Outcome, run_trial

_ACTOR_STATE: dict[str, tuple] = {}  # per Ray worker process: the study's context, built once
# A local Ray (2.60) turns token authentication on and, unless a token is given, writes one to
# ~/.ray/auth_token, where it outlives the study and makes a later `ray start --head` demand it. The
# local Ray gets this process's own token through its environment instead: one per process, since
# Ray's loader caches the token it first read.
_LOCAL_TOKEN = secrets.token_hex(32)
_AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


class BrokerSearcher(Searcher):
    """Tune's view of the broker: suggest = ask, trial complete = tell."""

    def __init__(self, broker: TrialBroker) -> None:
        super().__init__(metric="val_accuracy", mode="max")
        self.broker, self.numbers, self.error = broker, {}, None

    def suggest(self, trial_id: str):
        try:
            trial = self.broker.ask(block=False)
        except UsageError as exc:  # the failure streak: stop asking, re-raised after Tune is done
            self.error = exc
            return Searcher.FINISHED
        if trial is None:
            return Searcher.FINISHED
        if trial == WAIT:
            return None
        self.numbers[trial_id] = trial.number
        return {"number": trial.number}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number = self.numbers.pop(trial_id, None)
        if number is None:
            return
        if error or not result or "state" not in result:  # the actor raised, died, or lost its node
            self.broker.lost(number, "its Ray trial ended without an outcome: an error or a lost actor or node "
                                     "(see Ray's log)")
            return
        values = tuple(result["values"]) if result["values"] else None
        self.broker.tell(number, Outcome(TrialState[result["state"]], values, result["reason"]))

    def save(self, checkpoint_path: str) -> None:  # the study's storage is the searcher's state
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


def ray_trial(config: dict, *, cfg: dict, opts: dict, out: str) -> dict:
    """The Ray trainable: runs one trial of the study in this actor's process."""
    if out not in _ACTOR_STATE:
        _ACTOR_STATE[out] = join_study(config_from_plain(cfg), options_from_plain(opts), Path(out))
    joined = _ACTOR_STATE[out]
    ctx, study, storage = joined.ctx, joined.study, joined.storage
    trial = trial_handle(study, storage, config["number"])
    trial.set_user_attr("worker", record_value("worker", worker_id(HOST)))  # this actor: where it ran
    with heartbeat(trial, storage, study, ctx.opts.heartbeat_s):
        outcome = run_trial(ctx, trial)
    return {"state": outcome.state.name, "values": list(outcome.values) if outcome.values else None,
            "reason": outcome.reason, "val_accuracy": outcome.values[0] if outcome.values else 0.0}


def absolute_paths(opts):
    """Run options with absolute paths: Tune runs each trial in a folder of its own."""
    storage = opts.storage
    if storage and storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
        storage = "sqlite:///" + str(Path(storage[len("sqlite:///"):]).resolve())
    return replace(opts, data_dir=str(Path(opts.data_dir).resolve()), storage=storage)


def run_with_ray(job) -> None:
    """Run the study's missing trials as Ray Tune trials; start (and always stop) a local Ray unless
    ``--ray-address`` names a cluster."""
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from pruning import to_plain

    opened = job.opened
    opts, cfg = absolute_paths(opened.opts), opened.cfg
    if cfg.from_checkpoint:
        cfg = replace(cfg, from_checkpoint=str(Path(cfg.from_checkpoint).resolve()))
    searcher = BrokerSearcher(job.broker)
    search_alg = ConcurrencyLimiter(searcher, max_concurrent=opts.max_concurrent) if opts.max_concurrent else searcher
    trainable = tune.with_resources(
        partial(ray_trial, cfg=to_plain(cfg), opts=to_plain(opts), out=str(opened.out.resolve())),
        {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})
    started = not ray.is_initialized()
    if started:
        kw = {"address": opts.ray_address} if opts.ray_address else {"num_cpus": os.cpu_count(),
                                                                       "include_dashboard": False}
        if not opts.ray_address and not any(v in os.environ for v in _AUTH_VARIABLES):
            os.environ["RAY_AUTH_TOKEN"] = _LOCAL_TOKEN  # the driver's and the local cluster's processes'
        ray.init(log_to_driver=False, logging_level=logging.WARNING, **kw)
    try:
        tuner = tune.Tuner(trainable,
                           tune_config=tune.TuneConfig(search_alg=search_alg, num_samples=-1, reuse_actors=True),
                           run_config=tune.RunConfig(name=opened.cfg.study_name, verbose=0,
                                                     storage_path=str((opened.out / "ray").resolve())))
        tuner.fit()
    finally:
        if started:
            ray.shutdown()
    if searcher.error is not None:
        raise searcher.error
