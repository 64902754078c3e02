"""Prunable units (coupled channel groups found by Torch-Pruning), plans and granularities."""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch_pruning as tp
from torch import nn

from models import STAGES_ATTR
from pruning import _concat_mapping
from pruning._errors import PlanError

_concat_mapping.install()  # every graph is traced here: a DenseNet's concatenations in linear time

GRANULARITIES = ("unit", "stage", "global")
DEFAULT_MAX_RATIO = 0.9


@dataclass(frozen=True)
class Unit:
    """A coupled channel group: pruning one channel removes it from every member at once.

    Attributes:
        name: stable readable name (the root layer, or ``<prefix>.residual`` for outputs that are added).
        channels: output channels the group has now.
        members: names of the conv/linear layers whose outputs are coupled (depthwise followers included).
        stage: the key this unit shares with others at ``stage`` granularity (``None``: no stages).
    """

    name: str
    channels: int
    members: tuple[str, ...]
    stage: str | None

    @property
    def root(self) -> str:
        return self.members[0]


def trace(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model``: the one place the graph is traced.

    The graph is read from autograd, so tracing runs with grad enabled (also inside ``no_grad`` or
    ``inference_mode``, the usual deployment contexts), and in eval mode so BatchNorm statistics are
    not touched.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input.clone(), verbose=False)
    finally:
        model.train(was_training)


def find_classifier(model: nn.Module, example_input: torch.Tensor) -> str:
    """The name of the final classifier: the last conv or linear layer to run whose outputs are the
    model's class outputs (found by running ``example_input``, so no registry or name is needed)."""
    ran: list[tuple[str, int]] = []
    hooks = [m.register_forward_hook(lambda mod, _i, out, n=n: ran.append((n, out.shape[1])))
             for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example_input[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise PlanError(f"the model returns {type(out).__name__} {tuple(getattr(out, 'shape', ()))}, not class "
                        f"logits of shape (batch, classes); wrap it so forward returns the logits")
    hits = [n for n, width in ran if width == out.shape[1]]
    if not hits:
        raise PlanError(f"no conv or linear layer produces the model's {out.shape[1]} outputs; name the layers "
                        f"to keep with --keep-layers")
    return hits[-1]


def kept_layers(model: nn.Module, example_input: torch.Tensor, keep: tuple[str, ...] | list[str]) -> list[nn.Module]:
    """The classifier plus the ``keep`` layers: their outputs are never pruned."""
    names = dict(model.named_modules())
    unknown = [k for k in keep if k not in names]
    if unknown:
        raise PlanError(f"--keep-layers names {unknown[0]!r}, which the model does not have; layers are e.g. "
                        f"{', '.join(n for n in list(names)[1:6])}")
    return [names[find_classifier(model, example_input)], *(names[k] for k in keep)]


def tree_stages(model: nn.Module) -> Callable[[str], str]:
    """Stages from the module tree: a unit's stage key is its root layer's name with the index of its
    block removed, where the block is the deepest ancestor that has siblings of its own class (a
    repeated, numbered block: ``layer1.0``, ``denseblock1.denselayer3``, ``blocks.1.0``) and is not a plain
    ``Sequential`` of single layers (conv-norm-act wrappers). ``layer1.0.conv1`` and ``layer1.1.conv1``
    share ``layer1.conv1``: one ratio per stage and role."""
    modules = dict(model.named_modules())

    def repeated(path: list[str], i: int) -> bool:
        parent, child = modules[".".join(path[:i])], modules[".".join(path[:i + 1])]
        if not path[i][-1:].isdigit():  # a numbered block (0, layer1, denselayer3), not features/classifier
            return False
        if isinstance(child, nn.Sequential) and all(not list(c.children()) for c in child.children()):
            return False
        return sum(type(c) is type(child) for c in parent.children()) > 1

    def stage_of(name: str) -> str:
        if name.endswith(".residual") or name not in modules:
            return name
        path = name.split(".")
        for i in range(len(path) - 2, -1, -1):  # the deepest ancestor first (never the layer itself)
            if repeated(path, i):
                return ".".join(path[:i] + path[i + 1:])
        return name
    return stage_of


def build_graph(model: nn.Module, example_input: torch.Tensor, *,
                keep: tuple[str, ...] | list[str] = ()) -> tuple[tp.DependencyGraph, list[Unit], dict]:
    """Trace ``model`` and list its units in module order, with each unit's full-width group
    (unit name -> group; reusable for scoring until the model is first pruned). The classifier and
    the ``keep`` layers keep their outputs. Stages come from the model's own ``pruning_stages``
    (registry models) or from the module tree."""
    ignored = kept_layers(model, example_input, keep)
    graph = trace(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    order = {m: i for i, m in enumerate(names)}
    found = []
    with _concat_mapping.held(graph):
        for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
            layers = sorted({dep.layer for dep, _ in group.items
                             if graph.is_out_channel_pruning_fn(dep.pruning_fn)
                             and isinstance(dep.layer, (nn.Conv2d, nn.Linear))}, key=order.__getitem__)
            if layers:
                found.append((group, layers))
    found.sort(key=lambda item: order[item[1][0]])
    stage_of = getattr(model, STAGES_ATTR) if hasattr(model, STAGES_ATTR) else tree_stages(model)
    unit_names = _names([[names[m] for m in layers if not _is_depthwise(m)] or [names[layers[0]]]
                         for _, layers in found])
    units, groups = [], {}
    for (group, layers), name in zip(found, unit_names):
        unit = Unit(name, graph.get_out_channels(layers[0]), tuple(names[m] for m in layers),
                    stage_of(name) if stage_of else None)
        units.append(unit)
        if group.items[0].dep.layer is layers[0]:
            groups[name] = group
    return graph, units, groups


def _is_depthwise(module: nn.Module) -> bool:
    """A depthwise conv follows its input's channels: it names nothing on its own."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _names(members: list[list[str]]) -> list[str]:
    """One name per unit: the root layer, or ``<common prefix>.residual`` for several layers whose
    outputs are added; ``<prefix>.<first>-<last>.residual`` where several residual groups share a prefix."""
    prefixes = [os.path.commonprefix([n.split(".") for n in m]) if len(m) > 1 else None for m in members]
    repeats = Counter(".".join(p) for p in prefixes if p is not None)
    names = []
    for m, prefix in zip(members, prefixes):
        if prefix is None:
            names.append(m[0])
            continue
        joined = ".".join(prefix) or "model"
        if repeats[".".join(prefix)] > 1:
            blocks = [n.split(".")[len(prefix)] for n in m]
            joined = f"{joined}.{blocks[0]}-{blocks[-1]}" if joined != "model" else f"{blocks[0]}-{blocks[-1]}"
        names.append(joined + ".residual")
    return names


def prunable_units(model: nn.Module, example_input: torch.Tensor, *,
                   keep: tuple[str, ...] | list[str] = ()) -> list[Unit]:
    """The units of ``model`` that a plan may name (the final classifier's and the ``keep`` layers'
    outputs are excluded)."""
    return build_graph(model, example_input, keep=keep)[1]


def plan_keys(units: list[Unit], granularity: str) -> list[str]:
    """The names of the numbers a search samples at ``granularity`` (``unit``, ``stage``, ``global``)."""
    if granularity == "unit":
        return [u.name for u in units]
    if granularity == "stage":
        if any(u.stage is None for u in units):
            raise PlanError("this model has no stage grouping (its registry entry says so); use granularity unit or global")
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
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
                or not 0.0 <= ratio <= max_ratio:
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
