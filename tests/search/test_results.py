"""Results that hold up: the recovery stage, a headline chosen on validation only, baselines with a
step floor that resume per epoch, and the under-trained warning."""
from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from pruning import BaselineFigures, evaluate, load_checkpoint
from search import run, train
from search.config import ENV
from search.storage import precision_of, recoveries
from search.results._report import headline
from tests.conftest import (PYTHON, REPO, TINY_LENET, base_args, cli, merged, smoke_budget, study_of, without_faults,
                            write_config)

REF = BaselineFigures(params=1000, macs=1000, size_mb=1.0, val_accuracy=0.90, test_accuracy=0.90)


def _table(rows):
    columns = ["trial", "size_mb", "val_accuracy", "test_accuracy", "recovered_val_accuracy",
               "recovered_test_accuracy"]
    return pd.DataFrame([dict(zip(columns, r)) for r in rows])


def test_the_headline_never_reads_the_test_split():
    # trial 1 is the smallest within 1 point on validation; the planted test split says trial 0 (smaller)
    # is excellent and trial 1 terrible: selection must not notice.
    planted = _table([(0, 0.1, 0.80, 0.95, None, None), (1, 0.2, 0.895, 0.10, None, None),
                      (2, 0.5, 0.90, 0.50, None, None)])
    assert headline(planted, REF, 1.0)["trial"] == 1
    honest = planted.assign(test_accuracy=planted["val_accuracy"])
    assert headline(honest, REF, 1.0)["trial"] == 1


def test_the_headline_uses_recovered_figures_when_there_are_any():
    table = _table([(0, 0.1, 0.85, 0.85, 0.895, 0.80), (1, 0.2, 0.895, 0.9, None, None), (2, 0.5, 0.9, 0.9, 0.9, 0.9)])
    assert headline(table, REF, 1.0)["trial"] == 0  # recovered into the drop; trial 1 was never recovered


def test_a_point_judged_on_the_holdout_is_chosen_by_its_drop_there():
    # trial 0 is within the bar on the search's val images but 1.6 pts down on the held-out ones; trial 1
    # the other way round: the holdout decides, for the headline and for pick --max-drop alike
    from search.pick import choose
    table = _table([(0, 0.1, 0.85, 0.85, 0.899, 0.88), (1, 0.2, 0.85, 0.85, 0.880, 0.89), (2, 0.5, 0.9, 0.9, 0.9, 0.9)])
    table["holdout_drop"] = [1.6, 0.4, 0.0]
    assert headline(table, REF, 1.0)["trial"] == 1
    assert choose(table, max_drop=1.0, baseline=REF)["trial"] == 1
    assert headline(table.drop(columns="holdout_drop"), REF, 1.0)["trial"] == 0  # judged on the search's own val
    table["holdout_drop"] = [None, 0.4, 0.0]  # a point not judged there is chosen by its val drop
    assert headline(table, REF, 1.0)["trial"] == 0 and choose(table, max_drop=1.0, baseline=REF)["trial"] == 0


def test_a_drop_exactly_on_the_bar_holds_it_for_the_headline_pick_and_recovery():
    # 20 of 2,000 held-out images is 1.0 pt, which floating point computes as 1.0000000000000009
    from search.pick import choose
    from search.study._recovery import _step
    drop = 100 * (0.9075 - 0.8975)
    assert drop > 1.0
    table = _table([(0, 0.1, 0.85, 0.85, 0.899, 0.88), (1, 0.2, 0.9, 0.9, 0.9, 0.9)])
    table["holdout_drop"] = [drop, 0.0]
    assert headline(table, REF, 1.0)["trial"] == 0
    assert choose(table, max_drop=1.0, baseline=REF)["trial"] == 0
    # recovery reads it as within the bar: the next step goes below it, not above
    assert _step([3.0, 2.0, 1.5], [0.0, 1.0, 2.0], {1: drop}, 1.0) == 0


