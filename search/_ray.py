"""Ray Tune backend: the same :class:`Objective`, scheduled by Ray Tune with ``OptunaSearch`` on the
study's own storage, so the dashboard, ``search.report`` and ``search.pick`` work unchanged.

This is the only module that imports Ray (about 4 s and 640 MB to start here).

No trial scheduler is used: ASHA and the like stop trials early and report their under-trained
values as final, and with two objectives those values would land on the Pareto front. Tune runs
FIFO; our own early-stop rule inside the objective marks a stopped candidate PRUNED, and pruned
trials are never on the front.
"""
from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from search._objective import Objective, SearchContext
from search._study import finished, make_sampler, occupied, open_storage

TRIAL_ID = "optuna_trial_id"
_WORKER_STATE: dict[tuple, tuple] = {}  # per Ray worker process: argv -> (context, study, early stop)


def _worker_state(argv: tuple[str, ...]):
    if argv not in _WORKER_STATE:
        from search.run import build_context, config_from_args, get_args_parser, quiet_optuna

        quiet_optuna()
        args = get_args_parser().parse_args(list(argv))
        cfg = config_from_args(args)
        ctx = build_context(cfg, download=False, progress=False)
        study = optuna.load_study(study_name=cfg.study_name, storage=open_storage(cfg, heartbeat_s=args.heartbeat_s))
        _WORKER_STATE[argv] = (ctx, study, not args.no_early_stop)
    return _WORKER_STATE[argv]


def ray_trial(config: dict, *, argv: tuple[str, ...]) -> dict:
    """The Ray trainable: runs the Objective on the Optuna trial that OptunaSearch asked for."""
    ctx, study, early_stop = _worker_state(argv)
    trial = optuna.Trial(study, config[TRIAL_ID])  # its params are already set: suggest_* returns them
    try:
        accuracy, size = Objective(ctx, early_stop=early_stop)(trial)
    except optuna.TrialPruned:
        # OptunaSearch cannot tell PRUNED for two objectives, so the worker does; Tune insists on the
        # metric keys, and OptunaSearch's later tell of this finished trial is refused (and logged).
        study.tell(trial, state=TrialState.PRUNED)
        attrs = study._storage.get_trial(trial._trial_id).user_attrs
        return {"val_accuracy": attrs.get("proxy_accuracy"), "size": attrs.get("objective_value"), "pruned": True}
    return {"val_accuracy": accuracy, "size": size}


class Space:
    """Define-by-run search space (picklable: Tune checkpoints its searcher): the same parameters as
    the objective suggests, plus the Optuna trial's id for the worker."""

    def __init__(self, keys: tuple[str, ...], max_ratio: float) -> None:
        self.keys, self.max_ratio = keys, max_ratio

    def __call__(self, trial) -> dict:
        for key in self.keys:
            trial.suggest_float(key, 0.0, self.max_ratio)
        return {TRIAL_ID: trial._trial_id}


def worker_argv(argv: list[str], ctx: SearchContext, config: str | None) -> tuple[str, ...]:
    """The command line for workers, with every path absolute (Tune runs trials in their own folders)."""
    cfg = ctx.cfg
    extra = ["--out", str(cfg.out_dir.resolve()), "--data-dir", str(Path(cfg.data_dir).resolve())]
    if cfg.storage and cfg.storage.startswith("sqlite:///") and not cfg.storage.startswith("sqlite:////"):
        extra += ["--storage", "sqlite:///" + str(Path(cfg.storage[len("sqlite:///"):]).resolve())]
    if config:
        extra += ["--config", str(Path(config).resolve())]
    if cfg.from_checkpoint:
        extra += ["--from", str(Path(cfg.from_checkpoint).resolve())]
    return tuple(argv + extra)


def run_with_ray(study: optuna.Study, storage, ctx: SearchContext, argv: list[str], args, *, progress: bool) -> None:
    """Run the study's missing trials as Ray Tune trials; start (and always stop) a local Ray unless
    ``--ray-address`` names a cluster."""
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    cfg = ctx.cfg
    missing = cfg.total_trials - occupied(study)
    if missing <= 0:
        return
    logging.getLogger("ray.tune.search.optuna.optuna_search").setLevel(logging.ERROR)
    searcher = OptunaSearch(space=Space(tuple(ctx.keys), cfg.search.max_ratio), metric=["val_accuracy", "size"], mode=["max", "min"],
                            sampler=make_sampler(cfg), study_name=cfg.study_name, storage=storage)
    if args.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=args.max_concurrent)
    trainable = tune.with_resources(partial(ray_trial, argv=worker_argv(argv, ctx, args.config)),
                                    {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})
    bar = tqdm(total=cfg.total_trials, initial=finished(study), desc="trials (ray)", unit="trial", disable=not progress)

    class Progress(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            bar.n = finished(study)
            bar.set_postfix(front=len(study.best_trials))

    started = not ray.is_initialized()
    if started:
        if args.ray_address:
            ray.init(address=args.ray_address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
    try:
        tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=missing,
                                                                 reuse_actors=True),  # keeps the per-process context
                           run_config=tune.RunConfig(name=cfg.study_name, verbose=0, callbacks=[Progress()],
                                                     storage_path=str((cfg.out_dir / "ray").resolve())))
        tuner.fit()
    finally:
        bar.close()
        if started:
            ray.shutdown()
