"""LeNet5 end to end on a real Fashion-MNIST subset: study, front, report, pick, resume."""
from __future__ import annotations

import json
import os
import stat

import pandas as pd
import pytest
import torch
import yaml
from optuna.study import StudyDirection
from optuna.trial import TrialState

from pruning import evaluate, load_checkpoint, load_pruned
from search import pick, run
from search.config import RunOptions, load_config
from search.trial import load_data
from search.storage import TrialRecord
from tests.conftest import REPO, TINY_LENET, base_args, cli, folder_hash, merged, study_of, write_config


BUILT: list[int] = []  # the input sides the finished study's model was built and checked at


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, fashion_mnist):
    import search.trial._context as context

    root = tmp_path_factory.mktemp("study")
    config = write_config(root / "tiny.yaml", TINY_LENET)
    out = root / "out"
    old = os.umask(0o022)
    checked = context.check_input_size
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(context, "check_input_size", lambda model, channels, size, name:
                          BUILT.append(size) or checked(model, channels, size, name))
            assert run.main(base_args(config, out) + ["--quiet", "--max-size-mb", "0.15"]) == 0
    finally:
        os.umask(old)
    return config, out, study_of(out)


def test_a_new_study_builds_its_model_twice_before_the_trials(finished_study):
    """Once as the probe the preflight checks and the estimate times (copies of it), once as the
    baseline it trains; trials copy the baseline."""
    assert BUILT == [32, 32]


def _data(config):
    return load_data(load_config("lenet5", path=config, overrides={"budget": "smoke"}),
                     RunOptions(data_dir=str(REPO / "data")))


def test_study_completes_with_reference_plans(finished_study):
    _, _, study = finished_study
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 8
    refs = sorted(TrialRecord.read(t).reference_ratio for t in finished if TrialRecord.read(t).reference)
    assert refs == [0.2, 0.5, 0.8]
    assert study.metric_names == ["val_accuracy", "size_mb"]
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        rec = TrialRecord.read(t)
        assert rec.plan and rec.params and rec.macs and rec.size_mb and rec.proxy_accuracy is not None
        assert list(t.user_attrs)[:3] == ["val_accuracy", "size_mb", "pruned_pct"]  # key figures first


def test_front_is_feasible_and_non_dominated(finished_study):
    _, _, study = finished_study
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    over = [t for t in complete if TrialRecord.read(t).size_mb > 0.15]
    assert over, "the 0.2 reference plan is over 0.15 MB, so some trial must be infeasible"
    assert all(TrialRecord.read(t).val_accuracy is None and TrialRecord.read(t).skipped for t in over)
    front = study.best_trials
    assert front
    for f in front:
        assert TrialRecord.read(f).size_mb <= 0.15
        for t in complete:
            if TrialRecord.read(t).size_mb <= 0.15 and t.number != f.number:
                dominates = (t.values[0] >= f.values[0] and t.values[1] <= f.values[1]
                             and (t.values[0] > f.values[0] or t.values[1] < f.values[1]))
                assert not dominates, f"trial {t.number} dominates front trial {f.number}"


def test_report_files_agree_with_the_study(finished_study):
    _, out, study = finished_study
    table = pd.read_csv(out / "pareto.csv")
    assert sorted(table["trial"]) == sorted(t.number for t in study.best_trials)
    assert table["test_accuracy"].between(0, 1).all() and table["val_accuracy"].between(0, 1).all()
    row = table.iloc[0]
    rec = TrialRecord.read(study.trials[int(row["trial"])])
    assert row["size_mb"] == pytest.approx(rec.size_mb)
    assert json.loads(row["plan"]) == rec.plan
    assert (out / row["checkpoint"]).is_file()  # relative to the study folder
    report = (out / "report.md").read_text()
    assert "| Model | Original Size | Pruned Size | Pruned % | Accuracy Drop |" in report
    assert "Search vs. the classic allocations" in report and "Smoke run" in report
    assert (out / "pareto.png").stat().st_size > 10_000


