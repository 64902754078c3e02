"""The recovery stage: after the search, a spread of front points is fine-tuned longer (distilled
from the starting model) and recorded on the study; the report, the headline and ``search.pick``
then use the recovered figures. Resumable: recovered points are skipped, one process recovers at a
time, and a point interrupted half-way is simply recovered again."""
from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Callable

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial

from pruning import (BaselineFigures, Checkpoint, Dataset, PruningRecord, evaluate, load_checkpoint, save_pruned,
                     train, with_metrics)
from search.config import StudyConfig, fault
from search.results import chosen_drop, front_trials, within_drop
from search.storage import (RecoveryRecord, TrialRecord, artifact_dir, artifact_path, file_lock, precision_of, recoveries,
                            save_recovery, trial_artifact)
from search.trial import OpenStudy, in_precision

REACH = 3.0  # recovery brings a point up by one to two points: those within 3x the drop are worth a try


def choose(front: list[FrozenTrial], baseline: BaselineFigures, count: int, max_drop: float,
           drop_after: Callable[[int], float]) -> list[int]:
    """Which front points to recover (trial numbers, in the order chosen), ``count`` at most, chosen one
    at a time: ``drop_after(number)`` recovers a point (or reads its record) and returns its drop after
    recovery, in the points the headline is chosen by. First the search-time headline (the smallest
    point within ``max_drop`` val points of the baseline); then steps towards the smallest point that
    recovery brings within the drop (see ``_step``), up to ``count - 2``; the smallest front point;
    more steps; then points spread evenly over log size. The same outcomes give the same choices, so a
    resumed recovery replays its records and goes on where it stopped."""
    if count <= 0 or not front:
        return []
    recs = [TrialRecord.read(t) for t in front]  # front_trials: smallest first
    drops = [100.0 * (baseline.val_accuracy - r.val_accuracy) for r in recs]
    ok = [i for i, d in enumerate(drops) if within_drop(d, max_drop)]
    logs = [math.log(max(r.size_mb, 1e-9)) for r in recs]
    after: dict[int, float] = {}  # front index -> drop after recovery

    def take(i: int) -> None:
        after[i] = drop_after(front[i].number)

    take(ok[0] if ok else len(recs) - 1)
    while len(after) < max(1, count - 1) and (i := _step(drops, logs, after, max_drop)) is not None:
        take(i)
    if len(after) < count and 0 not in after:
        take(0)
    while len(after) < count and (i := _step(drops, logs, after, max_drop)) is not None:
        take(i)
    for i in _spread([i for i in range(len(recs)) if i not in after], recs, count - len(after)):
        take(i)
    return [front[i].number for i in after]


def _step(drops: list[float], logs: list[float], after: dict[int, float], max_drop: float) -> int | None:
    """The next point to try between the smallest recovered point within the drop and the largest
    smaller one that missed it (front indices, smallest first; only points within ``REACH`` times the
    drop at search time). Recovery takes off about the same share of every point's search-time drop
    (LeNet5: 55-65 %, from 0.9 to 9 points), so the share measured at the nearest recovered point above
    predicts which points it brings within the drop; the smallest of those is tried, but never one
    below the middle (in log size) of the points left: a prediction that is too hopeful costs no more
    than bisection."""
    passing = [i for i, d in after.items() if within_drop(d, max_drop)]
    lo = min(passing, default=len(drops))
    hi = max((i for i, d in after.items() if not within_drop(d, max_drop) and i < lo), default=-1)
    cands = [i for i in range(hi + 1, lo) if i not in after and drops[i] <= REACH * max_drop]
    if not cands:
        return None
    middle = (logs[cands[0]] + logs[cands[-1]]) / 2
    mid = min(cands, key=lambda i: (abs(logs[i] - middle), -i))
    ref = lo if passing else hi
    share = after[ref] / drops[ref] if drops[ref] > 0 else 0.0
    if share <= 0:
        return mid
    hopeful = [i for i in cands if within_drop(drops[i] * share, max_drop)]
    return max(min(hopeful), mid) if hopeful else max(cands)


def _spread(indices: list[int], recs: list[TrialRecord], k: int) -> list[int]:
    """Up to ``k`` of ``indices``, evenly spaced in log size (the ends first)."""
    if k <= 0 or not indices:
        return []
    logs = {i: math.log(max(recs[i].size_mb, 1e-9)) for i in indices}
    lo, hi = min(logs.values()), max(logs.values())
    out: list[int] = []
    for q in range(min(k, len(indices))):
        goal = lo + (hi - lo) * q / max(1, min(k, len(indices)) - 1)
        best = min((i for i in indices if i not in out), key=lambda i: abs(logs[i] - goal), default=None)
        if best is not None:
            out.append(best)
    return out