def test_a_study_pruned_from_a_pruned_checkpoint_is_not_judged_on_a_holdout():
    # it holds its baseline's figures, not its model: a drop there would be from the wrong model
    from types import SimpleNamespace
    from search.study._recovery import Judge

    class Opened:
        start = SimpleNamespace(meta=SimpleNamespace(baseline=REF))  # a pruned checkpoint's: its baseline's figures

        @property
        def holdout(self):
            raise AssertionError("the holdout was loaded")
    judge = Judge(Opened())
    assert judge.data is None and judge(object()) == {}


@pytest.mark.slow
def test_a_study_recovered_before_its_budget_set_a_holdout_is_judged_there_without_retraining(searched, tmp_path,
                                                                                              fashion_mnist):
    import shutil
    from search import recover
    config, out = searched
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    assert recover.main(base_args(config, copy) + ["--quiet", "--points", "2"]) == 0
    before = recoveries(study_of(copy))
    assert len(before) == 2 and all(r.holdout_images == 0 for r in before.values())
    assert recover.main(base_args(config, copy) + ["--quiet", "--points", "2", "--holdout", "1500"]) == 0
    after = recoveries(study_of(copy))
    assert set(after) == set(before)
    for n, r in after.items():  # the same recovered checkpoint and figures, now judged on 1,500 other images
        old = before[n]
        assert (r.checkpoint, r.val_accuracy, r.test_accuracy, r.seconds) == (old.checkpoint, old.val_accuracy,
                                                                             old.test_accuracy, old.seconds)
        assert r.holdout_images == 1500 and 0 < r.holdout_val_accuracy <= 1
    # the baseline scored on the same 1,500 images: those the search's 600 leave, drawn as the data seam draws
    study = study_of(copy)
    images = fashion_mnist.holdout(val=TINY_LENET["budgets"]["smoke"]["val_subset"], n=1500)
    expected = evaluate(load_checkpoint(copy / "baseline.pt").model, images, "val",
                        precision=precision_of(study, "auto", images.device))
    assert all(r.holdout_baseline_val_accuracy == pytest.approx(expected) for r in after.values())
    assert recover.main(base_args(config, copy) + ["--quiet", "--points", "3", "--holdout", "1500"]) == 0
    new = {n: r for n, r in recoveries(study_of(copy)).items() if n not in after}
    assert len(new) == 1 and all(r.holdout_images == 1500 and r.holdout_baseline_val_accuracy == pytest.approx(expected)
                                 for r in new.values())  # a point recovered with a holdout is judged as it is recovered
    after.update(new)
    table = pd.read_csv(copy / "pareto.csv")
    rows = table[table["recovered_val_accuracy"].notna()].set_index("trial")
    for n, r in after.items():
        assert rows.loc[n, "holdout_drop"] == pytest.approx(r.holdout_drop)
    answer = json.loads((copy / "report.json").read_text())
    within = [n for n, r in after.items() if r.holdout_drop <= 1.0]  # the tiny config's headline_max_drop
    smallest = min(within, key=lambda n: rows.loc[n, "size_mb"]) if within else None
    assert (answer["headline"] or {}).get("trial") == smallest
    if smallest is not None:
        assert answer["headline"]["holdout_images"] == 1500
        assert "1,500 validation images the search never read" in (copy / "report.md").read_text()


@pytest.fixture(scope="module")
def searched(tmp_path_factory, fashion_mnist):
    root = tmp_path_factory.mktemp("results")
    config = write_config(root / "tiny.yaml", merged(TINY_LENET, report={"recover_points": 3}))
    out = root / "out"
    assert run.main(base_args(config, out) + ["--quiet", "--trials", "6", "--no-recover"]) == 0
    return config, out


def _recovered_uploads(out) -> dict[str, int]:
    import optuna
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "journal.log")))
    names: dict[str, int] = {}
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name("lenet5-fashion-mnist"))
    for key, value in attrs.items():
        if key.startswith("artifacts:") and value and "recovered-trial" in value:
            name = json.loads(value)["filename"]
            names[name] = names.get(name, 0) + 1
    return names