def test_written_files_are_readable_by_others(finished_study):
    _, out, _ = finished_study
    for name in ("baseline.pt", "report.md", "pareto.csv", "pareto.png", "config.resolved.yaml"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


def test_resolved_config_reproduces_the_study(finished_study, tmp_path):
    config, out, study = finished_study
    resolved = out / "config.resolved.yaml"
    again = load_config(None, path=resolved)
    assert again == load_config("lenet5", path=config, overrides={"budget": "smoke", "constraints.max_size_mb": 0.15})
    assert yaml.safe_load(resolved.read_text())["constraints"]["max_size_mb"] == 0.15
    assert study.user_attrs["config"] == yaml.safe_load(resolved.read_text())


@pytest.mark.parametrize("change, field", [
    ({"finetune": {"lr": 0.02}}, "finetune.lr"),
    ({"finetune": {"kd_weight": 0.3}}, "finetune.kd_weight"),
    ({"budgets": {"smoke": {**TINY_LENET["budgets"]["smoke"], "finetune_steps": 30}}}, "budgets.smoke.finetune_steps"),
    ({"search": {"eta": 4}}, "search.eta"),
    ({"search": {"reference_ratios": [0.2, 0.5]}}, "search.reference_ratios"),
])
def test_resume_with_other_settings_is_refused_naming_the_field(finished_study, tmp_path, capsys, change, field):
    _, out, _ = finished_study
    before = (out / "config.resolved.yaml").read_bytes()
    other = write_config(tmp_path / "other.yaml", merged(TINY_LENET, **change))
    code, _, err = cli(run, base_args(other, out) + ["--quiet", "--max-size-mb", "0.15"], capsys)
    assert code == 2 and err.count("\n") == 1 and f"({field}: the study has" in err, err
    assert (out / "config.resolved.yaml").read_bytes() == before


def test_resume_with_the_resolved_config_is_accepted(finished_study, capsys):
    _, out, study = finished_study
    before = (out / "config.resolved.yaml").read_bytes()
    argv = ["--config", str(out / "config.resolved.yaml"), "--out", str(out), "--data-dir", str(REPO / "data"),
            "--quiet", "--no-report", "--no-recover"]
    code, _, err = cli(run, argv, capsys)  # --model comes from the resolved config
    assert code == 0, err
    assert (out / "config.resolved.yaml").read_bytes() == before  # written when the study was created, only


def test_pick_returns_the_reported_test_accuracy(finished_study, tmp_path, capsys):
    config, out, study = finished_study
    table = pd.read_csv(out / "pareto.csv")
    row = table.sort_values("size_mb").iloc[-1]
    saved = tmp_path / "picked.pt"
    code, stdout, _ = cli(pick, base_args(config, out) + ["--max-size-mb", str(row["size_mb"]), "--save", str(saved)],
                          capsys)
    assert code == 0
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["trial"] == int(row["trial"])
    assert evaluate(load_pruned(saved), _data(config), "test") == result["test_accuracy"]
    assert load_checkpoint(saved).meta.provenance["trial"] == int(row["trial"])
    assert stat.S_IMODE(saved.stat().st_mode) & 0o044


def test_pick_with_no_matching_point_names_the_nearest(finished_study, tmp_path, capsys):
    config, out, _ = finished_study
    code, _, err = cli(pick, base_args(config, out) + ["--max-size-mb", "0.0001", "--save", str(tmp_path / "x.pt")],
                       capsys)
    assert code == 2 and err.count("\n") == 1 and "the smallest: trial" in err
    assert not (tmp_path / "x.pt").exists()


def test_pick_with_recovery_finetune(finished_study, tmp_path, capsys):
    config, out, study = finished_study
    saved = tmp_path / "recovered.pt"
    code, stdout, _ = cli(pick, base_args(config, out) + ["--max-drop", "100", "--finetune-epochs", "0.5",
                                                          "--save", str(saved)], capsys)
    assert code == 0
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["finetune_epochs"] == 0.5
    assert evaluate(load_pruned(saved), _data(config), "test") == result["test_accuracy"]


@pytest.mark.slow
def test_same_seed_samples_the_same_plans(tmp_path, tiny_config, fashion_mnist):
    plans = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert run.main(base_args(tiny_config, out) + ["--quiet", "--trials", "5", "--no-early-stop",
                                                       "--no-report"]) == 0
        plans.append([t.params for t in sorted(study_of(out).trials, key=lambda t: t.number)])
    assert plans[0] == plans[1] and len(plans[0]) == 5


@pytest.mark.slow
def test_a_diverging_trial_fails_and_the_study_goes_on(tmp_path, tiny_config, fashion_mnist, monkeypatch):
    import search.trial._objective as objective
    from pruning import TrainingDiverged

    real = objective.train
    calls = []

    def flaky(model, data, cfg, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise TrainingDiverged("loss became nan at step 3 of finetune")
        return real(model, data, cfg, **kw)

    monkeypatch.setattr(objective, "train", flaky)
    out = tmp_path / "out"
    assert run.main(base_args(tiny_config, out) + ["--quiet", "--trials", "4", "--no-early-stop",
                                                   "--no-report"]) == 0
    study = study_of(out)
    (failed,) = study.get_trials(states=(TrialState.FAIL,))
    assert failed.user_attrs["fail_reason"] == "TrainingDiverged: loss became nan at step 3 of finetune"
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 4


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "onnxruntime-int8"])
def test_latency_objective(tmp_path, tiny_config, fashion_mnist, monkeypatch, backend):
    """Each trial's latency is measured on the backend named: onnxruntime-int8 times the INT8 file
    (QuantizeLinear / DequantizeLinear in the timed graph), onnxruntime the FP32 one, torch neither."""
    import onnx

    import search.trial._latency as latency_mod

    timed = []
    real = latency_mod.onnx_latency

    def recording(path, *args, **kwargs):
        timed.append({n.op_type for n in onnx.load(str(path)).graph.node})
        return real(path, *args, **kwargs)
    monkeypatch.setattr(latency_mod, "onnx_latency", recording)
    out = tmp_path / "out"
    assert run.main(base_args(tiny_config, out) + ["--quiet", "--trials", "2", "--objective", "latency",
                                                   "--latency-backend", backend, "--no-report"]) == 0
    study = study_of(out)
    assert study.metric_names == ["val_accuracy", "latency_ms"]
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert done and all(t.values[1] > 0 and t.values[1] == TrialRecord.read(t).latency_ms for t in done)
    if backend == "torch":
        assert not timed
    else:
        assert len(timed) >= len(done)
        assert all(("DequantizeLinear" in ops) == (backend == "onnxruntime-int8") for ops in timed)


