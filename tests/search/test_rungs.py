"""Multi-objective successive halving: the ranking, the decisions, and trials that go on being the
very trials they would have been without rungs."""
from __future__ import annotations

import math

import pytest
import torch
from optuna.trial import TrialState

from pruning import load_checkpoint
from search import run
from search.config import LEVEL, build_config, fingerprint, first_difference
from search.storage import TrialRecord
from search.trial._rungs import crowding, decide, fronts, ranking, rung_steps
from tests.conftest import TINY_LENET, base_args, merged, smoke_budget, study_of, write_config


def test_rung_steps_are_fractions_of_the_fine_tune():
    assert rung_steps(250, (0.0, 1 / 9, 1 / 3)) == [0, 28, 83]
    assert rung_steps(250, (1 / 9, 1 / 3)) == [28, 83]  # no proxy rung unless asked for
    assert rung_steps(3, (0.0, 0.5, 0.99)) == [0, 2]  # never the last step, never twice


def test_fronts_and_crowding():
    points = [(0.9, 1.0), (0.8, 0.5), (0.7, 0.6), (0.95, 2.0), (0.6, 0.4)]
    assert fronts(points) == [[0, 1, 3, 4], [2]]
    dist = crowding(points, [0, 1, 3, 4])
    assert dist[3] == math.inf and dist[4] == math.inf and 0 < dist[1] < math.inf
    assert ranking(points)[-1] == 2  # the dominated point ranks last


def test_a_third_objective_is_ranked_too():
    # (accuracy max, size min, latency min): point 2 is worse than 0 in accuracy and size but faster
    points = [(0.9, 1.0, 5.0), (0.8, 1.2, 6.0), (0.85, 1.1, 2.0)]
    assert fronts(points) == [[0, 2], [1]]
    assert fronts([p[:2] for p in points]) == [[0], [2], [1]]  # on two objectives 0 dominates it
    dist = crowding(points, [0, 2])
    assert dist[0] == dist[2] == math.inf
    assert decide((0.85, 1.1, 2.0), [points[0], points[1], (0.7, 2.0, 9.0)], eta=2, min_trials=4).go_on


def test_decide_keeps_the_top_third_and_starts_only_with_enough_trials():
    others = [(0.9, 1.0), (0.8, 0.5)]
    assert decide((0.5, 0.9), others, eta=3, min_trials=4).go_on  # 3 reached the rung: too few to decide
    stop = decide((0.5, 0.9), others + [(0.85, 0.7)], eta=3, min_trials=4)
    assert not stop.go_on and "ranks 4 of 4" in stop.reason and "top 2 (1/3)" in stop.reason
    assert decide((0.99, 0.1), others + [(0.85, 0.7)], eta=3, min_trials=4).go_on  # dominates everyone


def _params_of(study) -> list:
    return [t.params for t in sorted(study.trials, key=lambda t: t.number)]


