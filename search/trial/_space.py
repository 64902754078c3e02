"""The search space the sampler sees, in one place (the broker samples it, the objective reads it).

At ``unit`` and ``stage`` granularity a plan is sampled as a *level* (the overall ratio, in
[0, max_ratio]) and a *shape* per key (in [-2, 2]): key k gets ``min(max_ratio, level * 2**shape_k)``.
Uniform pruning is the plan with every shape 0, so the sampler reaches light plans as easily as
heavy ones and refines around the classic allocation (sampling each ratio on its own made plans
with every ratio small rare: the searched front trailed the uniform line at ratios 0.1-0.2).
At ``global`` granularity the level is the plan.

With a sensitivity map (``search.center: sensitivity``) the centre moves: shape 0 at a level is the
map's cost-aware allocation of that level's size (:func:`search.trial._sensitivity.center_table`),
and a shape moves its key's ratio *additively*, by up to ``search.center_offset`` either way (0.25 by
default; a key the map spares has ratio 0 at the centre, which no factor would move). The sampler
starts from the best allocation known without a fine-tune and refines around it.
"""
from __future__ import annotations

import math

import optuna

from search.config import LEVEL
SHAPE_RANGE = 2.0  # a key's ratio is the level times 2**shape: from a quarter to four times the level
OFFSET = 0.25      # search.center_offset's default: around a map's centre, the most a shape moves a ratio

Center = list  # [(level, {key: ratio}), ...] at increasing levels: the cost-aware plan of each level


def sample(trial: optuna.Trial, keys: list[str], granularity: str, max_ratio: float,
           center: Center | None = None) -> dict[str, float]:
    """Ask the trial for its parameters (a queued trial's fixed ones come back as they are) and
    return the ratio of every plan key. The broker samples each trial once, here; the objective
    reads the plan back with :func:`ratios`."""
    if granularity != "global":  # the shape first: an aimed level is solved for it (AimedSpread)
        for k in keys:
            trial.suggest_float(k, -SHAPE_RANGE, SHAPE_RANGE)
    trial.suggest_float(LEVEL, 0.0, max_ratio)
    return ratios(trial.params, keys, granularity, max_ratio, center)


def center_at(center: Center, level: float) -> dict[str, float]:
    """The centre's plan at ``level``, interpolated between its two nearest levels."""
    for (l0, p0), (l1, p1) in zip(center, center[1:]):
        if level <= l1:
            w = 0.0 if l1 <= l0 else min(1.0, max(0.0, (level - l0) / (l1 - l0)))
            return {k: p0[k] + w * (p1[k] - p0[k]) for k in p0}
    return dict(center[-1][1])


def ratios(params: dict[str, float], keys: list[str], granularity: str, max_ratio: float,
           center: Center | None = None, offset: float = OFFSET) -> dict[str, float]:
    """The ratio of every plan key from a sampled trial's parameters (what the objective reads);
    ``offset``: around a centre, the most a shape moves a key's ratio."""
    level = params[LEVEL]
    if granularity == "global":
        return {k: level for k in keys}
    if center is not None:
        base = center_at(center, level)
        return {k: min(max_ratio, max(0.0, base[k] + offset * params[k] / SHAPE_RANGE)) for k in keys}
    return {k: min(max_ratio, level * 2.0 ** params[k]) for k in keys}


def params_for(ratios: dict[str, float], level: float, granularity: str,
               center: Center | None = None, offset: float = OFFSET) -> dict[str, float]:
    """The sampler's parameters of given per-key ratios around ``level`` (the reference plans);
    shapes outside [-2, 2] are clipped, so the parameters approximate such a plan (the trial itself
    prunes the exact plan its record holds)."""
    if granularity == "global":
        return {LEVEL: level}
    clip = lambda v: max(-SHAPE_RANGE, min(SHAPE_RANGE, v))  # noqa: E731
    if center is not None:
        base = center_at(center, level)
        return {LEVEL: level, **{k: clip((r - base[k]) * SHAPE_RANGE / offset) for k, r in ratios.items()}}

    def shape(r: float) -> float:
        if level <= 0 or r <= 0:
            return -SHAPE_RANGE
        return clip(math.log2(r / level))
    return {LEVEL: level, **{k: shape(r) for k, r in ratios.items()}}
