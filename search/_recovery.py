"""The recovery stage: after the search, a spread of front points is fine-tuned longer (distilled
from the starting model) and recorded on the study; the report, the headline and ``search.pick``
then use the recovered figures. Resumable: recovered points are skipped, one process recovers at a
time, and a point interrupted half-way is simply recovered again."""
from __future__ import annotations

import contextlib
import fcntl
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial

from pruning import (Checkpoint, Dataset, PruningRecord, Reference, evaluate, load_checkpoint, save_pruned, train,
                     with_metrics)
from search._config import StudyConfig
from search._faults import fault
from search._records import RecoveryRecord, TrialRecord, recoveries, save_recovery
from search._report import front_trials
from search._storage import artifact_dir, artifact_path


def targets(front: list[FrozenTrial], ref: Reference, count: int, max_drop: float) -> list[int]:
    """Which front points to recover (trial numbers, smallest first): the search-time headline (the
    smallest point within ``max_drop`` val points of the baseline), the two next smaller points
    (recovery may bring them within the drop), then points spread evenly over log size."""
    if count <= 0 or not front:
        return []
    recs = [(t.number, TrialRecord.read(t)) for t in front]  # front_trials: smallest first
    ok = [i for i, (_, r) in enumerate(recs) if 100.0 * (ref.val_accuracy - r.val_accuracy) <= max_drop]
    anchor = ok[0] if ok else len(recs) - 1
    chosen = [i for i in (anchor, anchor - 1, anchor - 2) if i >= 0][:count]
    logs = [math.log(max(r.size_mb, 1e-9)) for _, r in recs]
    for q in range(count):  # evenly spaced quantiles of log size, nearest front point each
        if len(set(chosen)) >= min(count, len(recs)):
            break
        goal = logs[0] + (logs[-1] - logs[0]) * q / max(1, count - 1)
        nearest = min((i for i in range(len(recs)) if i not in chosen), key=lambda i: abs(logs[i] - goal), default=None)
        if nearest is not None:
            chosen.append(nearest)
    return sorted({recs[i][0] for i in chosen}, key=lambda n: next(r.size_mb for m, r in recs if m == n))


@contextlib.contextmanager
def _recovery_lock(out: Path):
    """One recovering process per study folder (a second waits, then skips what the first did)."""
    with open(out / ".recover.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def recover(cfg: StudyConfig, out: Path, study: optuna.Study, data: Dataset, start: Checkpoint, ref: Reference,
            *, progress: bool = True) -> list[RecoveryRecord]:
    """Recover the chosen front points not recovered yet; returns the new records."""
    store = FileSystemArtifactStore(str(artifact_dir(out)))
    done = []
    with _recovery_lock(out):
        chosen = targets(front_trials(study), ref, cfg.report.recover_points, cfg.report.headline_max_drop)
        have = recoveries(study)
        todo = [n for n in chosen if n not in have]
        for i, number in enumerate(todo, 1):
            if progress:
                print(f"recovering trial {number} ({i}/{len(todo)})", file=sys.stderr, flush=True)
            done.append(_recover_one(cfg, out, study, number, data, start, store, progress))
            fault("between_recoveries")
    return done


def _recover_one(cfg: StudyConfig, out: Path, study: optuna.Study, number: int, data: Dataset, start: Checkpoint,
                 store: FileSystemArtifactStore, progress: bool) -> RecoveryRecord:
    rec = TrialRecord.read(study.trials[number])
    ckpt = load_checkpoint(artifact_path(out, rec.checkpoint), expect_model=cfg.model)
    recipe = cfg.recovery_recipe(cfg.seed + number)
    teacher = start.model if recipe.kd_weight > 0 else None
    began = time.perf_counter()
    train(ckpt.model, data, recipe, teacher=teacher, progress=progress, desc=f"recover trial {number}")
    seconds = time.perf_counter() - began
    val, test = evaluate(ckpt.model, data, "val"), evaluate(ckpt.model, data, "test")
    meta = with_metrics(replace(ckpt.meta, provenance={**ckpt.meta.provenance, "recovered": True,
                                                       "recovery_epochs": recipe.epochs}),
                        val_accuracy=val, test_accuracy=test)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_pruned(Path(tmp) / f"recovered-trial-{number}.pt", ckpt.model,
                           PruningRecord(history=ckpt.history, plan=ckpt.plan), meta)
        artifact = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study,
                                   mimetype="application/octet-stream")
    record = RecoveryRecord(trial=number, val_accuracy=val, test_accuracy=test, checkpoint=artifact,
                            epochs=recipe.epochs, seconds=seconds)
    save_recovery(study, record)
    return record
