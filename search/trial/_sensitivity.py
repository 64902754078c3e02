"""The study's sensitivity map: every plan key pruned alone at each ratio of a grid, adaptive
BatchNorm, accuracy on the rung images, and the measure it saves. Computed once per study, before
its trials, under the study lock; each key's row is stored in the study as it finishes, so a killed
run resumes the map where it stopped and a resumed or extended study never computes it again.

From the map come the ``sensitivity`` reference (the peers' threshold allocation, at the size of
each uniform reference) and the *centre* of the search space: the cost-aware allocation at every
level, around which the sampler proposes (:mod:`search.trial._space`).
"""
from __future__ import annotations

import copy
import time

import optuna
from tqdm.auto import tqdm

from pruning import apply_plan, channels_to_keep, evaluate, expand_plan, measure, recalibrate_bn, size_mb
from search.config import LEVEL, AimedSpread, SearchSpace, StudyConfig, fault, van_der_corput
from search.trial._allocation import (SensitivityMap, additive_saving, bisect, bisect_parameter, costaware_plan,
                                      threshold_plan)
from search.trial._context import SearchContext
from search.trial._space import ratios as plan_ratios

MAP_KEY = "sensitivity_map"          # study attribute: the whole map, plain (SensitivityMap.to_plain)
ROW_PREFIX = "sensitivity_row:"      # + plan key -> that key's row, written as each key finishes
BASE_ROW_KEY = "sensitivity_base"    # the unpruned model's accuracy and measure on the map's images
CENTER_KEY = "sensitivity_center"    # the cost-aware plan per level: [[level, {key: ratio}], ...]
PLANS_KEY = "sensitivity_plans"      # the sensitivity reference's plan per uniform ratio ("0.4" -> {key: ratio})
SECONDS_KEY = "sensitivity_seconds"  # what computing the map cost (summed over the runs that did)
TARGETS_KEY = "aim_targets"          # "kind ratio" -> that reference plan's matched measure (AimedSpread)
AIM_STEPS = 12                       # bisection steps of an aimed level: 0.9 / 2**12 ~ 0.0002
CENTER_STEP = 0.05                   # levels of the centre table; ratios between them are interpolated

# the measure a plan is matched on: the study's size measure, MACs for latency (a timed latency is too
# noisy to bisect on, and MACs is what a channel costs on the device before its memory traffic)
MATCHED = {"size": "size_mb", "params": "params", "macs": "macs", "latency": "macs"}
MAP_MIN_IMAGES = 200  # the fewest validation images a map cell is scored on, whatever the budget (one image: 0.5 pt)
# a map cell's model is the whole model less one key's channels, a candidate about half of it: counted in
# forward passes, a map image costs about twice what a fine-tune image does (MobileNetV2 1.4x, ResNet50 1.8x)
MAP_IMAGE_COST = 2.0


def map_images(cfg: StudyConfig, n_val: int, keys: int) -> int:
    """The validation images each map cell is scored on: as many as ``search.map_share`` of the
    trials' fine-tune work allows once each cell's adaptive BN is paid, at least MAP_MIN_IMAGES, at
    most the rung images (a training image counted as three forward passes, as the estimate does).
    On the LeNet5, VGG16 and default budgets that is the rung images; on a 40-step ResNet50 ``cpu``
    budget, the floor."""
    space, ft = cfg.search, cfg.finetune_recipe(0)
    cells = max(1, keys * len(map_grid(space)))
    finetune = cfg.spend.trials * cfg.spend.finetune_steps * ft.batch_size * 3
    allowed = int(space.map_share * finetune / (MAP_IMAGE_COST * cells)) - cfg.spend.bn_batches * ft.batch_size
    most = min(n_val, space.rung_val_images or n_val)
    return min(most, max(MAP_MIN_IMAGES, allowed))


def uses_map(space: SearchSpace) -> bool:
    """Whether a study of this search section computes a sensitivity map."""
    return space.center == "sensitivity" or "sensitivity" in space.references


def map_grid(space: SearchSpace) -> tuple[float, ...]:
    """The ratios each key of the map is pruned at: the grid's, up to ``max_ratio``."""
    return tuple(r for r in space.sensitivity_ratios if r <= space.max_ratio)


def _pruned(ctx: SearchContext, plan: dict[str, float], importance: str):
    """A copy of the study's model pruned by an exact per-unit plan, with the study's settings."""
    space = ctx.cfg.search
    pruned, _ = apply_plan(ctx.start.model, plan, example_input=ctx.example,
                           importance=importance, round_to=space.round_to, history=ctx.start.history,
                           max_ratio=space.max_ratio, seed=ctx.cfg.seed, keep=ctx.keep,
                           calibration=ctx.calibration if importance == "taylor" else None)
    return pruned


def _per_unit(ctx: SearchContext, plan: dict[str, float]) -> dict[str, float]:
    return expand_plan(ctx.units, ctx.cfg.search.granularity, plan)