def recover(opened: OpenStudy, *, progress: bool = True) -> list[RecoveryRecord]:
    """Recover the chosen front points not recovered yet, and judge on the holdout any recovered point
    not judged there yet (a study recovered before its budget set one); returns the new records."""
    cfg, out, study, data, start, baseline = (opened.cfg, opened.out, opened.study, opened.data, opened.start,
                                              opened.baseline)
    store = FileSystemArtifactStore(str(artifact_dir(out)))
    done = []
    with file_lock(out / ".recover.lock"):  # one recovering process: a second waits, then skips what is done
        have = recoveries(study)
        judge = Judge(opened) if cfg.spend.holdout_subset else None
        for number, rec in sorted(have.items()):
            if judge and rec.holdout_images == 0 and judge.data is not None:
                ckpt = load_checkpoint(artifact_path(out, rec.checkpoint), expect_model=cfg.model)
                have[number] = replace(rec, **judge(ckpt.model))
                save_recovery(study, have[number])
        count = cfg.report.recover_points

        def drop_after(number: int) -> float:
            if number not in have:
                if progress:
                    print(f"recovering trial {number} ({len(done) + 1} of at most {count})", file=sys.stderr,
                          flush=True)
                if done:
                    fault("between_recoveries")
                have[number] = _recover_one(cfg, out, study, number, data, start, store, progress, judge)
                done.append(have[number])
            return chosen_drop(have[number].val_accuracy, have[number].holdout_drop, baseline)

        choose(front_trials(study), baseline, count, cfg.report.headline_max_drop, drop_after)
    return done


class Judge:
    """Scores models on the study's holdout (the validation images its search never read) in the study's
    precision, beside the baseline's accuracy on the same images (scored once)."""

    def __init__(self, opened: OpenStudy):
        self._opened = opened
        self._baseline: float | None = None

    @cached_property
    def data(self) -> Dataset | None:
        """The holdout, loaded on first use; None for a study pruned --from a pruned checkpoint (it holds
        its baseline's figures, not its model)."""
        return self._opened.holdout if self._opened.start.meta.baseline is None else None

    def __call__(self, model) -> dict:
        if self.data is None:
            return {}
        opened = self._opened
        precision = precision_of(opened.study, opened.cfg.finetune.precision, opened.data.device)
        if self._baseline is None:
            self._baseline = evaluate(opened.start.model, self.data, "val", precision=precision)
        return {"holdout_val_accuracy": evaluate(model, self.data, "val", precision=precision),
                "holdout_baseline_val_accuracy": self._baseline, "holdout_images": self.data.count("val")}


def _recover_one(cfg: StudyConfig, out: Path, study: optuna.Study, number: int, data: Dataset, start: Checkpoint,
                 store: FileSystemArtifactStore, progress: bool, judge: Judge | None = None) -> RecoveryRecord:
    rec = TrialRecord.read(study.trials[number])
    ckpt = load_checkpoint(trial_artifact(out, rec.checkpoint, rec.checkpoint_sha256, number), expect_model=cfg.model)
    # the study's one precision, as in the search (a recovery recipe's own explicit precision trains in it,
    # but every figure is scored in the study's)
    precision = precision_of(study, cfg.finetune.precision, data.device)
    recipe = in_precision(cfg.recovery_recipe(cfg.seed + number), precision)
    teacher = start.model if recipe.kd_weight > 0 else None
    began = time.perf_counter()
    train(ckpt.model, data, recipe, teacher=teacher, progress=progress, desc=f"recover trial {number}")
    seconds = time.perf_counter() - began
    val = evaluate(ckpt.model, data, "val", precision=precision)
    test = evaluate(ckpt.model, data, "test", precision=precision) if data.has_test else None
    meta = with_metrics(replace(ckpt.meta, provenance={**ckpt.meta.provenance, "recovered": True,
                                                       "recovery_epochs": recipe.epochs}),
                        val_accuracy=val, **({} if test is None else {"test_accuracy": test}))
    with tempfile.TemporaryDirectory() as tmp:
        path = save_pruned(Path(tmp) / f"recovered-trial-{number}.pt", ckpt.model,
                           PruningRecord(history=ckpt.history, plan=ckpt.plan), meta)
        artifact = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study,
                                   mimetype="application/octet-stream")
    record = RecoveryRecord(trial=number, val_accuracy=val, test_accuracy=test, checkpoint=artifact,
                            epochs=recipe.epochs, seconds=seconds, **(judge(ckpt.model) if judge else {}))
    save_recovery(study, record)
    return record
