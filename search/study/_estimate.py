"""An estimate of a whole study's time before it starts (baseline + trials + recovery), from a few
timed training steps on the run's device; on a CPU a study estimated at over an hour asks for
``--yes`` (or AUTOML_PRUNE_YES=1) and names the alternatives."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from pruning import Dataset, TrainConfig, plan_keys, prunable_units, train
from search.config import RunOptions, StudyConfig, UsageError, env_flag
from search.trial import build_model, map_grid, map_images, uses_map

LIMIT_S = 3600.0
YES_ENV = "AUTOML_PRUNE_YES"
PROBE_STEPS = 2
REPROBE_PAUSE_S = 2.0  # before the second probe of an estimate over the limit
# A candidate is smaller than the baseline (fewer MACs per step) and successive halving stops most
# of them early; measured here on LeNet5 studies, a trial costs about this share of a full fine-tune.
TRIAL_SHARE = 0.6


@dataclass(frozen=True)
class Estimate:
    baseline_s: float
    trials_s: float
    recovery_s: float
    per_trial_s: float
    upper_bound: bool = False  # from one small-batch step (overheads included): the study is no longer
    report_s: float = 0.0  # the report: test accuracy and latency of the front points
    map_s: float = 0.0  # the sensitivity map, before the trials (a new study that uses one)

    @property
    def total_s(self) -> float:
        return self.baseline_s + self.map_s + self.trials_s + self.recovery_s + self.report_s


def seconds_per_image(cfg: StudyConfig, data: Dataset, *, model: nn.Module | None = None,
                      precise: bool = True) -> float:
    """Training seconds per image of the unpruned model on the data's device, from the training
    loop's own clock: two warm-up steps at batch 8; a model that trains fast is then timed at the
    recipe's batch for about a second, a slow one (a large model on a CPU) for two steps at batch 16.
    Either way the figure is the difference of a long and a one-step run, so what a training call
    costs once (building the optimizer, the first batch) is never spread over a few images.
    ``model``: a model of the study's it may train (None: one built here)."""
    model = model if model is not None else build_model(cfg, data)
    n = data.count("train")

    def run(k: int, batch: int) -> float:
        return train(model, data, TrainConfig(steps=k, batch_size=batch, lr=0.01), progress=False).seconds

    first = run(1, min(8, n))
    if not precise:  # one step at batch 8, the process's one-time costs included: an upper bound
        return first / min(8, n)
    # every figure is the least of a few repeats: the machine's speed, not a neighbour's load spike
    warm = min(run(1, min(8, n)) for _ in range(2))  # the first step paid the one-time costs
    if warm >= 0.05:  # a slow model: a few steps at batch 16, less one step to cancel a run's fixed cost
        batch, steps = min(16, n), PROBE_STEPS
    else:
        batch = min(cfg.baseline_recipe().batch_size, n)
        steps = max(3, min(100, int(0.5 / max(warm * batch / 8, 1e-4))))
    # the difference of two runs cancels what a run costs once
    long, short = (min(run(k, batch) for _ in range(3)) for k in (1 + steps, 1))
    return (long - short) / (steps * batch) if long > short else long / ((1 + steps) * batch)


def estimate(cfg: StudyConfig, opts: RunOptions, data: Dataset, *, baseline_exists: bool,
             trials_left: int, precise: bool = True, map_pending: bool = False,
             model: nn.Module | None = None) -> Estimate:
    """The study's time. A quick upper bound (one small step, overheads included) first; it is
    measured precisely (a few seconds) when it is shown (``precise``) or exceeds the CPU limit, and
    once more, the faster rate kept, when that measure exceeds the limit too. ``map_pending``: the
    study still has its sensitivity map to compute. ``model``: the study's model, built and checked
    once by the caller, of which one copy is timed (None: built here, once)."""
    model = copy.deepcopy(model) if model is not None else build_model(cfg, data)
    keys, surgery_s = graph_probe(cfg, model, data)
    parts = dict(baseline_exists=baseline_exists, trials_left=trials_left, pending_keys=keys if map_pending else 0,
                 surgery_s=surgery_s)
    rough = _estimate(cfg, opts, data, seconds_per_image(cfg, data, model=model, precise=False), **parts)
    if rough.total_s <= LIMIT_S and not precise:
        return replace(rough, upper_bound=True)
    per_image = seconds_per_image(cfg, data, model=model)
    measured = _estimate(cfg, opts, data, per_image, **parts)
    if measured.total_s > LIMIT_S and refusable(cfg, opts, data.device):  # measured again after a pause, the
        time.sleep(REPROBE_PAUSE_S)  # faster kept, so a slow moment (a neighbour's burst, a cold start) refuses nothing
        measured = _estimate(cfg, opts, data, min(per_image, seconds_per_image(cfg, data, model=model)), **parts)
    return measured


