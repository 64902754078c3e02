"""One run of ``search.run``: open or create the study under the lock, build what trials share,
hand the broker to a backend, then recover the front and write the report."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import optuna
from optuna.storages import BaseStorage

from pruning import atomic_write_text, read_meta
from search.config import OPTIONS_NAME, RESOLVED_NAME, AimedSpread, RunOptions, StudyConfig, UsageError
from search.storage import (BASELINE, JOURNAL, baseline_of, check_writable, dashboard_command, open_storage, precision_of,
                            study_lock)
from search.study._backends import Job
from search.study._estimate import Estimate, describe, duration, estimate, guard
from search.study._references import reference_plans
from search.study._broker import TrialBroker
from search.study._study import check_resume, create_study, find_study, finished, load_existing, seed_references
from search.trial import (OpenStudy, adopt_weights, aim_spread, aim_targets, build_context, build_model,
                          load_data, preflight, prepare_map, sensitivity_plans, start_checkpoint, train_baseline)


def _say(opts: RunOptions, text: str) -> None:
    if opts.progress:
        print(text, file=sys.stderr, flush=True)


def open_for_run(cfg: StudyConfig, opts: RunOptions, out: Path) -> OpenStudy:
    """Under the study lock: check a resumed study's settings and starting model before anything is
    written, train the baseline if the study is new, create the study, enqueue the references."""
    if cfg.from_checkpoint:
        read_meta(cfg.from_checkpoint)  # a foreign or damaged file is refused before anything else
    data = load_data(cfg, opts)  # a missing or damaged dataset is refused before anything is written
    # a starting checkpoint that does not rebuild, or does not fit the data, is refused before the journal exists
    start = start_checkpoint(cfg, out, data) if cfg.from_checkpoint else None
    _say(opts, f"device: {data.device}" + (f" ({_gpu_name()})" if data.device.type == "cuda" else ""))
    for note in data.notes:
        _say(opts, f"note: {note}")
    storage, done = None, None
    if opts.storage or (out / JOURNAL).exists():  # an existing study is checked before the estimate
        storage = open_storage(out, opts.storage, heartbeat_s=opts.heartbeat_s)
        if find_study(storage, cfg.study_name):
            existing = load_existing(storage, cfg.study_name, salt=os.getpid(), cfg=cfg)
            check_resume(existing, cfg, out)
            done = finished(existing)
    new_base = not cfg.from_checkpoint and not (out / BASELINE).exists()
    model = build_model(cfg, data)  # the study's one probe of its model before the trials: built and checked once
    adopted = preflight(cfg, data, model, accept=opts.accept_baseline) if new_base or cfg.search.keep_layers else None
    est = _estimate(cfg, opts, out, data, done, model)  # refuses before anything is written
    check_writable(out)
    storage = storage or open_storage(out, opts.storage, heartbeat_s=opts.heartbeat_s)
    with study_lock(out):  # a second worker waits here while the first trains the baseline
        exists = find_study(storage, cfg.study_name)
        study = None
        if exists:
            study = load_existing(storage, cfg.study_name, salt=os.getpid(), cfg=cfg)
            check_resume(study, cfg, out)
        if not exists and not cfg.from_checkpoint and not (out / BASELINE).exists():
            if cfg.weights:
                base = adopt_weights(cfg, out, data, adopted)
                _say(opts, f"baseline: your weights {cfg.weights}, val accuracy {base.meta.metrics['val_accuracy']:.4f}"
                           f" (evaluated, not retrained)")
            else:
                _say(opts, f"no baseline in {out}; training one")
                after = f" (then map, trials, recovery, report ~{duration(est.map_s + est.trials_s + est.recovery_s + est.report_s)})" if est else ""
                train_baseline(cfg, out, data, progress=opts.progress, then=after)
        ctx = build_context(cfg, opts, out, data=data, start=start)
        if study is None:
            study = create_study(storage, cfg, digest=ctx.start.checksum, baseline=ctx.baseline, precision=ctx.precision)
            atomic_write_text(out / RESOLVED_NAME, cfg.to_yaml())
        ctx.baseline = baseline_of(study)  # one source of the baseline figures: the study's record
        ctx.precision = precision_of(study, cfg.finetune.precision, data.device)  # a resumed study keeps its own
        smap = prepare_map(ctx, study, progress=opts.progress)
        plans = reference_plans(cfg, ctx.units, ctx.keys, ctx.start.model, ctx.example, opts.total_trials(cfg),
                                keep=ctx.keep, center=ctx.center,
                                sensitivity=None if smap is None else (lambda ratios: sensitivity_plans(ctx, study, smap, ratios)))
        seed_references(study, ctx.keys, plans)
        if isinstance(study.sampler, AimedSpread):
            aim_targets(ctx, study, plans)
            aim_spread(ctx, study)
        opened = OpenStudy(cfg=cfg, opts=opts, out=out, storage=storage, study=study, estimate=est)
        # built here, under the lock (the baseline figures: the study's record, read above)
        opened.data, opened.start, opened.baseline, opened.ctx = data, ctx.start, ctx.baseline, ctx
    atomic_write_text(out / OPTIONS_NAME, opts.to_yaml())
    return opened


def _estimate(cfg: StudyConfig, opts: RunOptions, out: Path, data, done: int | None, model) -> Estimate | None:
    """The whole study's time from a few timed steps of a copy of ``model`` (``done``: an existing
    study's finished trials); on a CPU, over an hour needs --yes."""
    left = opts.total_trials(cfg) - (done or 0)
    if left <= 0 and done is not None:
        return None
    baseline = bool(cfg.from_checkpoint or cfg.weights) or (out / BASELINE).exists()
    est = estimate(cfg, opts, data, baseline_exists=baseline, trials_left=max(0, left), precise=opts.progress,
                   map_pending=done is None, model=model)
    _say(opts, describe(est, data.device))
    guard(cfg, opts, est, data.device)
    return est


