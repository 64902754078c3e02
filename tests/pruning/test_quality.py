"""A property that shows the engine is not a toy: L1 importance beats random channel choice."""
from __future__ import annotations

import copy
import statistics

import pytest
import torch

from pruning import apply_plan, evaluate, finetune, prunable_units, recalibrate_bn

pytestmark = pytest.mark.slow  # whole studies or a trained model: the slow tier (docs/development.md)


def test_l1_beats_random_at_half_the_channels(trained_lenet, fashion_mnist):
    x = fashion_mnist.example_input(1)
    units = prunable_units(trained_lenet, x)
    plan = {u.name: 0.5 for u in units}
    scores = {"l1": [], "random": []}
    for seed in range(3):
        for importance in scores:
            pruned, _ = apply_plan(trained_lenet, plan, example_input=x, importance=importance, seed=seed)
            recalibrate_bn(pruned, [])
            torch.manual_seed(seed)
            finetune(pruned, fashion_mnist, steps=30, lr=0.01, seed=seed)
            scores[importance].append(evaluate(pruned, fashion_mnist, "val"))
    l1, rnd = statistics.mean(scores["l1"]), statistics.mean(scores["random"])
    assert l1 > rnd, f"l1 {scores['l1']} vs random {scores['random']}"
    assert evaluate(copy.deepcopy(trained_lenet), fashion_mnist, "val") > 0.85
