"""One trial: plan -> surgery -> exact size -> adaptive-BN proxy (rung 0) -> fine-tune through the
rungs of successive halving -> score -> checkpoint. Every backend runs trials through
:func:`run_trial`, so the trial logic exists once."""
from __future__ import annotations

import tempfile
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import torch
from optuna.artifacts import upload_artifact
from optuna.trial import TrialState
from torch import nn

from pruning import (CheckpointMeta, Measurement, TrainHooks, TrainingDiverged, apply_plan, evaluate, expand_plan,
                     measure, recalibrate_bn, save_pruned, train)
from search.config import OBJECTIVES
from search.storage import Rung, TrialRecord, file_sha256, record_value
from search.trial._context import SearchContext
from search.trial._latency import ort_ms
from search.trial._rungs import decide, rung_steps
from search.trial._space import ratios

# failures of one candidate, not of the settings: the trial fails with its reason, the study goes on
TRIAL_FAILURES = (TrainingDiverged, torch.OutOfMemoryError)


@dataclass(frozen=True)
class Outcome:
    """How a trial ended: COMPLETE with (val accuracy, *the minimized measures, in the study's
    order), PRUNED or FAIL with a reason."""

    state: TrialState
    values: tuple[float, ...] | None = None
    reason: str | None = None


class _Stop(Exception):
    """Raised inside the fine-tune when successive halving ends a trial at a rung."""


class TrialIO:
    """Typed writes to one trial's attributes (only :class:`TrialRecord` fields)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.rungs = TrialRecord.read(trial).rungs  # appended to as the rungs pass, never read back

    def write(self, **values) -> None:
        for name, value in values.items():
            self.trial.set_user_attr(name, record_value(name, value))

    def record(self) -> TrialRecord:
        """This trial's record as written so far (the handle caches its own writes)."""
        return TrialRecord.read(self.trial)

    def add_rung(self, rung: Rung) -> None:
        self.rungs += (rung,)
        self.write(rungs=self.rungs)


def _measures(ctx: SearchContext, model: nn.Module) -> tuple[Measurement, tuple[float, ...]]:
    """Exact size, and the measures the study minimizes, in its order (latency: batch 1, on the
    configured backend)."""
    space = ctx.cfg.search
    latency = "latency" in space.minimized()
    m = measure(model, ctx.example, latency=latency and space.latency_backend == "torch", batch_sizes=(1,))
    if latency and space.latency_backend != "torch":
        m = replace(m, latency_ms=ort_ms(model, ctx.example, (1,), int8=space.latency_backend == "onnxruntime-int8"))
    fields = [OBJECTIVES[o] for o in space.minimized()]
    return m, tuple(m.latency_ms[1] if f == "latency_ms" else float(getattr(m, f)) for f in fields)


def run_trial(ctx: SearchContext, trial: optuna.Trial) -> Outcome:
    """Run one trial; a failing candidate (NaN loss, out of memory) is a FAIL outcome, not an error."""
    io = TrialIO(trial)
    try:
        return _run(ctx, io)
    except _Stop as stop:
        return Outcome(TrialState.PRUNED, reason=str(stop))
    except TRIAL_FAILURES as exc:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        io.write(fail_reason=reason)
        return Outcome(TrialState.FAIL, reason=reason)


def _plan(ctx: SearchContext, trial: optuna.Trial, rec: TrialRecord) -> dict[str, float]:
    if rec.reference and rec.plan:  # a reference: its exact per-unit plan
        return dict(rec.plan)
    space = ctx.cfg.search
    return expand_plan(ctx.units, space.granularity,
                       ratios(trial.params, ctx.keys, space.granularity, space.max_ratio, ctx.center,
                              space.center_offset))


def _run(ctx: SearchContext, io: TrialIO) -> Outcome:
    cfg, trial = ctx.cfg, io.trial
    space, rec = cfg.search, io.record()
    plan = _plan(ctx, trial, rec)
    pruned, surgery = apply_plan(
        ctx.start.model, plan, example_input=ctx.example, importance=space.importance, round_to=space.round_to,
        history=ctx.start.history, max_ratio=space.max_ratio, seed=cfg.seed + trial.number, keep=ctx.keep,
        calibration=ctx.calibration if space.importance == "taylor" else None)
    m, measures = _measures(ctx, pruned)
    io.write(size_mb=m.size_mb, pruned_pct=100.0 * (1 - m.size_mb / ctx.baseline.size_mb), macs=m.macs,
             params=m.params, objective_value=measures[0], objective_values=measures,
             plan=dict(surgery.plan))  # exact: a retried reference prunes it again (rounded, k/n can lose a channel)
    if m.latency_ms:
        io.write(latency_ms=m.latency_ms[1])
    precision = ctx.precision  # the study's one precision: candidates and baseline compare alike
    recalibrate_bn(pruned, ctx.calibration, precision=precision)
    proxy = evaluate(pruned, ctx.data, "val", precision=precision)
    io.write(proxy_accuracy=proxy)
    if cfg.constraints.max_size_mb is not None and m.size_mb > cfg.constraints.max_size_mb:
        io.write(skipped=f"{m.size_mb:.4f} MB is over the size budget of {cfg.constraints.max_size_mb} MB: "
                         f"scored by its proxy, never fine-tuned")
        _constrain(ctx, trial, m, proxy)
        return Outcome(TrialState.COMPLETE, (proxy, *measures))
    recipe = replace(cfg.finetune_recipe(cfg.seed + trial.number), precision=precision)
    total = recipe.total_steps(ctx.data.count("train"))
    rungs = rung_steps(total, space.rungs) if cfg.early_stop else []
    halving = _Halving(ctx, io, measures, protected=rec.reference is not None, steps=rungs)
    if rungs and rungs[0] == 0:
        halving.at(0, proxy)
    start = time.perf_counter()
    teacher = ctx.start.model if recipe.kd_weight > 0 else None
    rung_data = ctx.data.subset(val=space.rung_val_images)  # a rung's evaluation costs a few steps, not dozens
    try:
        train(pruned, ctx.data, recipe, teacher=teacher, progress=False, desc=f"trial {trial.number}",
              hooks=TrainHooks(at_steps=tuple(s for s in rungs if s > 0),
                               on_step=lambda step: halving.at(step, evaluate(pruned, rung_data, "val", precision=precision))))
    finally:
        io.write(finetune_seconds=time.perf_counter() - start)
    val = evaluate(pruned, ctx.data, "val", precision=precision)
    io.write(val_accuracy=val)
    _constrain(ctx, trial, m, val)
    _store(ctx, io, pruned, surgery, m, val)
    return Outcome(TrialState.COMPLETE, (val, *measures))


