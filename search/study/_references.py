"""The classic reference plans every study measures under its own budget: the same ratio in every
unit (uniform), Torch-Pruning's global ranking at the same target ratios, and the sensitivity map's
threshold allocation (FastNAS, AIMET) at the uniform plans' sizes. They are enqueued first, always
run to the end, and give the sampler good starting points."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pruning import Unit, expand_plan, global_ranking_plans
from search.config import StudyConfig
from search.trial import params_for


def thin(ratios: tuple[float, ...], limit: int) -> list[float]:
    """At most ``limit`` of ``ratios``, evenly spread over their range."""
    ordered = sorted(set(float(r) for r in ratios))
    if len(ordered) <= limit:
        return ordered
    if limit == 1:
        return [ordered[len(ordered) // 2]]
    return sorted({ordered[round(i * (len(ordered) - 1) / (limit - 1))] for i in range(limit)})


def reference_plans(cfg: StudyConfig, units: list[Unit], keys: list[str], model: nn.Module,
                    example: torch.Tensor, total_trials: int, keep: tuple[str, ...] = (), *,
                    center: list | None = None,
                    sensitivity: Callable[[list[float]], dict[float, dict[str, float]]] | None = None
                    ) -> dict[tuple[str, float], tuple[dict, dict]]:
    """(kind, ratio) -> (the sampler's parameters, the exact per-unit plan the trial prunes). At most
    half of the study's trials are references (see :func:`reference_limit`), so the sampler keeps the
    rest: with 2 trials or more, at least one is searched. ``center``: the space's centre (the
    parameters are placed around it); ``sensitivity``: ratios -> the map's threshold plan (per plan
    key) at each uniform plan's size, for the ``sensitivity`` kind."""
    kinds = cfg.search.references
    if not kinds:
        return {}
    limit = reference_limit(total_trials)
    ratios = _kept_ratios(cfg, kinds, limit)
    plans: dict[tuple[str, float], tuple[dict, dict]] = {}
    g, offset = cfg.search.granularity, cfg.search.center_offset
    if "uniform" in kinds:
        for r in ratios:
            per_key = {k: r for k in keys}
            plans[("uniform", r)] = (params_for(per_key, r, g, center, offset), expand_plan(units, g, per_key))
    if "global" in kinds:
        allocated = global_ranking_plans(model, ratios, example_input=example, max_ratio=cfg.search.max_ratio,
                                         round_to=cfg.search.round_to, keep=keep)
        for r, plan in allocated.items():
            plans[("global", r)] = (params_for(_per_key(plan, units, keys, g), r, g, center, offset), plan)
    if "sensitivity" in kinds and sensitivity is not None:
        seen: list[dict] = []
        wanted = [r for r in ratios if ("sensitivity", r) in _keep({**plans, **{("sensitivity", q): None for q in ratios}},
                                                                     limit)]
        for r, per_key in sensitivity(wanted).items():  # bisected only where the study keeps the reference
            plan = expand_plan(units, g, per_key)
            if plan not in seen:  # two targets the map cannot tell apart give one plan: measure it once
                seen.append(plan)
                plans[("sensitivity", r)] = (params_for(per_key, r, g, center, offset), plan)
    return _keep(plans, limit)


def _kept_ratios(cfg: StudyConfig, kinds: tuple[str, ...], limit: int) -> list[float]:
    """The reference ratios a study of ``limit`` references measures for each kind."""
    return thin(cfg.reference_ratios, max(1, limit // len(kinds)))


def reference_limit(total_trials: int) -> int:
    """References a study of ``total_trials`` enqueues at most: half of them, and at least one
    (a 1-trial study is its reference); never all of them when there are 2 or more."""
    return max(1, total_trials // 2)


def _keep(plans: dict, limit: int) -> dict:
    """The first ``limit`` plans, taking the kinds in turn (uniform 0.2, global 0.2, uniform 0.5, ...)
    so a small study still measures each kind."""
    kinds = ("uniform", "global", "sensitivity")
    order = sorted(plans, key=lambda key: (sorted({r for _, r in plans}).index(key[1]), kinds.index(key[0])))
    return {key: plans[key] for key in order[:limit]}


def _per_key(plan: dict[str, float], units: list[Unit], keys: list[str], granularity: str) -> dict[str, float]:
    """A per-unit plan seen per plan key: exact at unit granularity, each stage's mean ratio at
    stage granularity (the exact plan is what the trial prunes)."""
    if granularity == "unit":
        return {k: plan[k] for k in keys}
    groups: dict[str, list[float]] = {}
    for u in units:
        groups.setdefault(u.stage if granularity == "stage" else "ratio", []).append(plan[u.name])
    return {k: sum(v) / len(v) for k, v in groups.items()}
