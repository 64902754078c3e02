"""The classic reference plans every study measures under its own budget: the same ratio in every
unit (uniform), and Torch-Pruning's global ranking at the same target ratios. They are enqueued
first, always run to the end, and give the sampler good starting points."""
from __future__ import annotations

import torch
from torch import nn

from pruning import Unit, global_ranking_plans
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
                    example: torch.Tensor, total_trials: int,
                    keep: tuple[str, ...] = ()) -> dict[tuple[str, float], tuple[dict, dict]]:
    """(kind, ratio) -> (the sampler's parameters, the exact per-unit plan or {} when the parameters
    say it all). At most half of the study's trials are references (see :func:`reference_limit`), so
    the sampler keeps the rest: with 2 trials or more, at least one is searched."""
    kinds = cfg.search.references
    if not kinds:
        return {}
    limit = reference_limit(total_trials)
    ratios = thin(cfg.reference_ratios, max(1, limit // len(kinds)))
    plans: dict[tuple[str, float], tuple[dict, dict]] = {}
    g = cfg.search.granularity
    if "uniform" in kinds:
        for r in ratios:
            plans[("uniform", r)] = (params_for({k: r for k in keys}, r, g), {})
    if "global" in kinds:
        allocated = global_ranking_plans(model, ratios, example_input=example, max_ratio=cfg.search.max_ratio,
                                         round_to=cfg.search.round_to, keep=keep)
        for r, plan in allocated.items():
            plans[("global", r)] = (params_for(_per_key(plan, units, keys, g), r, g), plan)
    return _keep(plans, limit)


def reference_limit(total_trials: int) -> int:
    """References a study of ``total_trials`` enqueues at most: half of them, and at least one
    (a 1-trial study is its reference); never all of them when there are 2 or more."""
    return max(1, total_trials // 2)


def _keep(plans: dict, limit: int) -> dict:
    """The first ``limit`` plans, taking the kinds in turn (uniform 0.2, global 0.2, uniform 0.5, ...)
    so a small study still measures each kind."""
    order = sorted(plans, key=lambda key: (sorted({r for _, r in plans}).index(key[1]), key[0] != "uniform"))
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