@pytest.mark.slow
def test_a_trial_that_goes_on_is_the_uninterrupted_trial(tmp_path, fashion_mnist):
    """Rungs that never stop anyone (min_trials above the trial count) change no weight."""
    cfgs = {"rungs": merged(TINY_LENET, search={"rung_min_trials": 1000, "rungs": [0.0, 0.2, 0.5]}),
            "plain": merged(TINY_LENET, search={"early_stop": False})}
    outs = {}
    for name, config in cfgs.items():
        outs[name] = tmp_path / name
        assert run.main(base_args(write_config(tmp_path / f"{name}.yaml", config), outs[name]) +
                        ["--quiet", "--trials", "5", "--no-report", "--no-recover"]) == 0
    a, b = study_of(outs["rungs"]), study_of(outs["plain"])
    assert _params_of(a) == _params_of(b)
    assert all(len(TrialRecord.read(t).rungs) == 3 for t in a.trials if TrialRecord.read(t).val_accuracy)
    for ta, tb in zip(a.trials, b.trials):
        ra, rb = TrialRecord.read(ta), TrialRecord.read(tb)
        assert ra.val_accuracy == rb.val_accuracy and ta.state == tb.state == TrialState.COMPLETE
        wa = load_checkpoint(outs["rungs"] / "artifacts" / ra.checkpoint).model.state_dict()
        wb = load_checkpoint(outs["plain"] / "artifacts" / rb.checkpoint).model.state_dict()
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_dominated_candidate_stops_at_the_first_rung_and_never_reaches_the_front(tmp_path, fashion_mnist):
    config = write_config(tmp_path / "c.yaml", merged(
        TINY_LENET, search={"references": ["uniform"], "reference_ratios": [0.2, 0.5], "rung_min_trials": 3}))
    out = tmp_path / "out"
    assert run.main(base_args(config, out) + ["--quiet", "--trials", "4", "--no-report", "--no-recover"]) == 0
    study = study_of(out)
    u02 = next(t for t in study.trials if TrialRecord.read(t).reference_ratio == 0.2)
    # two more searched plans reach rung 0 before the bad one: uniform-like shapes near the references
    study.enqueue_trial({LEVEL: 0.2, "conv1": 0.0, "conv2": 0.1, "fc1": 0.0, "fc2": 0.0})
    study.enqueue_trial({LEVEL: 0.5, "conv1": 0.0, "conv2": 0.0, "fc1": -0.1, "fc2": 0.0})
    assert run.main(base_args(config, out) + ["--quiet", "--trials", "6", "--no-report", "--no-recover"]) == 0
    study = study_of(out)
    # conv1 cut to 1 of 6 channels, the rest barely pruned: larger than the 0.2 plan and far less accurate
    study.enqueue_trial({LEVEL: 0.225, "conv1": 2.0, "conv2": -2.0, "fc1": -2.0, "fc2": -2.0})
    assert run.main(base_args(config, out) + ["--quiet", "--trials", "7", "--no-report", "--no-recover"]) == 0
    study = study_of(out)
    bad = study.trials[6]
    rec = TrialRecord.read(bad)
    assert bad.state == TrialState.PRUNED and rec.stop_rung == 0 and [r.rung for r in rec.rungs] == [0]
    assert rec.plan["conv1"] == 0.9 and rec.size_mb > TrialRecord.read(u02).size_mb
    assert rec.proxy_accuracy < TrialRecord.read(u02).proxy_accuracy  # dominated by the 0.2 plan
    assert "of 5 at this rung; the top 2 (1/3) go on" in rec.stop_reason and rec.val_accuracy is None
    assert bad.number not in {t.number for t in study.best_trials}


def test_reference_plans_are_never_stopped(tmp_path, fashion_mnist):
    greedy = merged(TINY_LENET, search={"references": ["uniform", "global"], "eta": 100, "rung_min_trials": 1})
    out = tmp_path / "out"
    assert run.main(base_args(write_config(tmp_path / "g.yaml", greedy), out) +
                    ["--quiet", "--trials", "12", "--no-report", "--no-recover"]) == 0
    study = study_of(out)
    refs = [t for t in study.trials if TrialRecord.read(t).reference]
    assert len(refs) == 6 and all(t.state == TrialState.COMPLETE for t in refs)
    assert all(TrialRecord.read(t).rungs for t in refs)  # recorded at every rung, never judged
    assert study.get_trials(states=(TrialState.PRUNED,)), "with eta 100 the sampled candidates are stopped"


