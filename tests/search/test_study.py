"""LeNet5 end to end on a real Fashion-MNIST subset: study, front, report, pick, resume."""
from __future__ import annotations

import json
import signal
import subprocess
import time

import optuna
import pandas as pd
import pytest
import torch
import yaml
from optuna.trial import TrialState

from pruning import evaluate, load_checkpoint, load_pruned
from search import pick, run
from search._config import load_config
from search._context import load_data
from tests.conftest import REPO
from tests.search.conftest import PYTHON, TINY_LENET, base_args, cli, write_config


def _study_of(out, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "journal.log")))
    return optuna.load_study(study_name=name, storage=storage)


def _study(out) -> optuna.Study:
    return _study_of(out, "lenet5-fashion-mnist")


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, fashion_mnist):
    root = tmp_path_factory.mktemp("study")
    config = write_config(root / "tiny.yaml", TINY_LENET)
    out = root / "out"
    assert run.main(base_args(config, out) + ["--quiet", "--max-size-mb", "0.15"]) == 0
    return config, out, _study(out)


def test_study_completes_with_uniform_seeds(finished_study):
    _, _, study = finished_study
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 8
    uniform = sorted(t.user_attrs["uniform"] for t in finished if "uniform" in t.user_attrs)
    assert uniform == [0.2, 0.5, 0.8]
    assert study.metric_names == ["val_accuracy", "size_mb"]
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert {"plan", "params", "macs", "size_mb", "proxy_accuracy"} <= set(t.user_attrs)


def test_front_is_feasible_and_non_dominated(finished_study):
    _, _, study = finished_study
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    over = [t for t in complete if t.user_attrs["size_mb"] > 0.15]
    assert over, "the 0.2 uniform plan is over 0.15 MB, so some trial must be infeasible"
    assert all("val_accuracy" not in t.user_attrs for t in over)  # no fine-tune for them
    front = study.best_trials
    assert front
    for f in front:
        assert f.user_attrs["size_mb"] <= 0.15
        for t in complete:
            if t.user_attrs["size_mb"] <= 0.15 and t.number != f.number:
                dominates = (t.values[0] >= f.values[0] and t.values[1] <= f.values[1]
                             and (t.values[0] > f.values[0] or t.values[1] < f.values[1]))
                assert not dominates, f"trial {t.number} dominates front trial {f.number}"


def test_report_files_agree_with_the_study(finished_study):
    _, out, study = finished_study
    table = pd.read_csv(out / "pareto.csv")
    assert sorted(table["trial"]) == sorted(t.number for t in study.best_trials)
    for col in ("trial", "val_accuracy", "test_accuracy", "params", "macs", "size_mb", "pruned_pct",
                "accuracy_drop", "latency_ms", "checkpoint", "plan"):
        assert col in table.columns
    assert table["test_accuracy"].between(0, 1).all() and table["val_accuracy"].between(0, 1).all()
    row = table.iloc[0]
    trial = study.trials[int(row["trial"])]
    assert row["size_mb"] == pytest.approx(trial.user_attrs["size_mb"])
    assert json.loads(row["plan"]) == trial.user_attrs["plan"]
    report = (out / "report.md").read_text()
    assert "| Model | Original Size | Pruned Size | Pruned % | Accuracy Drop |" in report
    assert "Search vs. the uniform baseline" in report
    assert (out / "pareto.png").stat().st_size > 10_000
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["model"] == "lenet5" and resolved["max_size_mb"] == 0.15


def test_pick_returns_the_reported_test_accuracy(finished_study, tmp_path, capsys):
    config, out, study = finished_study
    best = max(study.best_trials, key=lambda t: t.values[0])
    saved = tmp_path / "picked.pt"
    code, stdout, _ = cli(pick, base_args(config, out) + ["--max-size-mb", str(best.user_attrs["size_mb"]),
                                                          "--save", str(saved)], capsys)
    assert code == 0
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["trial"] == best.number and result["val_accuracy"] == pytest.approx(best.values[0])
    data = load_data(load_config("lenet5", path=config, budget="smoke", data_dir=str(REPO / "data")))
    assert evaluate(load_pruned(saved), data, "test") == result["test_accuracy"]
    assert load_checkpoint(saved).metadata["trial"] == best.number


