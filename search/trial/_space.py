"""The search space the sampler sees, in one place (the broker samples it, the objective reads it).

At ``unit`` and ``stage`` granularity a plan is sampled as a *level* (the overall ratio, in
[0, max_ratio]) and a *shape* per key (in [-2, 2]): key k gets ``min(max_ratio, level * 2**shape_k)``.
Uniform pruning is the plan with every shape 0, so the sampler reaches light plans as easily as
heavy ones and refines around the classic allocation (sampling each ratio on its own made plans
with every ratio small rare: the searched front trailed the uniform line at ratios 0.1-0.2).
At ``global`` granularity the level is the plan.
"""
from __future__ import annotations

import math

import optuna

LEVEL = "level"
SHAPE_RANGE = 2.0  # a key's ratio is the level times 2**shape: from a quarter to four times the level


def sample(trial: optuna.Trial, keys: list[str], granularity: str, max_ratio: float) -> dict[str, float]:
    """Ask the trial for its parameters (a queued trial's fixed ones come back as they are) and
    return the ratio of every plan key. The broker samples each trial once, here."""
    trial.suggest_float(LEVEL, 0.0, max_ratio)
    if granularity != "global":
        for k in keys:
            trial.suggest_float(k, -SHAPE_RANGE, SHAPE_RANGE)
    return ratios(trial.params, keys, granularity, max_ratio)


def ratios(params: dict[str, float], keys: list[str], granularity: str, max_ratio: float) -> dict[str, float]:
    """The ratio of every plan key from a sampled trial's parameters (what the objective reads)."""
    level = params[LEVEL]
    if granularity == "global":
        return {k: level for k in keys}
    return {k: min(max_ratio, level * 2.0 ** params[k]) for k in keys}


def params_for(ratios: dict[str, float], level: float, granularity: str) -> dict[str, float]:
    """The sampler's parameters of given per-key ratios around ``level`` (the reference plans);
    shapes outside [-2, 2] are clipped, so the parameters approximate such a plan."""
    if granularity == "global":
        return {LEVEL: level}
    def shape(r: float) -> float:
        if level <= 0 or r <= 0:
            return -SHAPE_RANGE
        return max(-SHAPE_RANGE, min(SHAPE_RANGE, math.log2(r / level)))
    return {LEVEL: level, **{k: shape(r) for k, r in ratios.items()}}