@dataclass
class _Halving:
    """Successive halving at the rungs of one trial (reference trials are recorded, never stopped)."""

    ctx: SearchContext
    io: TrialIO
    measures: tuple[float, ...]  # the minimized measures, fixed by the plan before any fine-tune
    protected: bool
    steps: list[int]

    def at(self, step: int, accuracy: float) -> None:
        rung = self.steps.index(step)
        self.io.add_rung(Rung(rung=rung, steps=step, val_accuracy=accuracy))
        if self.protected:
            return
        space = self.ctx.cfg.search
        others = rung_population(self.io.trial, rung)
        decision = decide((accuracy, *self.measures), others, eta=space.eta, min_trials=space.rung_min_trials)
        if not decision.go_on:
            reason = f"rung {rung} ({step} fine-tune steps): val accuracy {accuracy:.4f}; {decision.reason}"
            self.io.write(stop_rung=rung, stop_reason=reason)
            raise _Stop(reason)


def rung_population(trial: optuna.Trial, rung: int) -> list[tuple[float, ...]]:
    """(accuracy at ``rung``, *minimized measures) of every other searched trial of the study that has
    reached it.

    The reference plans are left out: they always run to the end, so ranked beside the candidates
    they would take promotion slots that nobody else can use (measured: with them in, the searched
    front trailed the references by up to 2 points at light ratios).

    One read of the study's trials per decision; a finished trial's record is read once per process
    (Optuna freezes a finished trial), so only the running ones are read again at each rung
    (bench/rung_population.py, a journal of 1,000 finished trials: a decision after the first took
    472 ms, median of 10, before this cache and takes 0.5 ms with it)."""
    finished = _FINISHED.setdefault(trial.study, {})
    points = []
    for t in trial.study.get_trials(deepcopy=False):
        if t.number == trial.number:
            continue
        if t.number in finished:
            at = finished[t.number]
        else:
            at = _rung_points(TrialRecord.read(t))
            if t.state.is_finished():
                finished[t.number] = at
        if rung in at:
            points.append(at[rung])
    return points


def _rung_points(rec: TrialRecord) -> dict[int, tuple[float, ...]]:
    """Rung -> (accuracy there, *minimized measures) of a searched trial; empty for a reference or
    a trial without its measures (a study made before objective_values recorded its one measure
    alone)."""
    measures = rec.objective_values or ((rec.objective_value,) if rec.objective_value is not None else ())
    if rec.reference or not measures:
        return {}
    points: dict[int, tuple[float, ...]] = {}
    for r in rec.rungs:
        points.setdefault(r.rung, (r.val_accuracy, *measures))
    return points


# study -> trial number -> its rung points, for finished trials only (their records never change)
_FINISHED: weakref.WeakKeyDictionary[optuna.Study, dict[int, dict[int, tuple[float, ...]]]] = \
    weakref.WeakKeyDictionary()


def _constrain(ctx: SearchContext, trial: optuna.Trial, m: Measurement, accuracy: float) -> None:
    c = ctx.cfg.constraints
    if c.max_size_mb is not None:
        trial.set_constraint("max_size_mb", m.size_mb - c.max_size_mb)
    if c.min_accuracy is not None:
        trial.set_constraint("min_accuracy", c.min_accuracy - accuracy)


def checkpoint_meta(ctx: SearchContext, **provenance) -> CheckpointMeta:
    meta = ctx.start.meta
    return CheckpointMeta(model=meta.model, model_kwargs=dict(meta.model_kwargs), num_classes=meta.num_classes,
                          in_channels=meta.in_channels,
                          dataset=ctx.cfg.dataset, preprocessing=ctx.data.preprocessing, baseline=ctx.baseline,
                          provenance={"study": ctx.cfg.study_name, **provenance})


def _store(ctx: SearchContext, io: TrialIO, model: nn.Module, surgery, m: Measurement, val: float) -> None:
    meta = replace(checkpoint_meta(ctx, trial=io.trial.number),
                   metrics={"val_accuracy": val, "params": m.params, "macs": m.macs, "size_mb": m.size_mb})
    with tempfile.TemporaryDirectory() as tmp:
        path = save_pruned(Path(tmp) / f"trial-{io.trial.number}.pt", model, surgery, meta)
        digest = file_sha256(path)
        artifact = upload_artifact(artifact_store=ctx.artifacts, file_path=str(path), study_or_trial=io.trial,
                                   mimetype="application/octet-stream")
    io.write(checkpoint=artifact, checkpoint_sha256=digest)
