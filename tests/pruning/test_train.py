from __future__ import annotations

import pytest
import torch

from models import create_model
from pruning import (TrainConfig, TrainingDiverged, apply_plan, evaluate, finetune, load_dataset, recalibrate_bn,
                     train, train_batches)


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", seed=0)


def test_lenet5_one_epoch_on_fashion_mnist(fashion_mnist):
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_channels=1)
    result = train(model, fashion_mnist, TrainConfig(epochs=1), progress=False)
    assert result.steps == 54000 // 128
    assert evaluate(model, fashion_mnist, "test") > 0.80


def test_finetune_with_distillation_learns(synthetic):
    torch.manual_seed(0)
    teacher = create_model("lenet5", num_classes=10, in_channels=1)
    train(teacher, synthetic, TrainConfig(epochs=3), progress=False)
    student = create_model("lenet5", num_classes=10, in_channels=1)
    before = evaluate(student, synthetic, "val")
    finetune(student, synthetic, steps=60, lr=0.05, teacher=teacher, kd_weight=0.5)
    assert evaluate(student, synthetic, "val") > max(0.5, before + 0.2)


def test_finetune_needs_steps_or_epochs(synthetic):
    with pytest.raises(ValueError, match="exactly one of steps and epochs"):
        finetune(create_model("lenet5", in_channels=1), synthetic)


def test_divergence_is_reported(synthetic):
    model = create_model("lenet5", num_classes=10, in_channels=1)
    with torch.no_grad():
        model.fc3.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        train(model, synthetic, TrainConfig(steps=50), progress=False)


def test_recalibrate_bn_restores_statistics(synthetic):
    torch.manual_seed(0)
    model = create_model("vgg16", num_classes=10, in_channels=1)
    train(model, synthetic.subset(train=256), TrainConfig(steps=4, batch_size=32), progress=False)
    model.eval()
    x = torch.randn(1, 1, 32, 32)
    pruned, _ = apply_plan(model, {"features.0": 0.5, "features.3": 0.5}, example_input=x)
    bn = pruned.features[1]
    bn.running_mean.fill_(50.0)  # statistics that no longer fit the network
    batches = list(train_batches(synthetic, 64, torch.Generator().manual_seed(0)))[:4]
    assert recalibrate_bn(pruned, batches) == 4
    assert bn.running_mean.abs().max() < 50 and bn.momentum == 0.1 and not pruned.training
    assert recalibrate_bn(create_model("lenet5", in_channels=1), batches) == 0


def test_lr_schedule_warms_up_then_decays():
    from pruning._train import _lr_factor
    cfg = TrainConfig(steps=100, warmup=0.2)
    factors = [_lr_factor(cfg, s, 100) for s in (0, 10, 20, 60, 100)]
    assert factors[0] == 0 and factors[1] == pytest.approx(0.5) and factors[2] == pytest.approx(1.0)
    assert factors[3] < 1 and factors[4] == pytest.approx(0.0, abs=1e-9)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="schedule 'linear'"):
        TrainConfig(schedule="linear")
