"""Bad input: one line on stderr, exit code 2, and the study already on disk left as it was."""
from __future__ import annotations

import hashlib
import subprocess

import pytest
import torch

from models import create_model
from search import pick, report, run, train
from tests.conftest import REPO
from tests.search.conftest import PYTHON, TINY_LENET, base_args, cli, write_config


def _fingerprint(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def study(tmp_path_factory, fashion_mnist):
    root = tmp_path_factory.mktemp("bad")
    config = write_config(root / "tiny.yaml", TINY_LENET)
    out = root / "out"
    assert run.main(base_args(config, out) + ["--quiet", "--trials", "3"]) == 0
    foreign = root / "foreign.pt"
    torch.save(create_model("lenet5", in_channels=1).state_dict(), foreign)
    broken = root / "broken.yaml"
    broken.write_text("search: {granularity: unit\nbudgets: [")
    unknown_key = write_config(root / "unknown.yaml", {**TINY_LENET, "search": {"granularty": "unit"}})
    zero_steps = write_config(root / "zero.yaml", {**TINY_LENET, "budgets": {
        "smoke": {**TINY_LENET["budgets"]["smoke"], "finetune_steps": 0}}})
    wrong_type = write_config(root / "type.yaml", {**TINY_LENET, "val_fraction": "a tenth"})
    scalar_ratios = write_config(root / "ratios.yaml", {**TINY_LENET, "search": {"uniform_ratios": 0.5}})
    return root, config, out, {"foreign": foreign, "broken": broken, "unknown": unknown_key, "zero": zero_steps,
                               "type": wrong_type, "ratios": scalar_ratios}


BAD_RUNS = {
    "unknown dataset": (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    "unknown objective": (["--objective", "speed"], "invalid choice: 'speed'"),
    "unknown sampler": (["--sampler", "cmaes"], "invalid choice: 'cmaes'"),
    "unknown granularity": (["--granularity", "layer"], "invalid choice: 'layer'"),
    "no trials": (["--trials", "0"], "--trials must be at least 1"),
    "negative size budget": (["--max-size-mb", "-1"], "--max-size-mb must be a positive number"),
    "accuracy in percent": (["--min-accuracy", "90"], "--min-accuracy is a fraction"),
    "unreachable storage": (["--storage", "sqlite:////nonexistent/dir/study.db"], "cannot open storage"),
    "refused postgres": (["--storage", "postgresql://nobody@127.0.0.1:9/none"], "connection failed"),
    "foreign --from": (["--from", "{foreign}"], "not a checkpoint of this project"),
    "missing --from": (["--from", "{root}/nothing.pt"], "no checkpoint at"),
    "broken config": (["--config", "{broken}"], "is not valid YAML"),
    "unknown config key": (["--config", "{unknown}"], "unknown key search.granularty"),
    "missing config": (["--config", "{root}/none.yaml"], "cannot read config"),
    "zero fine-tune steps": (["--config", "{zero}"], "budgets.smoke.finetune_steps must be a whole number >= 1"),
    "wrong value type": (["--config", "{type}"], "val_fraction must be a number"),
    "scalar uniform ratios": (["--config", "{ratios}"], "uniform_ratios"),
    "changed objective on resume": (["--objective", "macs"], "was run with objective='size'"),
    "changed granularity on resume": (["--granularity", "global"], "was run with granularity='unit'"),
    "bad ray resources": (["--backend", "ray", "--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_bad_run_is_one_line_and_leaves_the_study(study, case, capsys):
    root, config, out, files = study
    extra, message = BAD_RUNS[case]
    extra = [a.format(root=root, **files) for a in extra]
    before = _fingerprint(out)
    code, stdout, err = cli(run, base_args(config, out) + ["--quiet"] + extra, capsys)
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert _fingerprint(out) == before


def test_unknown_model_from_the_shell_has_no_traceback(study):
    root, config, out, _ = study
    result = subprocess.run([PYTHON, "-m", "search.run", "--model", "alexnet"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "invalid choice: 'alexnet'" in result.stderr
    assert "Traceback" not in result.stderr


def test_foreign_from_in_the_shell(study):
    root, config, out, files = study
    before = _fingerprint(out)
    result = subprocess.run([PYTHON, "-m", "search.run"] + base_args(config, out) + ["--from", str(files["foreign"])],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "not a checkpoint" in result.stderr
    assert _fingerprint(out) == before


def test_train_with_unknown_dataset(capsys):
    code, _, err = cli(train, ["--model", "lenet5", "--dataset", "svhn"], capsys)
    assert code == 2 and "invalid choice: 'svhn'" in err and err.count("\n") == 1


def test_report_and_pick_without_a_study(tmp_path, capsys):
    for module, extra in ((report, []), (pick, ["--max-drop", "1", "--save", str(tmp_path / "p.pt")])):
        code, _, err = cli(module, ["--model", "lenet5", "--out", str(tmp_path / "none")] + extra, capsys)
        assert code == 2 and "no study in" in err and err.count("\n") == 1
    assert not (tmp_path / "none").exists()


def test_resume_from_another_base_is_refused(study, tmp_path, capsys):
    root, config, out, _ = study
    before = _fingerprint(out)
    code, _, err = cli(run, base_args(config, out) + ["--quiet", "--from", str(out / "baseline.pt")], capsys)
    assert code == 2 and "prunes from 'baseline'" in err
    assert _fingerprint(out) == before


def test_train_refuses_to_replace_a_studys_baseline(study, capsys):
    root, config, out, _ = study
    before = _fingerprint(out)
    code, _, err = cli(train, base_args(config, out) + ["--epochs", "1"], capsys)
    assert code == 2 and "holds a study pruned from its baseline" in err
    assert _fingerprint(out) == before


def test_pick_refuses_to_overwrite_the_study(study, capsys):
    root, config, out, _ = study
    before = _fingerprint(out)
    code, _, err = cli(pick, base_args(config, out) + ["--max-drop", "100", "--save", str(out / "baseline.pt")], capsys)
    assert code == 2 and "would overwrite the study's own files" in err
    assert _fingerprint(out) == before


def test_endless_failures_stop_with_one_line(tmp_path, capsys, monkeypatch, fashion_mnist):
    import search._objective as objective
    from pruning import TrainingDiverged

    def always_diverges(model, data, **kw):
        raise TrainingDiverged("loss became nan at step 1 of finetune")

    monkeypatch.setattr(objective, "finetune", always_diverges)
    config = write_config(tmp_path / "tiny.yaml", {**TINY_LENET, "search": {"uniform_ratios": []}})
    code, _, err = cli(run, base_args(config, tmp_path / "out") + ["--quiet", "--trials", "20"], capsys)
    assert code == 2 and "5 trials in a row failed (last: TrainingDiverged" in err