def test_validation_split_does_not_follow_the_seed(fashion_mnist):
    opts = RunOptions(data_dir=str(REPO / "data"))
    a = load_data(load_config("lenet5", overrides={"budget": "smoke", "seed": 0}), opts)
    b = load_data(load_config("lenet5", overrides={"budget": "smoke", "seed": 5}), opts)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)


@pytest.mark.slow
def test_a_three_objective_study_runs_end_to_end(tmp_path, fashion_mnist, capsys):
    """--objectives accuracy,size,latency: three directions and metric names, three values per
    trial (the recorded size and latency), rungs and the front in three objectives, and the report's
    2-D projections of that front; a resume without the third objective is refused."""
    config = write_config(tmp_path / "c.yaml", merged(TINY_LENET, report={"recover_points": 1, "latency": "none"}))
    out = tmp_path / "out"
    code, _, err = cli(run, base_args(config, out) + ["--quiet", "--trials", "6", "--objectives",
                                                      "accuracy,size,latency"], capsys)
    assert code == 0, err
    study = study_of(out)
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE, StudyDirection.MINIMIZE]
    assert study.metric_names == ["val_accuracy", "size_mb", "latency_ms"]
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert done
    for t in done:
        rec = TrialRecord.read(t)
        assert len(t.values) == 3 and t.values[1] == rec.size_mb and t.values[2] == rec.latency_ms > 0
        assert list(rec.objective_values) == t.values[1:]
    report = (out / "report.md").read_text()
    assert "## The 3-objective front" in report and "val_accuracy (max), size_mb (min), latency_ms (min)" in report
    section = report.split("## The 3-objective front")[1]
    assert all(f"| {t.number} |" in section for t in study.best_trials)
    assert (out / "pareto-projections.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = folder_hash(out)
    code, _, err = cli(run, base_args(config, out) + ["--quiet", "--trials", "7"], capsys)
    assert code == 2 and "search.extra_objectives: the study has ['latency'], this run []" in err
    assert folder_hash(out) == before
