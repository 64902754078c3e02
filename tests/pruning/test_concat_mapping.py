"""pruning/_concat_mapping.py: Torch-Pruning's concatenation mappings in linear time, the same ones."""
from __future__ import annotations

import contextlib
import copy
import random
import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch_pruning.dependency import index_mapping

from pruning import _concat_mapping, apply_plan, prunable_units
from pruning._units import trace

REPO = Path(__file__).resolve().parents[2]


class Repeats(nn.Module):
    """One tensor concatenated twice, and a concatenation of a concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 5, 3, padding=1)
        self.c = nn.Conv2d(13, 6, 1)
        self.d = nn.Conv2d(19, 7, 1)
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        ab = torch.cat([a, b, a], 1)
        d = self.d(torch.cat([self.c(ab), ab], 1))
        return self.head(d.mean((2, 3)))


def _mappings(model: nn.Module, x: torch.Tensor, update) -> list:
    """Every dependency's concatenation mapping once ``update`` has derived them, in graph order."""
    graph = trace(copy.deepcopy(model), x)
    for node in graph.module2node.values():
        update(graph, node)
    return [(node.name, dep.target.name, None if dep.index_mapping[1] is None
             else (tuple(dep.index_mapping[1].offset), dep.index_mapping[1].reverse))
            for node in graph.module2node.values() for dep in node.dependencies]


@pytest.mark.parametrize("build", [Repeats, pytest.param(lambda: torchvision.models.densenet121(num_classes=10),
                                                          marks=pytest.mark.slow)],
                         ids=["repeated-inputs", "densenet121"])
def test_the_mappings_are_the_librarys(build):
    torch.manual_seed(0)
    model, x = build(), torch.zeros(1, 3, 32, 32)
    ours, theirs = (_mappings(model, x, f) for f in (_concat_mapping.update_concat_index_mapping,
                                                       _concat_mapping.LIBRARY))
    assert ours == theirs
    assert sum(m is not None for *_, m in ours) >= (10 if build is Repeats else 1000)  # the mappings were set


@pytest.mark.slow
def test_a_densenet_surgery_is_the_librarys(monkeypatch):
    """The same plan prunes the same channels (the mapping is re-derived after every group)."""
    torch.manual_seed(0)
    model, x = torchvision.models.densenet121(num_classes=10), torch.zeros(1, 3, 32, 32)
    rng = random.Random(0)
    plan = {u.name: rng.choice([0.0, 0.3, 0.6]) for u in prunable_units(model, x)}
    ours = apply_plan(model, plan, example_input=x)[1].history
    monkeypatch.setattr(index_mapping, "update_concat_index_mapping", _concat_mapping.LIBRARY)
    theirs = apply_plan(model, plan, example_input=x)[1].history
    assert ours == theirs and len(ours) > 50


def test_held_mappings_are_derived_once_and_prune_the_same_channels(monkeypatch):
    """Inside ``held`` the graph's mappings are derived once, not once per group; units, groups and a
    multi-step surgery (scored under ``held``, pruned outside it) are what re-deriving them every time gives."""
    torch.manual_seed(0)
    features = torchvision.models.densenet121(num_classes=10).features[:6]  # a dense block and a transition
    model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
    x, calls, library = torch.zeros(1, 3, 32, 32), [], _concat_mapping.LIBRARY_UPDATE
    monkeypatch.setattr(_concat_mapping, "LIBRARY_UPDATE", lambda graph: calls.append(graph) or library(graph))

    def run():
        calls.clear()
        units = prunable_units(model, x)  # one trace, then a group per unit
        listed = len(calls)
        plan = {u.name: 0.5 if i % 3 else 0.0 for i, u in enumerate(units)}
        history = apply_plan(model, plan, example_input=x, steps=2, importance="l2")[1].history
        return units, history, listed

    held_units, held_history, held_calls = run()
    monkeypatch.setattr(_concat_mapping, "held", lambda graph: contextlib.nullcontext())
    units, history, every_time = run()
    assert held_units == units and held_history == history and len(history) > 10
    assert held_calls == 2 and every_time > len(units)  # derived at the trace and on entering held: not per group


def test_it_replaces_the_librarys_only_for_the_pinned_version():
    pinned = re.search(r'"torch-pruning==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert pinned == _concat_mapping.LIBRARY_VERSION
    assert index_mapping.update_concat_index_mapping is _concat_mapping.update_concat_index_mapping
    assert index_mapping.update_index_mapping is _concat_mapping.update_index_mapping
