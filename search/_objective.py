"""One trial: plan -> surgery -> exact size -> adaptive-BN proxy (rung 0) -> fine-tune through the
rungs of successive halving -> score -> checkpoint. Every backend runs trials through
:func:`run_trial`, so the trial logic exists once."""
from __future__ import annotations

import itertools
import math
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState
from torch import nn

from pruning import (CheckpointMeta, Dataset, Measurement, PlanError, PruningError, Reference, TrainHooks,
                     TrainingDiverged, Unit, prunable_safely,
                     apply_plan, evaluate, expand_plan, measure, plan_keys, prunable_units, recalibrate_bn,
                     save_pruned, train, train_batches)
from pruning._checkpoint import Checkpoint
from pruning._train import resolve_precision
from search._config import RunOptions, StudyConfig
from search._context import load_data, reference_of, start_checkpoint
from search._dashboard import trial_note
from search._latency import ort_ms
from search._records import Rung, TrialRecord, record_value
from search._rungs import decide, rung_steps
from search._space import sample
from search._storage import artifact_dir, file_sha256
from search._tables import OBJECTIVES

# failures of one candidate, not of the settings: the trial fails with its reason, the study goes on
TRIAL_FAILURES = (TrainingDiverged, torch.OutOfMemoryError)


@dataclass
class SearchContext:
    """What every trial of a study shares, built once per process."""

    cfg: StudyConfig
    opts: RunOptions
    out: Path
    data: Dataset
    start: Checkpoint          # the model whose copies are pruned (baseline, or --from); the KD teacher
    reference: Reference       # unpruned baseline figures
    units: list[Unit]
    keys: list[str]
    example: torch.Tensor
    keep: tuple[str, ...]      # layers whose outputs are kept: the config's, plus units found unsafe to prune
    artifacts: FileSystemArtifactStore
    calibration: list          # fixed training batches: BN recalibration and Taylor importance


def build_context(cfg: StudyConfig, opts: RunOptions, out: Path, *, data: Dataset | None = None,
                  start: Checkpoint | None = None) -> SearchContext:
    """Data, starting model, units and calibration batches: everything trials share (``start``: the
    starting checkpoint, when the caller has loaded it already)."""
    data = data if data is not None else load_data(cfg, opts)
    start = start or start_checkpoint(cfg, out, data)
    example = data.example_input(1)
    units, keep = safe_units(start.model, example, cfg, progress=opts.progress)
    artifact_dir(out).mkdir(parents=True, exist_ok=True)
    batch = cfg.finetune_recipe(0).batch_size
    calibration = list(itertools.islice(train_batches(data, batch, torch.Generator().manual_seed(cfg.seed)),
                                        cfg.spend.bn_batches))
    return SearchContext(cfg=cfg, opts=opts, out=out, data=data, start=start, reference=reference_of(start, example),
                         units=units, keys=plan_keys(units, cfg.search.granularity), example=example, keep=keep,
                         artifacts=FileSystemArtifactStore(str(artifact_dir(out))), calibration=calibration)


def safe_units(model: nn.Module, example: torch.Tensor, cfg: StudyConfig, *,
               progress: bool = True) -> tuple[list[Unit], tuple[str, ...]]:
    """The units a study may prune and the layers it keeps whole (:func:`pruning.safe_units`), with
    one line naming the units Torch-Pruning cannot prune safely."""
    space = cfg.search
    try:
        units, keep, bad = prunable_safely(model, example, max_ratio=space.max_ratio, round_to=space.round_to,
                                           keep=tuple(space.keep_layers))
    except PruningError:
        raise
    except Exception as exc:  # Torch-Pruning's tracer fails in many ways on unusual graphs
        raise PlanError(f"Torch-Pruning cannot trace {cfg.model}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160] if str(exc) else ''}") from None
    if bad and progress:
        print(f"note: Torch-Pruning cannot prune {len(bad)} unit(s) of {cfg.model} safely; kept whole: "
              f"{', '.join(u.name for u in bad[:8])}{' ...' if len(bad) > 8 else ''}", file=sys.stderr)
    return units, keep


@dataclass(frozen=True)
class Outcome:
    """How a trial ended: COMPLETE with (val accuracy, size), PRUNED or FAIL with a reason."""

    state: TrialState
    values: tuple[float, float] | None = None
    reason: str | None = None


class _Stop(Exception):
    """Raised inside the fine-tune when successive halving ends a trial at a rung."""


class TrialIO:
    """Typed writes to one trial's attributes (only :class:`TrialRecord` fields)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def write(self, **values) -> None:
        for name, value in values.items():
            self.trial.set_user_attr(name, record_value(name, value))

    def record(self) -> TrialRecord:
        """This trial's record as written so far (the handle caches its own writes)."""
        return TrialRecord.read(self.trial)

    def add_rung(self, rung: Rung) -> None:
        self.write(rungs=self.record().rungs + (rung,))