def graph_probe(cfg: StudyConfig, model: nn.Module, data: Dataset) -> tuple[int, float]:
    """(the sensitivity map's keys, the seconds of one surgery), from the faster of two timed traces
    of the model.

    The keys are the plan keys at the study's granularity (0 for a study without a map): on
    DenseNet121, 12 stage keys of 120 units, which a count of its layers put at 120. The trace and
    the grouping of its channels are most of what a surgery costs (a trial's, a map cell's, a front
    point's rebuild): 0.1 s on LeNet5 or ResNet50 at 32x32, 0.6 s on DenseNet121 at 64x64, where a
    smoke study's 48 surgeries of its map were 29 s the estimate left out. A model the tracer cannot
    read is counted by its conv and linear layers, the classifier aside, and costs nothing: the
    context's own trace refuses it in one line later."""
    seconds = []
    try:
        for _ in range(2):  # the faster of two: the first pays the model's first forward (a cold start)
            start = time.perf_counter()
            units = prunable_units(model, data.example_input(1), keep=tuple(cfg.search.keep_layers))
            seconds.append(time.perf_counter() - start)
        keys = max(1, len(plan_keys(units, cfg.search.granularity)))
    except Exception:  # an estimate, not the check: build_context names what the tracer cannot read
        keys = max(1, sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()) - 1)
    return (keys if uses_map(cfg.search) else 0), min(seconds, default=0.0)


def map_seconds(cfg: StudyConfig, data: Dataset, per_image: float, keys: int, surgery_s: float = 0.0) -> float:
    """The sensitivity map's cost: per key (:func:`graph_probe`) and grid ratio, a surgery, adaptive BN
    on the calibration batches and a forward pass over the map's validation images (:func:`map_images`;
    a forward pass is about a third of a step)."""
    images = cfg.spend.bn_batches * cfg.finetune_recipe(0).batch_size + map_images(cfg, data.count("val"), keys)
    return keys * len(map_grid(cfg.search)) * (images * per_image / 3 + surgery_s)


def _estimate(cfg: StudyConfig, opts: RunOptions, data: Dataset, per_image: float, *, baseline_exists: bool,
              trials_left: int, pending_keys: int, surgery_s: float = 0.0) -> Estimate:
    """The estimate at ``per_image`` training seconds an image (``pending_keys``: the keys of a map
    still to compute, 0 for none; ``surgery_s``: one surgery, paid by each trial, map cell, recovered
    point and front point the report loads)."""
    n_train, n_val = data.count("train"), data.count("val")
    base = cfg.baseline_recipe()
    baseline = 0.0 if baseline_exists else base.total_steps(n_train) * base.batch_size * per_image
    ft = cfg.finetune_recipe(0)
    evals = (1 + len(cfg.search.rungs)) * n_val * per_image / 3  # a forward pass is about a third of a step
    per_trial = TRIAL_SHARE * ft.total_steps(n_train) * ft.batch_size * per_image + evals + surgery_s
    rec = cfg.recovery_recipe(0)
    held = (cfg.spend.holdout_subset or 0) if cfg.spend.val_subset else 0  # each recovered point and the baseline judged
    recovery = (cfg.report.recover_points * (rec.total_steps(n_train) * rec.batch_size * per_image * TRIAL_SHARE
                                             + surgery_s) + (cfg.report.recover_points + 1) * held * per_image / 3
                if opts.recover else 0.0)
    report = report_seconds(cfg, opts, data, per_image)
    report += FRONT_PER_RECOVERED * cfg.report.recover_points * surgery_s if opts.write_report else 0.0
    return Estimate(baseline_s=baseline, trials_s=trials_left * per_trial / max(1, opts.workers),
                    recovery_s=recovery, per_trial_s=per_trial, report_s=report,
                    map_s=map_seconds(cfg, data, per_image, pending_keys, surgery_s) if pending_keys else 0.0)


