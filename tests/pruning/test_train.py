from __future__ import annotations

import copy

import pytest
import torch

from models import create_model
from pruning import (TrainConfig, TrainHooks, TrainingDiverged, apply_plan, evaluate, finetune,
                     recalibrate_bn, train, train_batches)


@pytest.mark.slow
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
    from pruning._train import lr_factor
    cfg = TrainConfig(steps=100, warmup=0.2)
    factors = [lr_factor(cfg, s, 100) for s in (0, 10, 20, 60, 100)]
    assert factors[0] == 0 and factors[1] == pytest.approx(0.5) and factors[2] == pytest.approx(1.0)
    assert factors[3] < 1 and factors[4] == pytest.approx(0.0, abs=1e-9)




def _weights(model):
    return [p.detach().clone() for p in model.state_dict().values()]


@pytest.mark.slow
def test_a_run_with_stops_that_goes_on_is_the_uninterrupted_run(synthetic):
    """Evaluating at rungs in the middle of a fine-tune changes nothing about the run that goes on."""
    cfg = TrainConfig(steps=10, batch_size=16, lr=0.05, seed=3)
    torch.manual_seed(0)
    plain = create_model("vgg16", num_classes=10, in_channels=1)  # BatchNorm and dropout: the hard case
    twin = copy.deepcopy(plain)
    train(plain, synthetic, cfg, progress=False)
    seen = []
    train(twin, synthetic, cfg, progress=False,
          hooks=TrainHooks(at_steps=(2, 6), on_step=lambda s: seen.append((s, evaluate(twin, synthetic, "val")))))
    assert [s for s, _ in seen] == [2, 6]
    assert all(torch.equal(a, b) for a, b in zip(_weights(plain), _weights(twin)))


def test_a_run_resumed_from_its_epoch_state_is_the_uninterrupted_run(synthetic):
    data = synthetic.subset(train=320)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, seed=1)
    torch.manual_seed(0)
    plain = create_model("lenet5", num_classes=10, in_channels=1)
    start = copy.deepcopy(plain)
    train(plain, data, cfg, progress=False)
    states = []
    partial = copy.deepcopy(start)

    class Interrupt(Exception):
        pass

    def stop_after_first_epoch(state):
        states.append((copy.deepcopy(partial.state_dict()), state))
        raise Interrupt

    with pytest.raises(Interrupt):
        train(partial, data, cfg, progress=False, hooks=TrainHooks(on_epoch=stop_after_first_epoch))
    weights, state = states[0]
    resumed = copy.deepcopy(start)
    resumed.load_state_dict(weights)
    train(resumed, data, cfg, progress=False, hooks=TrainHooks(resume=state))
    assert state.step == 10
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(_weights(plain), _weights(resumed)))


def test_min_steps_is_a_floor_for_small_datasets():
    cfg = TrainConfig(epochs=8, batch_size=128, min_steps=3000)
    assert cfg.total_steps(1500) == 3000  # 8 epochs of 1,500 images would be 88 steps
    assert cfg.total_steps(60000) == 8 * (60000 // 128)


@pytest.mark.parametrize("field, value", [("lr", -1.0), ("lr", float("nan")), ("batch_size", 0),
                                          ("epochs", float("inf")), ("momentum", 1.0), ("schedule", "linear")])
def test_bad_recipe_values_are_one_line_errors(field, value):
    with pytest.raises(ValueError, match=f"train.{field}") as info:
        TrainConfig(**{field: value})
    assert "\n" not in str(info.value)
