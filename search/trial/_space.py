"""The search space the sampler sees, in one place (the broker samples it, the objective reads it).

At ``unit`` and ``stage`` granularity a plan is sampled as a *level* (the overall ratio, in
[0, max_ratio]) and a *shape* per key (in [-2, 2]): key k gets ``min(max_ratio, level * 2**shape_k)``.
Uniform pruning is the plan with every shape 0, so the sampler reaches light plans as easily as
heavy ones and refines around the classic allocation (sampling each ratio on its own made plans
with every ratio small rare: the searched front trailed the uniform line at ratios 0.1-0.2).
At ``global`` granularity the level is the plan.

With a sensitivity map (``search.center: sensitivity``) the centre moves: shape 0 at a level is the
map's cost-aware allocation of that level's size (:func:`search.trial._sensitivity.center_table`),
and a shape moves its key's ratio *additively*, by up to ``OFFSET`` either way (a key the map spares
has ratio 0 at the centre, which no factor would move). The sampler starts from the best allocation
known without a fine-tune and refines around it.
"""
from __future__ import annotations

import math

import optuna

LEVEL = "level"
SHAPE_RANGE = 2.0  # a key's ratio is the level times 2**shape: from a quarter to four times the level
OFFSET = 0.25      # around a map's centre, the most a shape moves a key's ratio either way

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
           center: Center | None = None) -> dict[str, float]:
    """The ratio of every plan key from a sampled trial's parameters (what the objective reads)."""
    level = params[LEVEL]
    if granularity == "global":
        return {k: level for k in keys}
    if center is not None:
        base = center_at(center, level)
        return {k: min(max_ratio, max(0.0, base[k] + OFFSET * params[k] / SHAPE_RANGE)) for k in keys}
    return {k: min(max_ratio, level * 2.0 ** params[k]) for k in keys}


def params_for(ratios: dict[str, float], level: float, granularity: str,
               center: Center | None = None) -> dict[str, float]:
    """The sampler's parameters of given per-key ratios around ``level`` (the reference plans);
    shapes outside [-2, 2] are clipped, so the parameters approximate such a plan (the trial itself
    prunes the exact plan its record holds)."""
    if granularity == "global":
        return {LEVEL: level}
    clip = lambda v: max(-SHAPE_RANGE, min(SHAPE_RANGE, v))  # noqa: E731
    if center is not None:
        base = center_at(center, level)
        return {LEVEL: level, **{k: clip((r - base[k]) * SHAPE_RANGE / OFFSET) for k, r in ratios.items()}}

    def shape(r: float) -> float:
        if level <= 0 or r <= 0:
            return -SHAPE_RANGE
        return clip(math.log2(r / level))
    return {LEVEL: level, **{k: shape(r) for k, r in ratios.items()}}


def van_der_corput(i: int) -> float:
    """The i-th point of the base-2 van der Corput sequence in [0, 1): 0, 1/2, 1/4, 3/4, 1/8, ..."""
    x, digit = 0.0, 1.0
    while i:
        digit /= 2
        x += digit * (i & 1)
        i >>= 1
    return x


class LevelSpread(optuna.samplers.BaseSampler):
    """The inner sampler's proposals, except that every odd-numbered trial takes its level from an even
    spread over ``[low, high]`` (van der Corput order: the middle, then the quarters, the eighths, ...),
    while the inner sampler still picks that trial's shape (``--sampler tpe-spread``).

    Why: a multi-objective TPE learns its good shapes at the front's extremes. On VGG16's ``cpu``
    budget (50 trials) its searched plans below 8 MB beat the uniform line, but no searched plan
    between 8 and 61 MB came close to the uniform 0.3 / 0.5 references: the shape it learned was
    never tried at those levels. A level depends only on the trial number, so every process of a
    study (workers, Ray, a resume) spreads alike; an enqueued plan (a reference, a retry) keeps its
    own parameters, as Optuna gives fixed parameters precedence over any sampler.

    The spread starts at 0, not at the smallest reference ratio: a global reference removes far fewer
    parameters than the uniform plan of its ratio (MobileNetV2 global 0.3 keeps 8.36 of 9.08 MB,
    uniform 0.3 4.58), and with levels from 0.3 up no searched plan on MobileNetV2's ``cpu`` budget
    came above 2.3 MB, so the global references kept every size above it."""

    def __init__(self, inner: optuna.samplers.BaseSampler, low: float, high: float) -> None:
        self.inner, self.low, self.high = inner, low, high

    def level(self, number: int, shape: dict[str, float] | None = None) -> float | None:
        """The level a trial is given, or None (even numbers: the inner sampler's own). ``shape``: the
        trial's other parameters (an aimed spread solves its level for them)."""
        if number % 2 == 0:
            return None
        return self.low + (self.high - self.low) * van_der_corput(number // 2 + 1)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        params = self.inner.sample_relative(study, trial, search_space)
        if LEVEL not in params:
            return params
        level = self.level(trial.number, {k: v for k, v in params.items() if k != LEVEL})
        return params if level is None else {**params, LEVEL: level}

    def sample_independent(self, study, trial, param_name, param_distribution):
        level = self.level(trial.number, {k: v for k, v in trial.params.items() if k != LEVEL}) \
            if param_name == LEVEL else None
        if level is not None:
            return level
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)


class AimedSpread(LevelSpread):
    """:class:`LevelSpread` whose odd trials are *aimed*: such a trial keeps the shape the inner sampler
    proposed and takes the level at which that shape's plan is the largest no larger than a
    reference plan's size, the references in turn (``--sampler tpe-aim``).

    Why: the study is judged against each reference at its size (the best searched plan no larger),
    and a spread of levels lands the shaped plans beside those sizes, not under them: on LeNet5
    (AMD EPYC, seeds 0 and 2) the searched plans nearest the sensitivity 0.6 reference were 14 %
    smaller (0.0377 MB, val 0.8797) and 10 % larger (0.0480 MB, 0.8863); the smaller one lost.

    ``aim`` (number, shape) -> level is attached by the process that owns the study's context
    (:func:`search.trial.aim_spread`); until then, and for a study with no references, the odd
    trials are spread as :class:`LevelSpread` spreads them."""

    def __init__(self, inner: optuna.samplers.BaseSampler, low: float, high: float) -> None:
        super().__init__(inner, low, high)
        self.aim = None

    def level(self, number: int, shape: dict[str, float] | None = None) -> float | None:
        if number % 2 == 1 and self.aim is not None and shape:
            aimed = self.aim(number, shape)
            if aimed is not None:
                return aimed
        return super().level(number, shape)
