"""The whole pipeline once per large model, on a tiny Fashion-MNIST subset with 2 trials (CPU smoke)."""
from __future__ import annotations

import pandas as pd
import pytest
from optuna.trial import TrialState

from search import run
from tests.search.conftest import base_args, write_config
from tests.search.test_study import _study_of

TINY_LARGE = {
    "dataset": "fashion-mnist",
    "baseline": {"lr": 0.05},
    "finetune": {"lr": 0.01, "kd_weight": 0.5},
    "search": {"granularity": "stage", "round_to": 8, "uniform_ratios": [0.5]},
    "budgets": {"smoke": {"trials": 2, "finetune_steps": 1, "bn_batches": 1, "baseline_epochs": 1,
                          "batch_size": 16, "train_subset": 64, "val_subset": 32, "test_subset": 32}},
}


@pytest.mark.parametrize("model", ["vgg16", "resnet50", "densenet121"])
def test_smoke_study(model, tmp_path, fashion_mnist):
    config = write_config(tmp_path / f"{model}.yaml", TINY_LARGE)
    out = tmp_path / "out"
    assert run.main(base_args(config, out, model) + ["--quiet"]) == 0
    study = _study_of(out, f"{model}-fashion-mnist")
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 2
    table = pd.read_csv(out / "pareto.csv")
    assert len(table) >= 1 and (table["size_mb"] < 61).all()
    assert (out / "report.md").exists() and (out / "pareto.png").exists()