def _size(ctx: SearchContext, model: nn.Module) -> tuple[Measurement, float]:
    """Exact size, and the measure the study minimizes (latency: batch 1, on the configured backend)."""
    space = ctx.cfg.search
    latency = space.objective == "latency"
    m = measure(model, ctx.example, latency=latency and space.latency_backend == "torch", batch_sizes=(1,))
    if latency and space.latency_backend == "onnxruntime":
        m = replace(m, latency_ms=ort_ms(model, ctx.example, (1,)))
    field = OBJECTIVES[space.objective]
    return m, (m.latency_ms[1] if field == "latency_ms" else float(getattr(m, field)))


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
    if rec.reference and rec.plan:  # a global-ranking reference: its exact per-unit plan
        return dict(rec.plan)
    space = ctx.cfg.search
    return expand_plan(ctx.units, space.granularity, sample(trial, ctx.keys, space.granularity, space.max_ratio))


def _run(ctx: SearchContext, io: TrialIO) -> Outcome:
    cfg, trial = ctx.cfg, io.trial
    space, rec = cfg.search, io.record()
    plan = _plan(ctx, trial, rec)
    pruned, surgery = apply_plan(
        ctx.start.model, plan, example_input=ctx.example, importance=space.importance, round_to=space.round_to,
        history=ctx.start.history, max_ratio=space.max_ratio, seed=cfg.seed + trial.number, keep=ctx.keep,
        calibration=ctx.calibration if space.importance == "taylor" else None)
    m, size = _size(ctx, pruned)
    io.write(size_mb=m.size_mb, pruned_pct=100.0 * (1 - m.size_mb / ctx.reference.size_mb), macs=m.macs,
             params=m.params, objective_value=size, plan={k: round(v, 4) for k, v in surgery.plan.items()})
    if m.latency_ms:
        io.write(latency_ms=m.latency_ms[1])
    # one precision for the whole study, resolved on the model it prunes, so candidates compare alike
    precision = resolve_precision(cfg.finetune.precision, ctx.start.model, ctx.data.device)
    recalibrate_bn(pruned, ctx.calibration, precision=precision)
    proxy = evaluate(pruned, ctx.data, "val", precision=precision)
    io.write(proxy_accuracy=proxy)
    if cfg.constraints.max_size_mb is not None and m.size_mb > cfg.constraints.max_size_mb:
        io.write(skipped=f"{m.size_mb:.4f} MB is over the size budget of {cfg.constraints.max_size_mb} MB: "
                         f"scored by its proxy, never fine-tuned")
        _constrain(ctx, trial, m, proxy)
        return Outcome(TrialState.COMPLETE, (proxy, size))
    recipe = replace(cfg.finetune_recipe(cfg.seed + trial.number), precision=precision)
    total = recipe.total_steps(ctx.data.train_x.shape[0])
    rungs = rung_steps(total, space.rungs) if space.early_stop else []
    halving = _Halving(ctx, io, size, protected=rec.reference is not None, steps=rungs)
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
    return Outcome(TrialState.COMPLETE, (val, size))


@dataclass
class _Halving:
    """Successive halving at the rungs of one trial (reference trials are recorded, never stopped)."""

    ctx: SearchContext
    io: TrialIO
    size: float
    protected: bool
    steps: list[int]

    def at(self, step: int, accuracy: float) -> None:
        rung = self.steps.index(step)
        self.io.add_rung(Rung(rung=rung, steps=step, val_accuracy=accuracy))
        if self.protected:
            return
        space = self.ctx.cfg.search
        others = _population(self.io.trial, rung)
        decision = decide((accuracy, self.size), others, eta=space.eta, min_trials=space.rung_min_trials)
        if not decision.go_on:
            reason = f"rung {rung} ({step} fine-tune steps): val accuracy {accuracy:.4f}; {decision.reason}"
            self.io.write(stop_rung=rung, stop_reason=reason)
            raise _Stop(reason)


def _population(trial: optuna.Trial, rung: int) -> list[tuple[float, float]]:
    """(accuracy at ``rung``, size) of every other searched trial of the study that has reached it.

    The reference plans are left out: they always run to the end, so ranked beside the candidates
    they would take promotion slots that nobody else can use (measured: with them in, the searched
    front trailed the references by up to 2 points at light ratios)."""
    points = []
    for t in trial.study.get_trials(deepcopy=False):
        if t.number == trial.number:
            continue
        rec = TrialRecord.read(t)
        if rec.reference:
            continue
        hit = [r for r in rec.rungs if r.rung == rung]
        if hit and rec.objective_value is not None:
            points.append((hit[0].val_accuracy, rec.objective_value))
    return points


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
                          dataset=ctx.cfg.dataset, preprocessing=ctx.data.preprocessing, reference=ctx.reference,
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


def finished_note(ctx: SearchContext, trial: optuna.Trial, outcome: Outcome) -> str:
    """The dashboard note of a trial that just ended, whatever its state."""
    return trial_note(TrialRecord.read(trial), outcome.state, outcome.reason, ctx.reference)


def is_finite_outcome(outcome: Outcome) -> bool:
    return outcome.values is None or all(math.isfinite(v) for v in outcome.values)
