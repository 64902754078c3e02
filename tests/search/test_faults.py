"""Fault injection: kills at random moments and at trial creation, dead worker processes, torn and
damaged journals, a replaced starting model, records pointing outside the artifact store. After
each, the study must hold exactly its total, evaluate no plan twice, load every artifact, and its
report must agree with its front."""
from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time

import optuna
import pandas as pd
import pytest
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

from pruning import load_checkpoint
from search import pick, report, run
from search.config import ENV
from search.storage import TrialRecord
from tests.conftest import (FINISHED, PYTHON, REPO, TINY_LENET, base_args, check_finished, cli, folder_hash, has_study,
                            merged, slow_config, study_of, without_faults, write_config)



def check_study(out, total: int) -> optuna.Study:
    """The invariants every fault must leave intact."""
    study = study_of(out)
    check_finished(study, total)
    evaluated = [tuple(sorted(t.params.items())) for t in study.get_trials(states=FINISHED)
                 if not TrialRecord.read(t).reference]
    assert len(evaluated) == len(set(evaluated)), "a plan was evaluated twice"
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        rec = TrialRecord.read(t)
        if rec.checkpoint:
            assert load_checkpoint(out / "artifacts" / rec.checkpoint).meta.provenance["trial"] == t.number
    if (out / "pareto.csv").exists():
        assert sorted(pd.read_csv(out / "pareto.csv")["trial"]) == sorted(
            t.number for t in study.best_trials if TrialRecord.read(t).checkpoint)
    return study


def _cmd(config, out, *extra) -> list[str]:
    return [PYTHON, "-m", "search.run"] + base_args(config, out) + ["--quiet", *extra]


def _finished_count(out) -> int:
    if not has_study(out):
        return 0
    done = (*FINISHED, TrialState.FAIL)
    return len(study_of(out).get_trials(deepcopy=False, states=done))


def wait_on_progress(proc: subprocess.Popen, out, *, stall_s: float = 1800.0) -> int:
    """Wait for ``proc`` to exit as long as the study makes progress (a trial finishes, fails or is
    pruned at least every ``stall_s`` seconds, a generous bound for a loaded machine); a process that
    stops making progress is a hang. Returns its exit code."""
    seen, last = -1, time.monotonic()
    while proc.poll() is None:
        count = _finished_count(out)
        if count != seen:
            seen, last = count, time.monotonic()
        assert time.monotonic() - last < stall_s, f"no progress in the study for {stall_s:.0f} s: a hang"
        time.sleep(1.0)
    return proc.returncode


def _wait_for(predicate, timeout: float = 1800.0) -> bool:  # generous: a loaded machine is slow
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