def _matched(ctx: SearchContext, model) -> float:
    """The plan's matched measure; a size straight from the weights (counting MACs traces a forward pass:
    0.1 s of a DenseNet121 map cell)."""
    field = MATCHED[ctx.cfg.search.objective]
    return size_mb(model) if field == "size_mb" else float(getattr(measure(model, ctx.example), field))


def _measure_of(ctx: SearchContext, plan: dict[str, float]) -> float:
    """The matched measure of a per-key plan, from the real surgery (exact, never estimated); which
    channels go does not change it, so the cheapest importance chooses them. Remembered by the
    channels each unit keeps: a bisection's later steps move a plan by less than a channel, and each
    surgery of a large model costs seconds (ResNet50's three sensitivity references: 30
    surgeries instead of 81, the same plans)."""
    per_unit = _per_unit(ctx, plan)
    round_to = ctx.cfg.search.round_to
    widths = tuple(channels_to_keep(u.channels, per_unit[u.name], round_to) for u in ctx.units)
    if widths not in ctx.measured:
        ctx.measured[widths] = _matched(ctx, _pruned(ctx, per_unit, "l1"))
    return ctx.measured[widths]


def _cell(ctx: SearchContext, plan: dict[str, float], images, precision: str,
          seen: dict[tuple, tuple[float, float]]) -> tuple[float, float]:
    """(accuracy after adaptive BN on ``images``, matched measure) of one plan. ``seen``: the cells of
    the row so far by the pruned model's shapes: two ratios that round to the same channel counts
    (a small layer, ``round_to``) remove the same channels, so the second is not scored again (the
    evaluation is most of a cell's cost: 3.4 of 4 s on MobileNetV2's 1,000 images)."""
    pruned = _pruned(ctx, _per_unit(ctx, plan), ctx.cfg.search.importance)
    shapes = tuple((name, tuple(p.shape)) for name, p in pruned.named_parameters())
    if shapes not in seen:
        recalibrate_bn(pruned, ctx.calibration, precision=precision)
        seen[shapes] = evaluate(pruned, images, "val", precision=precision), _matched(ctx, pruned)
    return seen[shapes]


def ensure_map(ctx: SearchContext, study: optuna.Study, *, progress: bool = False) -> SensitivityMap:
    """The study's map: read back when stored, else computed (resuming the rows a killed run left)
    and stored. Call under the study lock."""
    stored = study.user_attrs.get(MAP_KEY)
    if stored is not None:
        return SensitivityMap.from_plain(stored)
    space = ctx.cfg.search
    ratios = map_grid(space)
    precision = ctx.precision
    started = time.perf_counter()
    base = study.user_attrs.get(BASE_ROW_KEY)
    # a resumed map keeps the images it began on (a row stored before the count was: the rung images)
    count = map_images(ctx.cfg, ctx.data.count("val"), len(ctx.keys)) if base is None else \
        base.get("images", space.rung_val_images)
    images = ctx.data.subset(val=count)
    if base is None:
        model = copy.deepcopy(ctx.start.model)
        recalibrate_bn(model, ctx.calibration, precision=precision)
        base = {"accuracy": evaluate(model, images, "val", precision=precision),
                "measure": _matched(ctx, ctx.start.model), "images": count}
        study.set_user_attr(BASE_ROW_KEY, base)
    rows = {k: study.user_attrs.get(ROW_PREFIX + k) for k in ctx.keys}
    todo = [k for k in ctx.keys if rows[k] is None]
    bar = tqdm(total=len(ctx.keys) * len(ratios), initial=(len(ctx.keys) - len(todo)) * len(ratios),
               desc="sensitivity map", unit="plan", disable=not progress, dynamic_ncols=True, leave=False)
    for k in todo:
        cells, seen = [], {}
        for r in ratios:
            cells.append(_cell(ctx, {key: (r if key == k else 0.0) for key in ctx.keys}, images, precision, seen))
            bar.update(1)
        rows[k] = {"accuracy": [a for a, _ in cells], "saved": [base["measure"] - s for _, s in cells]}
        study.set_user_attr(ROW_PREFIX + k, rows[k])
        fault("after_sensitivity_row")
    bar.close()
    smap = SensitivityMap(ratios=ratios, base_accuracy=base["accuracy"], measure=MATCHED[space.objective],
                          base_measure=base["measure"], accuracy={k: tuple(rows[k]["accuracy"]) for k in ctx.keys},
                          saved={k: tuple(rows[k]["saved"]) for k in ctx.keys})
    study.set_user_attr(SECONDS_KEY, float(study.user_attrs.get(SECONDS_KEY, 0.0)) + time.perf_counter() - started)
    study.set_user_attr(MAP_KEY, smap.to_plain())
    return smap


