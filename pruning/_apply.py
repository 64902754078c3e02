"""Applying a plan: real structural surgery through Torch-Pruning's dependency graph."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from pruning import _concat_mapping
from pruning._errors import PlanError
from pruning._units import DEFAULT_MAX_RATIO, Unit, build_graph, channels_to_keep, kept_layers, validate_plan

# name -> Torch-Pruning criterion; the CLI choices and validation derive from this table.
IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn_scale": tp.importance.BNScaleImportance,  # BatchNorm gamma; L1 for units without BatchNorm
    "taylor": tp.importance.GroupTaylorImportance,  # first order; needs calibration batches
    "random": tp.importance.RandomImportance,  # the control
}
History = list  # [[module name, is_out_channel_pruning, [channel indices]], ...]


@dataclass
class PruningRecord:
    """What a plan removed: the full surgery history (replayable on a fresh base model), the plan,
    and the channels of every unit before and after."""

    history: History
    plan: dict[str, float]
    channels_before: dict[str, int] = field(default_factory=dict)
    channels_after: dict[str, int] = field(default_factory=dict)


def _importance(name: str) -> tp.importance.Importance:
    if name not in IMPORTANCES:
        raise PlanError(f"unknown importance {name!r}; choose one of: {', '.join(IMPORTANCES)}")
    return IMPORTANCES[name]()


def _accumulate_gradients(model: nn.Module, batches: Iterable) -> None:
    """Gradients of the loss on a few training batches, for first-order Taylor importance."""
    model.zero_grad(set_to_none=True)
    model.eval()  # keep BatchNorm statistics as they are
    with torch.enable_grad():
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()


def _select(graph: tp.DependencyGraph, model: nn.Module, unit: Unit, n_remove: int,
            importance: tp.importance.Importance, group=None) -> list[int]:
    """Indices of the ``n_remove`` least important channels of ``unit`` (``group``: its full-width
    group when one is at hand; building one is the costly part on DenseNet's concatenations)."""
    if group is None:
        root = model.get_submodule(unit.root)
        pruner = graph.get_pruner_of_module(root)
        group = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(pruner.get_out_channels(root))))
    scores = importance(group)
    if scores is None:  # e.g. bn_scale on a unit without BatchNorm: fall back to L1 magnitude
        scores = tp.importance.GroupMagnitudeImportance(p=1)(group)
    return sorted(torch.argsort(scores.float().cpu(), stable=True)[:n_remove].tolist())


def apply_plan(model: nn.Module, plan: Mapping[str, float], *, example_input: torch.Tensor,
               importance: str = "l1", round_to: int | None = None, steps: int = 1,
               between_steps: Callable[[nn.Module, int], None] | None = None,
               calibration: Iterable | None = None, history: History = (),
               max_ratio: float = DEFAULT_MAX_RATIO, seed: int = 0,
               keep: tuple[str, ...] | list[str] = ()) -> tuple[nn.Module, PruningRecord]:
    """Prune a copy of ``model`` by ``plan`` (unit name -> fraction of its channels to remove).

    Args:
        example_input: a batch the model accepts, used to trace the dependency graph.
        importance: channel criterion, one of ``IMPORTANCES``; ``taylor`` needs ``calibration``.
        round_to: keep channel counts at multiples of this (tensor-core friendly).
        steps: reach the plan in this many equal steps (iterative pruning), calling
            ``between_steps(model, step)`` (e.g. a short fine-tune) after every step but the last.
        calibration: (x, y) training batches for ``taylor``.
        history: the surgery history of ``model`` itself when it is already pruned.
        seed: seed of ``random`` importance.
        keep: layers whose outputs are kept (the classifier always is).

    Returns:
        The pruned copy and a :class:`PruningRecord` whose history includes ``history``.
    """
    if steps < 1:
        raise PlanError(f"steps must be at least 1, got {steps}")
    if importance == "taylor" and calibration is None:
        raise PlanError("taylor importance needs calibration batches")
    scorer = _importance(importance)
    pruned = copy.deepcopy(model)
    graph, units, groups = build_graph(pruned, example_input, keep=keep)
    plan = validate_plan(units, plan, max_ratio=max_ratio)
    before = {u.name: u.channels for u in units}
    target = {u.name: channels_to_keep(u.channels, plan[u.name], round_to) for u in units}
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for step in range(1, steps + 1):
            _prune_step(graph, pruned, units, before, target, step, steps, scorer,
                        calibration if importance == "taylor" else None, groups if step == 1 else {})
            if step < steps and between_steps is not None:
                between_steps(pruned, step)
    finally:
        torch.random.set_rng_state(generator_state)
    pruned.zero_grad(set_to_none=True)
    new = [[name, bool(out), [int(i) for i in idxs]] for name, out, idxs in graph.pruning_history()]
    record = PruningRecord(history=[list(h) for h in history] + new, plan=plan,
                           channels_before=before, channels_after=dict(target))
    return pruned, record