@pytest.mark.slow
def test_recovery_resumes_after_a_kill_and_never_recovers_twice(searched):
    config, out = searched
    cmd = [PYTHON, "-m", "search.recover"] + base_args(config, out) + ["--quiet"]
    killed = subprocess.run(cmd, cwd=REPO, env={**without_faults(), ENV: "between_recoveries"}, capture_output=True,
                            timeout=600)
    assert killed.returncode < 0
    assert len(recoveries(study_of(out))) == 1  # the first point was recorded before the kill
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)  # nothing left to do
    assert again.returncode == 0 and "after" not in again.stdout
    study = study_of(out)
    recovered = recoveries(study)
    assert len(recovered) == 3
    uploads = _recovered_uploads(out)
    assert sorted(uploads) == sorted(f"recovered-trial-{n}.pt" for n in recovered) and set(uploads.values()) == {1}
    table = pd.read_csv(out / "pareto.csv")
    assert table["recovered_val_accuracy"].notna().sum() == 3
    for _, row in table[table["recovered_checkpoint"].notna()].iterrows():
        ckpt = load_checkpoint(out / row["recovered_checkpoint"])
        assert ckpt.meta.provenance["recovered"] and ckpt.meta.metrics["val_accuracy"] == row["recovered_val_accuracy"]


def test_a_small_dataset_gets_the_step_floor(tmp_path, capsys):
    config = write_config(tmp_path / "small.yaml", merged(
        TINY_LENET, dataset="synthetic", baseline={"epochs": 1, "min_steps": 120, "batch_size": 64},
        budgets=smoke_budget(baseline_epochs=1, train_subset=300, baseline_min_steps=None)))
    code, stdout, err = cli(train, ["--model", "lenet5", "--config", str(config), "--budget", "smoke",
                                    "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["steps"] == 120  # one epoch of 300 images would be 4 steps of 64


@pytest.mark.slow
def test_an_interrupted_baseline_resumes_at_its_last_epoch(tmp_path):
    config = write_config(tmp_path / "b.yaml", merged(TINY_LENET, budgets=smoke_budget(baseline_epochs=3)))
    out, plain = tmp_path / "out", tmp_path / "plain"
    cmd = [PYTHON, "-m", "search.train"] + base_args(config, out)
    killed = subprocess.run(cmd, cwd=REPO, env={**without_faults(), ENV: "after_baseline_epoch"}, capture_output=True,
                            timeout=600)
    assert killed.returncode < 0 and (out / ".baseline.partial.pt").exists() and not (out / "baseline.pt").exists()
    resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "resuming the interrupted baseline at step 32" in resumed.stderr
    assert not (out / ".baseline.partial.pt").exists()
    straight = subprocess.run([PYTHON, "-m", "search.train"] + base_args(config, plain), cwd=REPO, timeout=600,
                              capture_output=True)
    assert straight.returncode == 0
    a, b = load_checkpoint(out / "baseline.pt").model, load_checkpoint(plain / "baseline.pt").model
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.slow
def test_an_under_trained_baseline_is_called_out(tmp_path, capsys, fashion_mnist):
    config = write_config(tmp_path / "weak.yaml", merged(
        TINY_LENET, baseline={"epochs": 0.4, "lr": 0.05}, finetune={"lr": 0.03},
        report={"undertrained_margin": 0.5, "recover_points": 1},
        budgets=smoke_budget(baseline_epochs=0.4, finetune_steps=150)))  # 13 baseline steps, 150 per candidate
    out = tmp_path / "out"
    code, _, err = cli(run, base_args(config, out) + ["--quiet", "--trials", "4", "--no-early-stop"], capsys)
    assert code == 0
    assert "warning: the baseline looks under-trained" in err
    assert "the baseline looks under-trained" in (out / "report.md").read_text()
    assert len(study_of(out).get_trials(states=(TrialState.COMPLETE,))) == 4
