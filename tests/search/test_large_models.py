"""The whole pipeline once per registered model other than LeNet5, on a tiny Fashion-MNIST subset
with 2 trials (a CPU smoke run); new models are picked up from the registry."""
from __future__ import annotations

import pandas as pd
import pytest
from optuna.trial import TrialState

from models import list_models, model_spec
from search import run
from tests.conftest import base_args, study_of, write_config


def tiny_large(model: str) -> dict:
    return {
        "dataset": "fashion-mnist",
        "baseline": {"lr": 0.05},
        "finetune": {"lr": 0.01, "kd_weight": 0.5},
        "recovery": {"epochs": 0.05, "kd_weight": 0.5},
        "search": {"granularity": "stage" if model_spec(model).stage_of else "unit", "round_to": 8,
                   "references": ["uniform"], "reference_ratios": [0.5]},
        "report": {"recover_points": 1, "latency": "none"},  # timing is model-agnostic: LeNet5 tests it
        "budgets": {"smoke": {"trials": 2, "finetune_steps": 1, "bn_batches": 1, "baseline_epochs": 1,
                              "batch_size": 16, "train_subset": 64, "val_subset": 32, "test_subset": 32}},
    }


@pytest.mark.slow
@pytest.mark.parametrize("model", [m for m in list_models() if m != "lenet5"])
def test_smoke_study(model, tmp_path, fashion_mnist):
    config = write_config(tmp_path / f"{model}.yaml", tiny_large(model))
    out = tmp_path / "out"
    assert run.main(base_args(config, out, model) + ["--quiet"]) == 0
    study = study_of(out, f"{model}-fashion-mnist")
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 2
    table = pd.read_csv(out / "pareto.csv")
    assert len(table) >= 1 and (table["size_mb"] < 100).all()
    assert (out / "report.md").exists() and (out / "pareto.png").exists()
