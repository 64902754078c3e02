"""pruning/_concat_mapping.py: Torch-Pruning's concatenation mappings in linear time, the same ones."""
from __future__ import annotations

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


def test_it_replaces_the_librarys_only_for_the_pinned_version():
    pinned = re.search(r'"torch-pruning==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert pinned == _concat_mapping.LIBRARY_VERSION
    assert index_mapping.update_concat_index_mapping is _concat_mapping.update_concat_index_mapping