def _prune_step(graph, model, units, before, target, step, steps, scorer, calibration, groups) -> None:
    if calibration is not None:
        _accumulate_gradients(model, calibration)
    selections = []
    with _concat_mapping.held(graph):  # every unit scored first (nothing pruned yet), so unit order does not matter
        for unit in units:
            root = model.get_submodule(unit.root)
            current = graph.get_pruner_of_module(root).get_out_channels(root)
            goal = before[unit.name] - round((before[unit.name] - target[unit.name]) * step / steps)
            if current > goal:
                selections.append((unit.name, root, _select(graph, model, unit, current - goal, scorer,
                                                            groups.get(unit.name))))
    for name, root, idxs in selections:
        pruner = graph.get_pruner_of_module(root)
        group = graph.get_pruning_group(root, pruner.prune_out_channels, idxs)
        if not graph.check_pruning_group(group):
            raise PlanError(f"pruning {len(idxs)} channels of unit {name} would empty a layer")
        group.prune()


def global_ranking_plans(model: nn.Module, ratios: Iterable[float], *, example_input: torch.Tensor,
                         max_ratio: float = DEFAULT_MAX_RATIO, round_to: int | None = None,
                         keep: tuple[str, ...] | list[str] = ()) -> dict[float, dict[str, float]]:
    """The classic global allocation: for each target ratio, the plan that Torch-Pruning's
    ``MetaPruner(global_pruning=True)`` chooses when one L1 ranking (normalized per group) spans all
    units and that fraction of all channels goes. ``model`` is not modified."""
    _, units, _ = build_graph(model, example_input, keep=keep)
    ignored = kept_layers(model, example_input, keep)
    unit_of = {model.get_submodule(u.root): u for u in units}
    plans = {}
    for ratio in ratios:
        with torch.inference_mode(False), torch.enable_grad():  # the pruner traces its own graph
            pruner = tp.pruner.MetaPruner(
                model, example_input, importance=tp.importance.GroupMagnitudeImportance(p=1), global_pruning=True,
                pruning_ratio=float(ratio), max_pruning_ratio=max_ratio, ignored_layers=ignored,
                round_to=round_to)
        plan = {u.name: 0.0 for u in units}
        for group in pruner.step(interactive=True):  # interactive: the groups are read, never pruned
            root = group.items[0]
            unit = unit_of.get(root.dep.layer)
            if unit is not None:
                plan[unit.name] = min(max_ratio, len(root.idxs) / unit.channels)
        plans[float(ratio)] = plan
    return plans


def prunable_safely(model: nn.Module, example_input: torch.Tensor, *, max_ratio: float = DEFAULT_MAX_RATIO,
                    round_to: int | None = None, keep: tuple[str, ...] = ()
                    ) -> tuple[list[Unit], tuple[str, ...], list[Unit]]:
    """(units, kept layers, units found unsafe): every unit pruned at once at ``max_ratio`` must
    still run on ``example_input``; where the model breaks, each unit is tried alone and those that
    break it are kept whole, and so are units coupled to a grouped (not depthwise) convolution,
    whose channels Torch-Pruning 1.6.1 removes across group boundaries (ResNeXt, RegNet)."""
    graph, units, _ = build_graph(model, example_input, keep=keep)
    grouped = [u for u in units if _touches_grouped_conv(graph, model, u)]

    def works(names: list[str]) -> bool:
        try:
            pruned, _ = apply_plan(model, {n: max_ratio for n in names}, example_input=example_input,
                                   round_to=round_to, max_ratio=max_ratio, keep=keep)
            with torch.no_grad():
                out = pruned.eval()(example_input)
            return isinstance(out, torch.Tensor) and bool(torch.isfinite(out).all())
        except Exception:  # any failure of the surgery or the pruned forward means: do not prune it
            return False
    rest = [u for u in units if u not in grouped]
    if not rest or works([u.name for u in rest]):
        bad = grouped
    else:
        bad = grouped + [u for u in rest if not works([u.name])]
    if not bad:
        return units, tuple(keep), []
    keep = tuple(keep) + tuple(u.root for u in bad)
    return build_graph(model, example_input, keep=keep)[1], keep, bad


def _touches_grouped_conv(graph: tp.DependencyGraph, model: nn.Module, unit: Unit) -> bool:
    root = model.get_submodule(unit.root)
    group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, [0])
    return any(isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels
               for m in (dep.layer for dep, _ in group.items))