def test_pick_with_no_matching_point_names_the_nearest(finished_study, tmp_path, capsys):
    config, out, _ = finished_study
    code, _, err = cli(pick, base_args(config, out) + ["--max-size-mb", "0.0001", "--save", str(tmp_path / "x.pt")],
                       capsys)
    assert code == 2 and err.count("\n") == 1 and "the smallest: trial" in err
    assert not (tmp_path / "x.pt").exists()


def test_same_seed_samples_the_same_plans(tmp_path, tiny_config, fashion_mnist):
    plans = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert run.main(base_args(tiny_config, out) + ["--quiet", "--trials", "5", "--no-early-stop"]) == 0
        plans.append([t.params for t in sorted(_study(out).trials, key=lambda t: t.number)])
    assert plans[0] == plans[1] and len(plans[0]) == 5


def test_resume_after_kill_adds_only_missing_trials(tmp_path, fashion_mnist):
    slow = {**TINY_LENET, "budgets": {"smoke": {**TINY_LENET["budgets"]["smoke"], "finetune_steps": 400}}}
    config = write_config(tmp_path / "slow.yaml", slow)
    out = tmp_path / "out"
    cmd = [PYTHON, "-m", "search.run"] + base_args(config, out) + ["--quiet", "--trials", "5", "--no-early-stop"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # kill it while a trial runs, after at least two finished
            time.sleep(0.5)
            if _has_study(out):
                states = [t.state for t in _study(out).trials]
                if states.count(TrialState.COMPLETE) >= 2 and TrialState.RUNNING in states:
                    break
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {t.number: t.params for t in _study(out).trials if t.state == TrialState.COMPLETE}
    subprocess.run(cmd, cwd=REPO, check=True, timeout=600)
    study = _study(out)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 5
    assert all(study.trials[n].params == p for n, p in before.items())
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"] == "its worker process died"
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert sorted(t.user_attrs.get("uniform") for t in finished if "uniform" in t.user_attrs) == [0.2, 0.5, 0.8]


def _has_study(out) -> bool:
    if not (out / "journal.log").exists():
        return False
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "journal.log")))
    return any(s.study_name == "lenet5-fashion-mnist" for s in optuna.get_all_study_summaries(storage))


def test_pick_with_recovery_finetune(finished_study, tmp_path, capsys):
    config, out, study = finished_study
    saved = tmp_path / "recovered.pt"
    code, stdout, _ = cli(pick, base_args(config, out) + ["--max-drop", "100", "--finetune-epochs", "0.5",
                                                          "--save", str(saved)], capsys)
    assert code == 0
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["finetune_epochs"] == 0.5
    data = load_data(load_config("lenet5", path=config, budget="smoke", data_dir=str(REPO / "data")))
    assert evaluate(load_pruned(saved), data, "test") == result["test_accuracy"]


def test_a_diverging_trial_fails_and_the_study_goes_on(tmp_path, tiny_config, fashion_mnist, monkeypatch):
    import search._objective as objective
    from pruning import TrainingDiverged

    real = objective.finetune
    calls = []

    def flaky(model, data, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise TrainingDiverged("loss became nan at step 3 of finetune")
        return real(model, data, **kw)

    monkeypatch.setattr(objective, "finetune", flaky)
    out = tmp_path / "out"
    assert run.main(base_args(tiny_config, out) + ["--quiet", "--trials", "4", "--no-early-stop"]) == 0
    study = _study(out)
    (failed,) = study.get_trials(states=(TrialState.FAIL,))
    assert failed.user_attrs["fail_reason"] == "TrainingDiverged: loss became nan at step 3 of finetune"
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 4


def test_latency_objective(tmp_path, tiny_config, fashion_mnist):
    out = tmp_path / "out"
    assert run.main(base_args(tiny_config, out) + ["--quiet", "--trials", "2", "--objective", "latency"]) == 0
    study = _study(out)
    assert study.metric_names == ["val_accuracy", "latency_ms"]
    assert all(t.values[1] > 0 and t.values[1] == t.user_attrs["latency_ms"] for t in study.get_trials(
        states=(TrialState.COMPLETE,)))


def test_validation_split_does_not_follow_the_seed(fashion_mnist):
    a = load_data(load_config("lenet5", budget="smoke", seed=0, data_dir=str(REPO / "data")))
    b = load_data(load_config("lenet5", budget="smoke", seed=5, data_dir=str(REPO / "data")))
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
