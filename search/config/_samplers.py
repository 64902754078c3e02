"""The study's samplers by name: Optuna's own, and the wrappers composed around them
(``tpe-spread``, ``tpe-aim``). A new wrapper is a class here and its entry in ``WRAPPERS``: the
config's choices, its validation and the study's sampler derive from this module. (``cfg`` is a
:class:`StudyConfig`, ``space`` its :class:`SearchSpace`: this module sits below the schema, which
takes its choices from it.)"""
from __future__ import annotations

from typing import Any, Callable

import optuna

LEVEL = "level"  # the search space's overall ratio (search.trial._space), which the wrappers steer

SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True),
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}


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

    name = "spread"  # composed as "<inner>-spread"
    inner_name = "tpe"

    def __init__(self, inner: optuna.samplers.BaseSampler, low: float, high: float) -> None:
        self.inner, self.low, self.high = inner, low, high

    @classmethod
    def compose(cls, inner: optuna.samplers.BaseSampler, cfg: Any) -> "LevelSpread":
        """The wrapper of ``inner`` for a study of ``cfg``: levels from 0 to the largest reference ratio."""
        return cls(inner, 0.0, max(cfg.reference_ratios))

    @classmethod
    def refusal(cls, space: Any) -> str | None:
        """Why a search section cannot use this wrapper (None: it can)."""
        return None

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

    name = "aim"

    def __init__(self, inner: optuna.samplers.BaseSampler, low: float, high: float) -> None:
        super().__init__(inner, low, high)
        self.aim = None

    @classmethod
    def refusal(cls, space: Any) -> str | None:
        if space.granularity != "global" and space.references:
            return None
        return (f"search.sampler {space.sampler} lands trials just under the references' sizes, so it needs "
                f"references and unit or stage granularity (got granularity {space.granularity!r}, references "
                f"{list(space.references)}); use tpe-spread")

    def level(self, number: int, shape: dict[str, float] | None = None) -> float | None:
        if number % 2 == 1 and self.aim is not None and shape:
            aimed = self.aim(number, shape)
            if aimed is not None:
                return aimed
        return super().level(number, shape)


WRAPPERS = (LevelSpread, AimedSpread)

# composed samplers: name -> the wrapper around its inner entry of SAMPLERS
COMPOSED_SAMPLERS: dict[str, type[LevelSpread]] = {f"{w.inner_name}-{w.name}": w for w in WRAPPERS}

SAMPLER_CHOICES = (*SAMPLERS, *COMPOSED_SAMPLERS)


def make_sampler(cfg: Any, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler ``cfg.search.sampler`` names, seeded with ``seed``."""
    wrapper = COMPOSED_SAMPLERS.get(cfg.search.sampler)
    if wrapper is None:
        return SAMPLERS[cfg.search.sampler](seed)
    return wrapper.compose(SAMPLERS[wrapper.inner_name](seed), cfg)


def sampler_refusal(space: Any) -> str | None:
    """Why ``space`` cannot use its sampler (None: it can)."""
    wrapper = COMPOSED_SAMPLERS.get(space.sampler)
    return None if wrapper is None else wrapper.refusal(space)
