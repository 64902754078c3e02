"""One precision per study: resolved once on the unpruned baseline, recorded in the study, and used by
every figure it reports — the baseline's, the trials', the report's test accuracies and pick's — never
re-resolved on the smaller model in hand (a front point under the bf16 threshold used to be test-scored
in fp32 against a baseline scored in bf16)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from pruning import evaluate, load_checkpoint
from search import pick, run
from search.config import RunOptions, load_config
from search.storage import PRECISION_KEY
from search.trial import load_data
from tests.conftest import REPO, TINY_LENET, base_args, cli, merged, study_of, write_config

LENET5_PARAMS = 61_706

pytestmark = pytest.mark.slow  # whole studies or a trained model: the slow tier (docs/development.md)


@pytest.fixture
def bf16_for_the_baseline_only(monkeypatch):
    """bf16 pays for LeNet5's baseline (61,706 parameters) but not for its pruned points: exactly the
    case where a per-model rule scores the two in different arithmetic."""
    monkeypatch.setattr("pruning._train.BF16_MIN_PARAMS", 40_000)
    monkeypatch.setattr("pruning._train.cpu_has_bf16", lambda: True)


def test_every_figure_of_a_study_is_scored_in_its_one_precision(bf16_for_the_baseline_only, tmp_path, capsys,
                                                                 fashion_mnist):
    config = write_config(tmp_path / "tiny.yaml", merged(TINY_LENET, report={"headline_max_drop": 50.0}))
    out = tmp_path / "out"
    assert run.main(base_args(config, out) + ["--quiet", "--trials", "5"]) == 0
    study = study_of(out)
    assert study.user_attrs[PRECISION_KEY] == "bf16"
    data = load_data(load_config("lenet5", path=config, overrides={"budget": "smoke"}),
                     RunOptions(data_dir=str(REPO / "data")))
    baseline = load_checkpoint(out / "baseline.pt", expect_model="lenet5")
    assert baseline.meta.metrics["val_accuracy"] == evaluate(baseline.model, data, "val", precision="bf16")

    table = pd.read_csv(out / "pareto.csv")
    small = table[table["params"] < 40_000]
    assert len(small), "no front point below the bf16 threshold: the test would prove nothing"
    for _, row in small.iterrows():
        model = load_checkpoint(out / row["checkpoint"], expect_model="lenet5").model
        # the report's test figure is the study's precision exactly (the bound: 0, far under 0.2 pt)
        assert row["test_accuracy"] == pytest.approx(evaluate(model, data, "test", precision="bf16"), abs=1e-12)
        trial = study.trials[int(row["trial"])]
        assert trial.values[0] == pytest.approx(evaluate(model, data, "val", precision="bf16"), abs=1e-12)

    save = tmp_path / "picked.pt"
    code, stdout, err = cli(pick, ["--model", "lenet5", "--config", str(config), "--budget", "smoke", "--out", str(out),
                                   "--data-dir", str(REPO / "data"), "--max-drop", "50", "--save", str(save)], capsys)
    assert code == 0, err
    picked = load_checkpoint(save, expect_model="lenet5")
    line = json.loads(stdout.strip().splitlines()[-1])
    assert picked.meta.metrics["val_accuracy"] == evaluate(picked.model, data, "val", precision="bf16")
    assert line["params"] < LENET5_PARAMS


def test_a_study_made_before_it_recorded_a_precision_resolves_it_on_its_baseline(bf16_for_the_baseline_only):
    import optuna
    import torch

    from pruning import BaselineFigures, to_plain
    from search.storage import BASELINE_FIGURES_KEY, precision_of
    study = optuna.create_study()
    study.set_user_attr(BASELINE_FIGURES_KEY, to_plain(BaselineFigures(params=LENET5_PARAMS, macs=1, size_mb=0.25,
                                                                      val_accuracy=0.9, test_accuracy=0.9)))
    assert precision_of(study, "auto", torch.device("cpu")) == "bf16"
    assert precision_of(study, "fp32", torch.device("cpu")) == "fp32"
    study.set_user_attr(PRECISION_KEY, "fp32")  # recorded: it wins, whatever the machine resolves now
    assert precision_of(study, "auto", torch.device("cpu")) == "fp32"