@pytest.mark.slow
def test_two_workers_decide_from_the_shared_storage(tmp_path, fashion_mnist):
    import subprocess

    from tests.conftest import PYTHON, REPO, smoke_budget
    config = write_config(tmp_path / "w.yaml", merged(TINY_LENET, search={"rung_min_trials": 2},
                                                      budgets=smoke_budget(finetune_steps=200)))
    out = tmp_path / "out"
    result = subprocess.run([PYTHON, "-m", "search.run"] + base_args(config, out) +
                            ["--quiet", "--trials", "12", "--workers", "2", "--no-recover"], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    study = study_of(out)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 12 and not study.get_trials(states=(TrialState.RUNNING,))
    plans = [tuple(sorted(t.params.items())) for t in finished]
    assert len(plans) == len(set(plans))
    workers = {TrialRecord.read(t).worker for t in finished}
    assert len(workers) == 2
    crossed = 0
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        rec = TrialRecord.read(t)
        earlier = [s for s in study.trials if s.number != t.number and any(
            r.rung == rec.stop_rung for r in TrialRecord.read(s).rungs)]
        crossed += any(TrialRecord.read(s).worker != rec.worker for s in earlier)
    assert crossed, "no stop decision ranked trials of the other worker"


def test_rungs_judge_on_a_slice_of_validation_and_the_trial_on_all_of_it(tmp_path, fashion_mnist, monkeypatch):
    import search.trial._objective as objective
    seen: list[int] = []

    def counting(model, data, split, *args, **kwargs):
        seen.append(len(data.val_y))
        return evaluate(model, data, split, *args, **kwargs)

    evaluate = objective.evaluate
    monkeypatch.setattr(objective, "evaluate", counting)
    config = write_config(tmp_path / "s.yaml", merged(TINY_LENET, search={
        "references": [], "rungs": [0.0, 0.5], "rung_val_images": 100, "rung_min_trials": 1000}))
    out = tmp_path / "out"
    assert run.main(base_args(config, out) + ["--quiet", "--trials", "2", "--no-report", "--no-recover"]) == 0
    val = TINY_LENET["budgets"]["smoke"]["val_subset"]
    # per trial: the proxy (rung 0) and the final score on all of validation, the rung at 50% on 100 images
    assert sorted(seen) == [100, 100, val, val, val, val]


def test_a_budget_without_early_stop_fine_tunes_every_candidate(tmp_path, fashion_mnist):
    """``budgets.<b>.early_stop: false`` turns the rungs off for that budget only, even under a
    search that would stop nearly everyone; the search's own ``early_stop: false`` wins over a budget."""
    greedy = merged(TINY_LENET, search={"references": ["uniform"], "eta": 100, "rung_min_trials": 1},
                    budgets=smoke_budget(early_stop=False))

    def early_stop(plain: dict) -> bool:
        return build_config({**plain, "model": "lenet5"}, where="t", overrides={"budget": "smoke"}).early_stop
    assert not early_stop(greedy) and early_stop(TINY_LENET)
    assert not early_stop(merged(TINY_LENET, search={"early_stop": False}))
    current = fingerprint(build_config({**TINY_LENET, "model": "lenet5"}, where="t", overrides={"budget": "smoke"}))
    made_before = {k: v for k, v in current.items() if k != "budgets.smoke.early_stop"}
    assert first_difference(made_before, current) is None  # a study made before the key still resumes
    out = tmp_path / "out"
    assert run.main(base_args(write_config(tmp_path / "g.yaml", greedy), out) +
                    ["--quiet", "--trials", "6", "--no-report", "--no-recover"]) == 0
    study = study_of(out)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6
    assert not any(TrialRecord.read(t).rungs for t in study.trials)


def test_the_population_of_a_rung_reads_a_finished_trial_once_and_a_running_one_each_time(monkeypatch):
    import optuna

    from search.storage import Rung, record_value
    from search.trial import rung_population

    study = optuna.create_study(directions=["maximize", "minimize"])

    def trial(rungs, *, reference=None, finish=True, measures=(1.0,)):
        t = study.ask()
        attrs = {"rungs": [Rung(rung=i, steps=10 * i, val_accuracy=a) for i, a in enumerate(rungs)],
                 "objective_values": list(measures), "reference": reference}
        for k, v in attrs.items():
            t.set_user_attr(k, record_value(k, v))
        if finish:
            study.tell(t, [rungs[-1], 1.0])
        return t

    trial([0.5, 0.6], measures=(2.0,))
    trial([0.7], reference="uniform")         # references never compete for a rung's slots
    trial([0.4, 0.45], measures=())             # no measures recorded: not comparable
    running = trial([0.3], finish=False, measures=(3.0,))
    me = trial([0.9], finish=False)
    reads = []
    real = TrialRecord.read.__func__
    monkeypatch.setattr(TrialRecord, "read", classmethod(lambda cls, t: reads.append(t.number) or real(cls, t)))

    assert sorted(rung_population(me, 0)) == [(0.3, 3.0), (0.5, 2.0)]
    assert rung_population(me, 1) == [(0.6, 2.0)]
    assert reads.count(0) == 1 and reads.count(running.number) == 2  # the finished trial read once
    running.set_user_attr("rungs", record_value("rungs", [Rung(0, 0, 0.3), Rung(1, 10, 0.35)]))
    assert sorted(rung_population(me, 1)) == [(0.35, 3.0), (0.6, 2.0)]  # a running trial's new rung counts
    assert me.number not in reads
