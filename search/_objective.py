"""One trial: plan -> surgery -> exact size -> adaptive-BN proxy -> early stop -> fine-tune -> score.

The Optuna backend calls :class:`Objective` directly; every other backend must call it too, so the
trial logic exists once.
"""
from __future__ import annotations

import itertools
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState
from torch import nn

from pruning import (Dataset, Measurement, TrainingDiverged, Unit, apply_plan, evaluate, expand_plan, finetune,
                     measure, recalibrate_bn, save_pruned, train_batches)
from search._config import StudyConfig

METRIC_NAMES = {"size": "size_mb", "params": "params", "macs": "macs", "latency": "latency_ms"}
CATCH = (TrainingDiverged, torch.OutOfMemoryError)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class SearchContext:
    """What every trial of a study shares, built once per process."""

    cfg: StudyConfig
    data: Dataset
    base: nn.Module            # the model whose copies are pruned (baseline, or --from)
    base_history: list
    teacher: nn.Module         # distillation source: the model the study starts from
    build: dict                # model name and build arguments for checkpoints
    reference: dict            # unpruned baseline figures: params, macs, size_mb, val/test accuracy
    units: list[Unit]
    keys: list[str]
    example: torch.Tensor
    artifacts: FileSystemArtifactStore
    calibration: list          # fixed training batches: BN recalibration and Taylor importance


def objective_value(m: Measurement, objective: str) -> float:
    """The size measure that the study minimizes (MB, parameters, MACs or ms at batch 1)."""
    if objective == "size":
        return m.size_mb
    if objective == "params":
        return float(m.params)
    if objective == "macs":
        return float(m.macs)
    return m.latency_ms[1]


def calibration_batches(data: Dataset, n: int, batch_size: int, seed: int) -> list:
    return list(itertools.islice(train_batches(data, batch_size, torch.Generator().manual_seed(seed)), n))