def _drop(points: float | None) -> str:
    return "— (no test split)" if points is None else f"{points:.2f} pts"


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name()


def start_broker(opened: OpenStudy) -> Job:
    cfg, opts, study, ctx = opened.cfg, opened.opts, opened.study, opened.ctx
    est = opened.estimate
    broker = TrialBroker(opened, seconds_per_trial=est.per_trial_s if est else None,
                         after_trials_s=est.recovery_s + est.report_s if est else 0.0)
    with study_lock(opened.out):
        stale = broker.fail_stale()
    done = finished(study)
    resumed = f", resuming at {done} finished" if done else ""
    stale_note = f", {stale} interrupted trial(s) marked failed" if stale else ""
    _say(opts, f"study {cfg.study_name}: {len(ctx.units)} units, {len(ctx.keys)} ratios ({cfg.search.granularity}), "
               f"{opts.total_trials(cfg)} trials{resumed}{stale_note}\n"
               f"watch it live: {dashboard_command(opened.out, opts.storage)}")
    return Job(opened, broker)


def finish_study(opened: OpenStudy) -> None:
    """After the trials: recover a spread of the front, write the report, warn about an
    under-trained baseline."""
    from search.results import write_report
    from search.study._recovery import recover

    opts = opened.opts
    if opts.recover:
        for rec in recover(opened, progress=opts.progress):
            _say(opts, f"recovered trial {rec.trial}: val accuracy {rec.val_accuracy:.4f} "
                       f"({rec.epochs:g} epochs, {rec.seconds:.0f} s)")
    if not opts.write_report:
        return
    written = write_report(opened, progress=opts.progress)
    paths, answer = written.paths, written.answer
    if answer["warning"]:
        print(f"warning: {answer['warning']}", file=sys.stderr, flush=True)
    publish_study(opened.study, opened.storage, opened.out, answer)
    head = answer["headline"]
    if answer.get("verdict"):
        _say(opts, " ".join(answer["verdict"]))
    if head:
        _say(opts, f"headline: trial {head['trial']}, {head['size_mb']:.4f} MB ({head['pruned_pct']:.1f} % smaller), "
                   f"test accuracy drop {_drop(head['accuracy_drop'])}\ntake it: {head['pick_command']}")
    _say(opts, "\n".join(f"{k}: {v}" for k, v in (("report", paths["md"]), ("front", paths["csv"]),
                                                  ("plot", paths["png"]))))


def publish_study(study: optuna.Study, storage: BaseStorage, out: Path, answer: dict) -> None:
    """The dashboard's view of the results: a study note, and the report files as study artifacts."""
    from optuna.artifacts import FileSystemArtifactStore

    from search.results import PROJECTIONS, SENSITIVITY_PNG
    from search.storage import artifact_dir, publish, save_study_note, study_note

    save_study_note(study, study_note(answer))
    publish(study, storage, FileSystemArtifactStore(str(artifact_dir(out))),
            [out / "report.md", out / "pareto.png", out / PROJECTIONS, out / SENSITIVITY_PNG, out / "pareto.csv",
             out / BASELINE])


def open_existing(cfg: StudyConfig, opts: RunOptions) -> OpenStudy:
    """The study of ``cfg``'s model and dataset in its folder (or ``--storage``), with the config it
    stored (which wins over the YAML), its starting model checked against its pinned digest."""
    from search.study._study import stored_config

    out = opts.out_dir(cfg)
    storage = open_storage(out, opts.storage, heartbeat_s=opts.heartbeat_s, create=False)
    if not find_study(storage, cfg.study_name):
        raise UsageError(f"no study {cfg.study_name!r} in {opts.storage or out}; run search.run first "
                         f"(or pass the --out / --budget / --storage it used)")
    study = load_existing(storage, cfg.study_name)
    stored = stored_config(study)
    check_resume(study, stored, out)
    return OpenStudy(cfg=stored, opts=opts, out=out, storage=storage, study=study)