# The front a study ends with, in points per recovered point (LeNet5 and ResNet18 studies: 6-10 points
# for 4 recovered ones)
FRONT_PER_RECOVERED = 2


def report_seconds(cfg: StudyConfig, opts: RunOptions, data: Dataset, per_image: float) -> float:
    """The report's own cost: each front point's test accuracy and, unless the study's latency
    setting (the budget's, else ``report.latency``) is ``none``, its latency on two runtimes at batch
    1 and 64 and its interleaved speed-ups over the baseline (SPEEDUP_REPEATS pairs of timed blocks
    of up to 50 runs, at least 3, about a second), and report.int8's INT8 files (:func:`int8_seconds`).
    A forward pass is a third of a training step; the baseline's cost bounds a pruned point's."""
    from search.trial import BATCHES, SPEEDUP_REPEATS

    if not opts.write_report:
        return 0.0
    forward = per_image / 3
    points = FRONT_PER_RECOVERED * cfg.report.recover_points
    tests = points * data.count("test") * forward
    if cfg.latency == "none":
        return tests
    timed = points if cfg.latency == "all" else cfg.report.recover_points
    calls = [b * forward for b in BATCHES]
    blocks = sum(min(50 * t, max(1.0, 3 * t)) for t in calls)  # one timed block per batch size
    per_point = 2 * SPEEDUP_REPEATS * 2 * blocks + (60 + 25) * sum(calls)  # 2 runtimes; ORT 10+50, torch 5+20 runs
    return tests + (timed + 1) * per_point + int8_seconds(cfg, data, forward, blocks, calls)


def int8_seconds(cfg: StudyConfig, data: Dataset, forward: float, blocks: float, calls: list[float]) -> float:
    """report.int8's cost: per recovered point, a calibration (up to 512 training images), the val and
    test splits scored by the FP32 and the INT8 file, both files timed (60 runs per batch size) and
    SPEEDUP_REPEATS interleaved pairs; an onnxruntime forward counted as PyTorch's (INT8 is faster on
    VGG16, slower on LeNet5). The bar's ranking, when needed, is not counted."""
    from search.trial import SPEEDUP_REPEATS

    if cfg.report.int8 == "none" or cfg.latency == "none":
        return 0.0
    scored = min(512, data.count("train")) + 2 * (data.count("val") + data.count("test"))
    return cfg.report.recover_points * (scored * forward + 2 * SPEEDUP_REPEATS * blocks + 2 * 60 * sum(calls))


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def describe(est: Estimate, device: torch.device) -> str:
    at_most = "at most " if est.upper_bound else ""
    sensitivity = f"sensitivity map {duration(est.map_s)}, " if est.map_s else ""
    return (f"estimated study time on {device.type}: {at_most}{duration(est.total_s)} (baseline {duration(est.baseline_s)}, "
            f"{sensitivity}trials {duration(est.trials_s)}, recovery {duration(est.recovery_s)}, "
            f"report {duration(est.report_s)})")


def refusable(cfg: StudyConfig, opts: RunOptions, device: torch.device) -> bool:
    """Whether the guard may refuse this study: a CPU run, a budget whose scope is not ``smoke``, no ``--yes``."""
    return device.type == "cpu" and cfg.scope != "smoke" and not opts.yes and not env_flag(YES_ENV)


def guard(cfg: StudyConfig, opts: RunOptions, est: Estimate, device: torch.device) -> None:
    """Refuse, with one line naming the alternatives, a CPU study estimated at over an hour. The
    ``smoke`` scope is never refused: it exists to prove the pipeline on any machine."""
    if est.total_s <= LIMIT_S or not refusable(cfg, opts, device):
        return
    name = cfg.budget_of_scope("smoke")
    smoke = f"try --budget {name} (minutes, proves the pipeline), " if name else ""
    raise UsageError(f"{cfg.model} at budget {cfg.budget!r} is estimated at {duration(est.total_s)} on this CPU as "
                     f"busy as it is now (baseline {duration(est.baseline_s)}, trials {duration(est.trials_s)}, "
                     f"recovery {duration(est.recovery_s)}, report {duration(est.report_s)}): this is GPU work; run it on a GPU machine "
                     f"(bench/gpu_run.sh), {smoke}or spread it with --workers / --backend ray on GPU machines; "
                     f"pass --yes (or {YES_ENV}=1) to go on anyway")