@pytest.mark.slow
def test_kill_at_trial_creation_is_failed_and_the_study_completes(tmp_path, tiny_config, fashion_mnist):
    out = tmp_path / "out"
    assert run.main(base_args(tiny_config, out) + ["--quiet", "--trials", "2", "--no-report"]) == 0
    killed = subprocess.run(_cmd(tiny_config, out, "--trials", "4"), cwd=REPO, env={**without_faults(), ENV: "after_ask"},
                            capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    orphan = [t for t in study_of(out).get_trials(states=(TrialState.RUNNING,)) if not t.user_attrs.get("worker")]
    assert len(orphan) == 1  # a trial that exists, with no worker recorded
    resumed = subprocess.run(_cmd(tiny_config, out, "--trials", "4"), cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    study = check_study(out, 4)
    assert study.trials[orphan[0].number].state == TrialState.FAIL
    assert TrialRecord.read(study.trials[orphan[0].number]).fail_reason == "its worker died while creating it"


@pytest.mark.slow
def test_a_killed_worker_child_does_not_hang_its_parent(tmp_path, fashion_mnist):
    config, out = slow_config(tmp_path), tmp_path / "out"
    err_file = tmp_path / "stderr.txt"
    parent = subprocess.Popen(_cmd(config, out, "--trials", "6", "--workers", "2", "--no-early-stop"), cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=err_file.open("w"))
    victim = {}

    def child_running() -> bool:
        if not has_study(out):
            return False
        for t in study_of(out).get_trials(states=(TrialState.RUNNING,)):
            worker = t.user_attrs.get("worker") or ""
            # a trial whose plan is written: killed before its ratios are sampled, a trial has no plan
            # to run again (the sampler proposes another), and a loaded machine can land a kill there
            if worker and not worker.endswith(f":{parent.pid}") and "plan" in t.user_attrs:
                victim.update(pid=int(worker.rpartition(":")[2]), trial=t.number)
                return True
        return False

    try:
        assert _wait_for(child_running), "the child worker never ran a trial"
        import os
        os.kill(victim["pid"], signal.SIGKILL)
        code = wait_on_progress(parent, out)  # before the fix: waited forever on the zombie's trial
        assert code == 0, err_file.read_text()[-2000:]
    finally:
        if parent.poll() is None:
            parent.kill()
    study = check_study(out, 6)
    lost = study.trials[victim["trial"]]
    assert lost.state == TrialState.FAIL and "died" in TrialRecord.read(lost).fail_reason
    assert any(RetryFailedTrialCallback.retried_trial_number(t) == victim["trial"] for t in study.trials)  # run again


@pytest.mark.slow
def test_random_kills_of_a_run_lose_and_duplicate_nothing(tmp_path, fashion_mnist):
    config, out = slow_config(tmp_path, steps=120), tmp_path / "out"
    rng, total = random.Random(7), 7
    for _ in range(4):
        proc = subprocess.Popen(_cmd(config, out, "--trials", str(total)), cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 9.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    err_file = tmp_path / "stderr.txt"
    final = subprocess.Popen(_cmd(config, out, "--trials", str(total)), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=err_file.open("w"))
    assert wait_on_progress(final, out) == 0, err_file.read_text()[-2000:]
    check_study(out, total)


@pytest.fixture(scope="module")
def _small_study_made(tmp_path_factory, fashion_mnist):
    root = tmp_path_factory.mktemp("small")
    config = write_config(root / "tiny.yaml", TINY_LENET)
    assert run.main(base_args(config, root / "out") + ["--quiet", "--trials", "3"]) == 0
    return config, root / "out"


@pytest.fixture
def small_study(_small_study_made, tmp_path):
    """A finished 3-trial study of its own for each test (a copy of one made once per module: the
    tests damage it), in a folder the study was not made in, as a user's moved study would be."""
    config, made = _small_study_made
    out = tmp_path / "out"
    shutil.copytree(made, out)
    return config, out


@pytest.mark.slow
def test_a_torn_journal_tail_is_repaired_never_appended_to(small_study, capsys):
    config, out = small_study
    journal = out / "journal.log"
    good = journal.read_bytes()
    journal.write_bytes(good + b'{"op_code": 5, "worker_id": "x", "trial_id": 1, "us')  # power lost mid-write
    code, _, err = cli(run, base_args(config, out) + ["--quiet", "--trials", "4"], capsys)
    assert code == 0, err
    assert "journal's last line was torn" in err
    torn = list(out.glob("journal.log.torn-*"))
    assert len(torn) == 1 and torn[0].read_bytes().startswith(b'{"op_code": 5')
    assert journal.read_bytes().startswith(good)
    check_study(out, 4)


@pytest.mark.slow
def test_a_damaged_journal_line_is_refused_with_one_line(small_study, tmp_path, capsys):
    config, out = small_study
    journal = out / "journal.log"
    lines = journal.read_bytes().split(b"\n")
    lines[3] = b"\x00garbage\xff"
    journal.write_bytes(b"\n".join(lines))
    before = folder_hash(out)
    for module, extra in ((run, ["--trials", "4"]), (report, []),
                          (pick, ["--max-drop", "100", "--save", str(tmp_path / "p.pt")])):
        code, _, err = cli(module, base_args(config, out) + ["--quiet"] * (module is run) + extra, capsys)
        assert code == 2 and err.count("\n") == 1 and "line 4 is damaged" in err, err
    assert folder_hash(out) == before


@pytest.mark.slow
def test_a_missing_or_replaced_baseline_is_refused(small_study, tmp_path, capsys):
    config, out = small_study
    baseline = out / "baseline.pt"
    keep = baseline.read_bytes()
    baseline.unlink()
    code, _, err = cli(run, base_args(config, out) + ["--quiet", "--trials", "4"], capsys)
    assert code == 2 and "is missing; restore it" in err and not baseline.exists()  # never silently retrained
    other = tmp_path / "other"
    assert run.main(base_args(write_config(tmp_path / "o.yaml", merged(TINY_LENET, baseline={"lr": 0.04})), other)
                    + ["--quiet", "--trials", "1", "--no-report"]) == 0
    baseline.write_bytes((other / "baseline.pt").read_bytes())
    before = folder_hash(out)
    code, _, err = cli(run, base_args(config, out) + ["--quiet", "--trials", "4"], capsys)
    assert code == 2 and err.count("\n") == 1 and "is not the model study" in err
    assert folder_hash(out) == before
    baseline.write_bytes(keep)
    assert cli(run, base_args(config, out) + ["--quiet", "--trials", "4"], capsys)[0] == 0


@pytest.mark.slow
def test_an_artifact_id_outside_the_store_is_refused(small_study, capsys):
    config, out = small_study
    front = study_of(out).best_trials[0]
    artifact = TrialRecord.read(front).checkpoint
    journal = out / "journal.log"
    text = journal.read_text()
    assert f'"checkpoint":"{artifact}"' in text
    # a hand-edited (or hostile) journal: the record of a front trial points at ../../x.pt
    journal.write_text(text.replace(f'"checkpoint":"{artifact}"', '"checkpoint":"../../x.pt"'))
    before = folder_hash(out)
    code, _, err = cli(report, base_args(config, out), capsys)
    assert code == 2 and err.count("\n") == 1 and "not an artifact of its store" in err
    assert folder_hash(out) == before


@pytest.mark.slow
def test_a_swapped_trial_artifact_is_refused(small_study, tmp_path, capsys):
    """Another valid checkpoint (the unpruned baseline) in place of a trial's artifact was shipped as that trial."""
    config, out = small_study
    front = study_of(out).best_trials[0]
    rec = TrialRecord.read(front)
    assert rec.checkpoint_sha256 and len(rec.checkpoint_sha256) == 64
    (out / "artifacts" / rec.checkpoint).write_bytes((out / "baseline.pt").read_bytes())
    for module, extra in ((pick, ["--trial", str(front.number), "--save", str(tmp_path / "p.pt")]), (report, [])):
        code, _, err = cli(module, base_args(config, out) + extra, capsys)
        assert code == 2 and err.count("\n") == 1 and "is not the file the trial wrote" in err, err
    assert not (tmp_path / "p.pt").exists()


@pytest.mark.slow
def test_a_full_disk_stops_the_run_in_one_line_and_the_study_resumes(tmp_path, tiny_config, fashion_mnist, capsys):
    """A study on a 700 KB tmpfs: the baseline fits, the trials' artifacts do not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here (needs root)")
    out = disk / "out"
    try:
        code, _, err = cli(run, base_args(tiny_config, out) + ["--quiet", "--trials", "8", "--no-report"], capsys)
        assert code == 2 and err.count("\n") == 1 and "No space left on device" in err, err
        from search.storage._storage import check_journal
        check_journal(out / "journal.log", repair=False)  # the journal (if any yet) is still readable
        done = study_of(out).get_trials(states=FINISHED) if has_study(out) else []
        for t in done:  # nothing half-written is taken for a result
            rec = TrialRecord.read(t)
            if rec.checkpoint:
                load_checkpoint(out / "artifacts" / rec.checkpoint)
        assert subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], capture_output=True).returncode == 0
        code, _, err = cli(run, base_args(tiny_config, out) + ["--quiet", "--trials", "8", "--no-report"], capsys)
        assert code == 0, err
        check_study(out, 8)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.parametrize("sampled", [True, False])
def test_a_lost_reference_runs_again_as_a_marked_retry_sampled_or_not(tmp_path, sampled):
    """A reference whose worker died is failed and queued again with Optuna's retry record, whether
    the kill landed after its plan was sampled or between ask and sampling (a loaded machine lands
    it there: the retry then carries the enqueued parameters, as enqueue_trial would)."""
    from pruning import BaselineFigures
    from search.config import RunOptions, load_config
    from types import SimpleNamespace

    from search.study._broker import HOST, TrialBroker
    from search.study._study import seed_references
    from search.trial import OpenStudy, sample

    study = optuna.create_study(directions=["maximize", "minimize"])
    params, plan = {"a": 0.0, "b": 0.0, "level": 0.5}, {"a": 0.5, "b": 0.5}
    seed_references(study, ["a", "b"], {("uniform", 0.5): (params, plan)})
    trial = study.ask()
    if sampled:
        sample(trial, ["a", "b"], "unit", 0.9)
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid names no process
    trial.set_user_attr("worker", f"{HOST}:{dead.pid}")
    cfg = load_config("lenet5", path=write_config(tmp_path / "tiny.yaml", TINY_LENET), overrides={"budget": "smoke"})
    opened = OpenStudy(cfg=cfg, opts=RunOptions(progress=False), out=tmp_path, storage=study._storage, study=study)
    opened.ctx = SimpleNamespace(keys=["a", "b"])  # all the broker reads of a trial context
    opened.baseline = BaselineFigures(params=1, macs=1, size_mb=1.0, val_accuracy=0.9)
    broker = TrialBroker(opened)
    assert broker.fail_stale() == 1
    assert study.trials[trial.number].state == TrialState.FAIL
    retry = study.ask()
    assert RetryFailedTrialCallback.retried_trial_number(study.trials[retry.number]) == trial.number
    assert TrialRecord.read(retry).reference == "uniform" and TrialRecord.read(retry).plan == plan
    assert sample(retry, ["a", "b"], "unit", 0.9) == plan  # the same plan, not a new proposal
