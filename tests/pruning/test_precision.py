"""The CPU precision policy (bf16 autocast + channels_last where it pays, fp32 elsewhere) and
speed-ups measured from interleaved repeats."""
from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from models import create_model
from pruning import TrainConfig, evaluate, recalibrate_bn, train
from pruning import _train
from pruning import SpeedUp, interleaved_speedup
from pruning import resolve_precision

CPU = torch.device("cpu")


def _wide() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))


def test_auto_is_bf16_only_for_large_models_on_a_bf16_cpu(monkeypatch):
    small, large = nn.Linear(4, 2), _wide()
    monkeypatch.setattr(_train, "BF16_MIN_PARAMS", 1000)
    monkeypatch.setattr(_train, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", large, CPU) == "bf16"
    assert resolve_precision("auto", small, CPU) == "fp32"   # LeNet5's case: bf16 does not pay
    monkeypatch.setattr(_train, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", large, CPU) == "fp32"   # no native bf16: emulated bf16 is slower
    assert resolve_precision("bf16", small, CPU) == "bf16" and resolve_precision("fp32", large, CPU) == "fp32"
    assert resolve_precision("auto", small, torch.device("cuda")) == "bf16"


def test_auto_keeps_lenet5_in_fp32():
    assert resolve_precision("auto", create_model("lenet5", num_classes=10, in_channels=1), CPU) == "fp32"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision 'fp16' is not one of"):
        resolve_precision("fp16", None, CPU)
    with pytest.raises(Exception, match="precision"):
        TrainConfig(precision="fp16")


def test_a_bf16_training_run_on_the_cpu_has_a_finite_falling_loss(synthetic):
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_channels=1)
    first = train(copy.deepcopy(model), synthetic, TrainConfig(steps=1, precision="bf16"), progress=False)
    result = train(model, synthetic, TrainConfig(steps=40, lr=0.05, precision="bf16"), progress=False)
    assert math.isfinite(result.final_loss) and result.final_loss < first.final_loss
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: weights stay fp32


def test_evaluation_under_bf16_autocast_matches_fp32(synthetic):
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_channels=1)
    train(model, synthetic, TrainConfig(steps=60, lr=0.05), progress=False)
    fp32 = evaluate(model, synthetic, "val", precision="fp32")
    bf16 = evaluate(model, synthetic, "val", precision="bf16")
    assert fp32 > 0.5 and abs(bf16 - fp32) <= 0.02


def test_adaptive_bn_under_bf16_estimates_the_fp32_statistics():
    torch.manual_seed(0)
    model = _wide()
    batches = [torch.randn(32, 1, 32, 32) * 2 + 1 for _ in range(4)]
    ref = copy.deepcopy(model)
    recalibrate_bn(ref, batches, precision="fp32")
    recalibrate_bn(model, batches, precision="bf16")
    bn, bn_ref = model[1], ref[1]
    assert torch.allclose(bn.running_mean, bn_ref.running_mean, rtol=0.05, atol=0.02)
    assert torch.allclose(bn.running_var, bn_ref.running_var, rtol=0.05, atol=0.02)


def test_an_interleaved_speedup_carries_its_spread():
    base = itertools.cycle([2.0, 2.2, 1.8, 2.4]).__next__   # ms of a noisy baseline
    cand = itertools.cycle([1.0, 1.1]).__next__
    up = interleaved_speedup(base, cand, repeats=5, runs=3)
    assert isinstance(up, SpeedUp) and up.repeats == 5
    assert up.low <= up.median <= up.high
    assert up.low >= 1.5 and not up.within_noise()


def test_the_same_model_is_within_noise():
    same = itertools.cycle([1.0, 1.3, 0.8, 1.1, 0.9]).__next__
    up = interleaved_speedup(same, same, repeats=7, runs=1)
    assert up.within_noise() and up.low < 1 < up.high


def test_evaluation_batches_of_the_cpu_default_score_every_image_as_one_batch_does(synthetic):
    """The CPU's small evaluation batch (the cache's size, not the split's) changes the speed only:
    the same verdict on every image, in the split's order, whatever the batch, a BN model in eval mode."""
    torch.manual_seed(0)
    model = _wide()
    train(model, synthetic, TrainConfig(steps=2, lr=0.01), progress=False)  # half-trained: some answers wrong
    n = synthetic.count("val")
    assert _train.eval_batch_size(CPU) < n  # the default splits this split into several batches
    whole = _train.correct(model, synthetic, "val", batch_size=n, precision="fp32")
    default = _train.correct(model, synthetic, "val", precision="fp32")
    odd = _train.correct(model, synthetic, "val", batch_size=7, precision="fp32")
    assert whole.shape == (n,) and 0 < int(whole.sum()) < n  # right and wrong answers to pair
    assert torch.equal(whole, default) and torch.equal(whole, odd)
    assert _train.eval_batch_size(torch.device("cuda")) >= n  # an accelerator keeps the large batch
