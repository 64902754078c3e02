"""Prunable units (coupled channel groups found by Torch-Pruning), plans and granularities."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Mapping

import torch
import torch_pruning as tp
from torch import nn

from pruning._errors import PlanError

GRANULARITIES = ("unit", "stage", "global")
DEFAULT_MAX_RATIO = 0.9


@dataclass(frozen=True)
class Unit:
    """A coupled channel group: pruning one channel removes it from every member at once.

    Attributes:
        name: stable readable name (the root layer, or ``<stage>.residual`` for a residual group).
        channels: output channels the group has now.
        members: names of the conv/linear layers whose outputs are coupled.
        stage: the key this unit shares with others at ``stage`` granularity.
    """

    name: str
    channels: int
    members: tuple[str, ...]
    stage: str

    @property
    def root(self) -> str:
        return self.members[0]


def classifier_of(model: nn.Module) -> nn.Module:
    """The final classifier (the last Linear): its outputs are never pruned."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise PlanError(f"{type(model).__name__} has no final nn.Linear classifier to keep")
    return linears[-1]


def build_graph(model: nn.Module, example_input: torch.Tensor) -> tuple[tp.DependencyGraph, list[Unit], dict]:
    """Trace ``model`` with Torch-Pruning and list its units in module order, with each unit's
    full-width group (unit name -> group; reusable for scoring until the model is first pruned).

    Tracing runs in eval mode so BatchNorm running statistics are not touched, with grad enabled
    because the graph is read from autograd.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    finally:
        model.train(was_training)
    order = {m: i for i, (_, m) in enumerate(model.named_modules())}
    units, groups = [], {}
    for group in graph.get_all_groups(ignored_layers=[classifier_of(model)],
                                      root_module_types=(nn.Conv2d, nn.Linear)):
        layers = sorted({dep.target.module for dep, _ in group
                         if graph.is_out_channel_pruning_fn(dep.handler)
                         and isinstance(dep.target.module, (nn.Conv2d, nn.Linear))}, key=order.__getitem__)
        members = tuple(graph._module2name[m] for m in layers)
        name = members[0] if len(members) == 1 else _common_prefix(members) + ".residual"
        channels = graph.get_out_channels(layers[0])
        units.append(Unit(name, channels, members, _stage_key(model, members[0], name)))
        if group[0].dep.target.module is layers[0]:
            groups[name] = group
    units.sort(key=lambda u: order[model.get_submodule(u.root)])
    return graph, units, groups


def prunable_units(model: nn.Module, example_input: torch.Tensor) -> list[Unit]:
    """The units of ``model`` that a plan may name (the final classifier's outputs are excluded)."""
    return build_graph(model, example_input)[1]


def _common_prefix(names: tuple[str, ...]) -> str:
    parts = os.path.commonprefix([n.split(".") for n in names])
    return ".".join(parts) if parts else "model"


_BLOCK = re.compile(r"^(?:features\.)?((?:layer|denseblock)\d+)\.(?:denselayer)?\d+\.(\w+)$")


def _stage_key(model: nn.Module, root: str, name: str) -> str:
    """One ratio per stage and role: ResNet ``layer2.conv1``, DenseNet ``denseblock3.conv2``,
    VGG ``features.block4`` (counted by max-pools), a Sequential classifier as one; others alone."""
    match = _BLOCK.match(root)
    if match and not name.endswith(".residual"):
        return f"{match.group(1)}.{match.group(2)}"
    parent_name, _, child = root.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential) and child.isdigit():
        if isinstance(parent[int(child)], nn.Linear):
            return parent_name
        pools = sum(isinstance(m, nn.MaxPool2d) for m in list(parent)[: int(child)])
        return f"{parent_name}.block{pools + 1}"
    return name.removeprefix("features.")


def plan_keys(units: list[Unit], granularity: str) -> list[str]:
    """The names of the numbers a search samples at ``granularity`` (``unit``, ``stage``, ``global``)."""
    if granularity == "unit":
        return [u.name for u in units]
    if granularity == "stage":
        return list(dict.fromkeys(u.stage for u in units))
    if granularity == "global":
        return ["ratio"]
    raise PlanError(f"unknown granularity {granularity!r}; choose one of: {', '.join(GRANULARITIES)}")


def expand_plan(units: list[Unit], granularity: str, values: Mapping[str, float]) -> dict[str, float]:
    """Turn the sampled numbers (keyed by :func:`plan_keys`) into a ratio for every unit."""
    keys = plan_keys(units, granularity)
    missing = [k for k in keys if k not in values]
    if missing:
        raise PlanError(f"no ratio for {', '.join(missing[:5])} at granularity {granularity!r}")
    if granularity == "unit":
        return {u.name: float(values[u.name]) for u in units}
    if granularity == "stage":
        return {u.name: float(values[u.stage]) for u in units}
    return {u.name: float(values["ratio"]) for u in units}


def validate_plan(units: list[Unit], plan: Mapping[str, float], *,
                  max_ratio: float = DEFAULT_MAX_RATIO) -> dict[str, float]:
    """Check a plan and fill the units it does not name with 0.0."""
    known = {u.name for u in units}
    unknown = [k for k in plan if k not in known]
    if unknown:
        sample = ", ".join(sorted(known)[:6])
        raise PlanError(f"plan names unknown unit {unknown[0]!r}; units are e.g. {sample} ({len(known)} in all)")
    for name, ratio in plan.items():
        if not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or not 0.0 <= ratio <= max_ratio:
            raise PlanError(f"ratio for {name!r} is {ratio!r}; it must be a number in [0, {max_ratio}]")
    return {u.name: float(plan.get(u.name, 0.0)) for u in units}


def channels_to_keep(channels: int, ratio: float, round_to: int | None = None) -> int:
    """Channels left after pruning ``ratio`` of ``channels``: at least 1, a multiple of ``round_to``
    (rounded to the nearest, at least ``round_to``) unless that would exceed ``channels``."""
    keep = max(1, channels - math.floor(ratio * channels + 1e-9))
    if round_to and round_to > 1:
        keep = max(round_to, int(round(keep / round_to)) * round_to)
        keep = min(keep, channels)
    return keep