def dominated(study: optuna.Study, size: float, proxy: float, *, margin: float, tolerance: float) -> int | None:
    """The number of an earlier trial whose size is no larger (within ``tolerance``) and whose proxy
    accuracy is better by at least ``margin``: this candidate is clearly worse, so it stops here."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        s, p = t.user_attrs.get("objective_value"), t.user_attrs.get("proxy_accuracy")
        if s is not None and p is not None and s <= size * (1 + tolerance) and p >= proxy + margin:
            return t.number
    return None


class Objective:
    """Callable for ``study.optimize``: returns (validation accuracy, size measure)."""

    def __init__(self, ctx: SearchContext, *, early_stop: bool = True) -> None:
        self.ctx = ctx
        self.early_stop = early_stop
        self.on_start = None  # called once the trial exists in storage (releases the study lock)

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        if self.on_start is not None:
            self.on_start()
        try:
            return self._run(trial)
        except CATCH as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
            raise

    def _run(self, trial: optuna.Trial) -> tuple[float, float]:
        ctx, cfg, space = self.ctx, self.ctx.cfg, self.ctx.cfg.search
        trial.set_user_attr("worker", worker_id())
        values = {k: trial.suggest_float(k, 0.0, space.max_ratio) for k in ctx.keys}
        plan = expand_plan(ctx.units, space.granularity, values)
        uniform = trial.user_attrs.get("uniform") is not None
        pruned, record = apply_plan(
            ctx.base, plan, example_input=ctx.example, importance=space.importance, round_to=space.round_to,
            history=ctx.base_history, max_ratio=space.max_ratio, seed=cfg.seed + trial.number,
            calibration=ctx.calibration if space.importance == "taylor" else None)
        m = measure(pruned, ctx.example, latency=space.objective == "latency", batch_sizes=(1,))
        size = objective_value(m, space.objective)
        self._record_size(trial, plan, m, size)
        recalibrate_bn(pruned, ctx.calibration)
        proxy = evaluate(pruned, ctx.data, "val")
        trial.set_user_attr("proxy_accuracy", proxy)
        if cfg.max_size_mb is not None and m.size_mb > cfg.max_size_mb:
            trial.set_user_attr("skipped", "over the size budget: no fine-tune")
            self._constrain(trial, m, proxy)
            return proxy, size
        if self.early_stop and not uniform:
            better = dominated(trial.study, size, proxy, margin=space.early_stop_margin,
                               tolerance=space.early_stop_size_tolerance)
            if better is not None:
                trial.set_user_attr("stopped_by", better)
                raise optuna.TrialPruned(f"proxy {proxy:.3f} clearly below trial {better} at no larger size")
        teacher = ctx.teacher if cfg.finetune.kd_weight > 0 else None
        result = finetune(pruned, ctx.data, steps=cfg.spend.finetune_steps, lr=cfg.finetune.lr, teacher=teacher,
                          kd_weight=cfg.finetune.kd_weight, seed=cfg.seed + trial.number,
                          batch_size=cfg.spend.batch_size or cfg.finetune.batch_size)
        val = evaluate(pruned, ctx.data, "val")
        trial.set_user_attr("val_accuracy", val)
        trial.set_user_attr("finetune_seconds", result.seconds)
        self._constrain(trial, m, val)
        self._store(trial, pruned, record, m, proxy, val)
        return val, size

    def _record_size(self, trial: optuna.Trial, plan: dict, m: Measurement, size: float) -> None:
        ref = self.ctx.reference
        trial.set_user_attr("plan", {k: round(v, 4) for k, v in plan.items()})
        trial.set_user_attr("params", m.params)
        trial.set_user_attr("macs", m.macs)
        trial.set_user_attr("size_mb", m.size_mb)
        trial.set_user_attr("pruned_pct", 100.0 * (1 - m.size_mb / ref["size_mb"]))
        trial.set_user_attr("objective_value", size)
        if m.latency_ms:
            trial.set_user_attr("latency_ms", m.latency_ms[1])

    def _constrain(self, trial: optuna.Trial, m: Measurement, accuracy: float) -> None:
        cfg = self.ctx.cfg
        if cfg.max_size_mb is not None:
            trial.set_constraint("max_size_mb", m.size_mb - cfg.max_size_mb)
        if cfg.min_accuracy is not None:
            trial.set_constraint("min_accuracy", cfg.min_accuracy - accuracy)

    def _store(self, trial: optuna.Trial, model: nn.Module, record, m: Measurement, proxy: float, val: float) -> None:
        ctx = self.ctx
        meta = {**ctx.build, "dataset": ctx.cfg.dataset, "study": ctx.cfg.study_name, "trial": trial.number,
                "val_accuracy": val, "proxy_accuracy": proxy, "params": m.params, "macs": m.macs,
                "size_mb": m.size_mb, "reference": ctx.reference}
        with tempfile.TemporaryDirectory() as tmp:
            path = save_pruned(Path(tmp) / f"trial-{trial.number}.pt", model, record, meta)
            artifact = upload_artifact(artifact_store=ctx.artifacts, file_path=str(path), study_or_trial=trial,
                                       mimetype="application/octet-stream")
        trial.set_user_attr("checkpoint_artifact", artifact)
        _save_note(trial, record.plan, m, proxy, val, ctx.reference)


def _save_note(trial: optuna.Trial, plan: dict, m: Measurement, proxy: float, val: float, ref: dict) -> None:
    from optuna_dashboard import save_note

    ratios = sorted(plan.values())
    mean = sum(ratios) / len(ratios)
    body = (f"**{m.size_mb:.3f} MB** ({100 * (1 - m.size_mb / ref['size_mb']):.1f} % smaller), "
            f"{m.macs / 1e6:.1f} M MACs\n\n"
            f"val accuracy {val:.4f} (proxy after BN recalibration {proxy:.4f}; baseline {ref['val_accuracy']:.4f})\n\n"
            f"plan over {len(plan)} units: ratios {ratios[0]:.2f} to {ratios[-1]:.2f}, mean {mean:.2f}")
    save_note(trial, body)