def center_table(ctx: SearchContext, study: optuna.Study, smap: SensitivityMap) -> list[tuple[float, dict[str, float]]]:
    """The cost-aware plan at every level: the plan saving what the uniform plan of that level saves,
    both counted as if the keys' savings added up (a level is a size, not an exact one: the sampler
    chooses it). Stored in the study, read back by every process."""
    stored = study.user_attrs.get(CENTER_KEY)
    if stored is None:
        top = ctx.cfg.search.max_ratio
        levels = [round(i * CENTER_STEP, 6) for i in range(int(top / CENTER_STEP + 1e-9) + 1)]
        if levels[-1] < top:
            levels.append(top)
        stored = []
        for level in levels:
            budget = additive_saving(smap, {k: min(level, smap.ratios[-1]) for k in ctx.keys})
            stored.append([level, costaware_plan(smap, budget)])
        study.set_user_attr(CENTER_KEY, stored)
    return [(float(level), {k: float(r) for k, r in plan.items()}) for level, plan in stored]


def stored_center(study: optuna.Study) -> list[tuple[float, dict[str, float]]] | None:
    """The centre a study stored (a worker, a Ray actor or a later command reads it), or None."""
    stored = study.user_attrs.get(CENTER_KEY)
    return None if stored is None else [(float(lv), {k: float(r) for k, r in p.items()}) for lv, p in stored]


def sensitivity_plans(ctx: SearchContext, study: optuna.Study, smap: SensitivityMap,
                      ratios: list[float]) -> dict[float, dict[str, float]]:
    """The threshold allocation at the exact matched measure of each uniform plan of ``ratios`` (per
    plan key), stored in the study so a resume does not bisect again."""
    stored = dict(study.user_attrs.get(PLANS_KEY, {}))
    top = max(max(smap.drops(k)) for k in ctx.keys) + 1.0
    for r in ratios:
        if f"{r:g}" not in stored:
            target = _measure_of(ctx, {k: r for k in ctx.keys})
            stored[f"{r:g}"] = bisect(lambda t: threshold_plan(smap, t), lambda p: _measure_of(ctx, p),
                                      target * (1 + 1e-9), 0.0, top)
            study.set_user_attr(PLANS_KEY, stored)
    return {r: {k: float(v) for k, v in stored[f"{r:g}"].items()} for r in ratios}


def prepare_map(ctx: SearchContext, study: optuna.Study, *, progress: bool = False) -> SensitivityMap | None:
    """The map and the centre of a study that uses them (None otherwise), ``ctx.center`` set."""
    if not uses_map(ctx.cfg.search):
        return None
    smap = ensure_map(ctx, study, progress=progress)
    if ctx.cfg.search.center == "sensitivity":
        ctx.center = center_table(ctx, study, smap)
    return smap


def aim_targets(ctx: SearchContext, study: optuna.Study,
                plans: dict[tuple[str, float], tuple[dict, dict[str, float]]]) -> list[float]:
    """The distinct matched measures of the study's reference plans ((kind, ratio) -> (params, exact
    per-unit plan)), smallest first: what an aimed spread lands its odd trials under. Each reference's
    measure is stored in the study as it is first seen (an extended study's new references join), so
    every process aims alike and none measures a plan twice."""
    stored = dict(study.user_attrs.get(TARGETS_KEY) or {})
    missing = {f"{kind} {ratio:g}": plan for (kind, ratio), (_, plan) in plans.items()
               if plan and f"{kind} {ratio:g}" not in stored}
    if missing:
        stored.update({name: round(_matched(ctx, _pruned(ctx, plan, "l1")), 9)
                       for name, plan in missing.items()})
        study.set_user_attr(TARGETS_KEY, stored)
    return _distinct(stored)


def _distinct(stored: dict[str, float]) -> list[float]:
    return sorted({float(v) for v in stored.values()})


def aim_spread(ctx: SearchContext, study: optuna.Study) -> None:
    """Attach the level solver to the study's sampler when it is an :class:`AimedSpread` (the process
    that samples the study calls this once its context and centre are set)."""
    sampler = study.sampler
    targets = _distinct(study.user_attrs.get(TARGETS_KEY) or {})
    if not isinstance(sampler, AimedSpread) or not targets or ctx.cfg.search.granularity == "global":
        return
    order = _spread_order(len(targets))
    space = ctx.cfg.search

    def aim(number: int, shape: dict[str, float]) -> float | None:
        if set(shape) != set(ctx.keys):
            return None
        target = float(targets[order[(number // 2) % len(targets)]])
        size = lambda level: _measure_of(ctx, plan_ratios({LEVEL: level, **shape}, ctx.keys, space.granularity,  # noqa: E731
                                                          space.max_ratio, ctx.center, space.center_offset))
        return bisect_parameter(size, target, 0.0, space.max_ratio, steps=AIM_STEPS)  # max_ratio: can't get that small

    sampler.aim = aim


def _spread_order(n: int) -> list[int]:
    """0..n-1 in bit-reversed (van der Corput) order: consecutive trials aim at sizes far apart, and
    any ``n`` consecutive odd trials aim at every target once."""
    return sorted(range(n), key=van_der_corput)
