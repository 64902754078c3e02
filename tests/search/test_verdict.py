"""The report's first lines: searched plan or reference, the gain over the best reference, the near
miss; speed-ups inside the noise printed as such; a small study still searches."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from models import create_model
from pruning import BaselineFigures, plan_keys, prunable_units
from search.config import ConfigError, build_config
from search.storage import TrialRecord
from search.study._references import _keep, reference_limit, reference_plans
from tests.conftest import TINY_LENET, merged, smoke_budget
from search.results._render import format_speedup, speedup_text
from search.results._verdict import headline_gain, verdict

REF = BaselineFigures(params=1000, macs=1000, size_mb=1.0, val_accuracy=0.90, test_accuracy=0.90)


def _done(*points):
    """(number, reference or None, size MB, val accuracy) -> the (trial, record) pairs of a study."""
    return [(SimpleNamespace(number=n), TrialRecord(val_accuracy=acc, size_mb=size, pruned_pct=100 * (1 - size),
                                                    reference=kind and kind.split()[0],
                                                    reference_ratio=kind and float(kind.split()[1])))
            for n, kind, size, acc in points]


def _head(number: int, size: float) -> pd.Series:
    return pd.Series({"trial": number, "size_mb": size})


def test_a_reference_headline_says_so_and_points_at_the_near_miss():
    done = _done((0, "uniform 0.2", 0.6, 0.90), (1, "uniform 0.4", 0.35, 0.895), (2, None, 0.3, 0.88),
                 (3, None, 0.5, 0.899))
    lines = verdict(done, _head(1, 0.35), REF, 1.0)
    assert lines[0].startswith("The headline is the classic uniform 0.4 reference (trial 1)")
    assert "trial 2" in lines[-1] and "1.00 pts short of the bar" in lines[-1]


def test_a_searched_headline_states_its_gain_over_the_best_reference_no_larger():
    done = _done((0, "uniform 0.5", 0.3, 0.85), (1, "global 0.5", 0.28, 0.87), (2, "uniform 0.2", 0.7, 0.9),
                 (3, None, 0.3, 0.892))
    lines = verdict(done, _head(3, 0.3), REF, 1.0)
    assert lines[0] == "The headline is a searched plan (trial 3)."
    gain = headline_gain(done, _head(3, 0.3))
    assert gain["reference"] == "global 0.5" and abs(gain["gain_pts"] - 2.2) < 1e-9
    assert "+2.20 pts" in lines[1]


def test_a_study_of_references_only_says_the_sampler_never_ran():
    done = _done((0, "uniform 0.5", 0.3, 0.85), (1, "global 0.5", 0.28, 0.895))
    assert "never ran" in verdict(done, _head(1, 0.28), REF, 1.0)[-1]


def test_a_small_study_keeps_a_trial_for_the_sampler():
    assert [reference_limit(n) for n in (1, 2, 3, 4, 9)] == [1, 1, 1, 2, 4]
    plans = {(k, r): ({}, {}) for k in ("uniform", "global") for r in (0.2, 0.5)}
    assert list(_keep(plans, 1)) == [("uniform", 0.2)]
    assert list(_keep(plans, 3)) == [("uniform", 0.2), ("global", 0.2), ("uniform", 0.5)]


def test_a_speedup_whose_range_includes_one_prints_as_about_one():
    assert format_speedup(1.12, 0.97, 1.31) == "≈ 1x"
    assert format_speedup(1.16, 1.10, 1.21) == "1.16x (1.10-1.21)"
    row = pd.Series({"ort_b1_speedup": 0.9, "ort_b1_speedup_low": 0.8, "ort_b1_speedup_high": 0.95})
    assert speedup_text(row, "ort", 1) == "0.90x (0.80-0.95)"   # a slow-down outside the noise is shown
    assert speedup_text(pd.Series({"ort_b1_speedup": float("nan")}), "ort", 1) is None


def test_a_searched_headline_states_its_size_against_the_smallest_reference_at_the_bar():
    """Bar 0.89: uniform 0.2 (0.7 MB) holds it, uniform 0.5 (0.3 MB) does not; the headline is 0.3 MB."""
    done = _done((0, "uniform 0.5", 0.3, 0.85), (1, "uniform 0.2", 0.7, 0.9), (2, None, 0.3, 0.892))
    line = verdict(done, _head(2, 0.3), REF, 1.0)[2]
    assert "uniform 0.2, trial 1" in line and "2.33x" in line and "57.1 % smaller" in line
    done = _done((0, "uniform 0.5", 0.3, 0.85), (2, None, 0.3, 0.892))
    assert "search alone reached it" in verdict(done, _head(2, 0.3), REF, 1.0)[2]
    done = _done((0, "global 0.6", 0.25, 0.895), (2, None, 0.3, 0.892))
    assert "bought no size" in verdict(done, _head(2, 0.3), REF, 1.0)[2]


def test_a_budget_can_name_its_own_reference_ratios():
    """A short budget spends its trials on the search: its three ratios replace the search's eight,
    for this budget only; a ratio above max_ratio is refused naming the budget."""
    plain = merged({**TINY_LENET, "model": "lenet5"}, search={"references": ["uniform"]},
                   budgets={**smoke_budget(trials=30, reference_ratios=[0.3, 0.5, 0.7]),
                            "default": TINY_LENET["budgets"]["smoke"]})
    short, default = (build_config(plain, where="t", overrides={"budget": b}) for b in ("smoke", "default"))
    assert short.reference_ratios == (0.3, 0.5, 0.7) and default.reference_ratios == (0.2, 0.5, 0.8)
    model = create_model("lenet5", num_classes=10, in_channels=1)
    example = torch.zeros(1, 1, 32, 32)
    units = prunable_units(model, example)
    keys = plan_keys(units, "unit")
    assert sorted(reference_plans(short, units, keys, model, example, 30)) == [
        ("uniform", 0.3), ("uniform", 0.5), ("uniform", 0.7)]
    with pytest.raises(ConfigError, match="budgets.smoke.reference_ratios has 0.95"):
        build_config(merged(plain, budgets=smoke_budget(reference_ratios=[0.95])), where="t",
                     overrides={"budget": "smoke"})


def test_a_budget_can_choose_which_front_points_are_timed():
    """A short CPU budget times only the recovered points (VGG16's ``cpu`` spent 11 of its report's
    14 min timing 15 front points): the budget's choice wins over report.latency for that budget only,
    the estimate counts it, and a value outside all/recovered/none is refused naming the choices."""
    from search.study._estimate import report_seconds

    plain = merged({**TINY_LENET, "model": "lenet5"}, report={"latency": "all", "recover_points": 2},
                   budgets={**smoke_budget(latency="recovered"), "default": TINY_LENET["budgets"]["smoke"]})
    short, default = (build_config(plain, where="t", overrides={"budget": b}) for b in ("smoke", "default"))
    assert (short.latency, default.latency) == ("recovered", "all")
    data = SimpleNamespace(count={"test": 100}.__getitem__)  # the Dataset's counts
    opts = SimpleNamespace(write_report=True)
    tests_only = report_seconds(build_config(merged(plain, report={"latency": "none"}), where="t",
                                             overrides={"budget": "default"}), opts, data, 1e-3)
    timed_all, timed_recovered = (report_seconds(c, opts, data, 1e-3) for c in (default, short))
    assert tests_only < timed_recovered < timed_all
    with pytest.raises(ConfigError, match="budget.latency must be one of: all, recovered, none"):
        build_config(merged(plain, budgets=smoke_budget(latency="some")), where="t", overrides={"budget": "smoke"})


def test_every_composed_sampler_derives_from_its_wrapper_class():
    """One module holds a wrapper: each class of ``WRAPPERS`` is a ``--sampler`` choice of the CLI and
    the config, named ``<inner>-<name>``, built by the study around its inner sampler, and its own
    refusal is the config's error."""
    from search.config import COMPOSED_SAMPLERS, SAMPLER_CHOICES, SAMPLERS
    from search.config._samplers import WRAPPERS
    from search.run import get_args_parser
    from search.study._study import sampler_for

    cli = next(a for a in get_args_parser()._actions if a.dest == "search.sampler")
    assert tuple(cli.choices) == SAMPLER_CHOICES
    assert set(COMPOSED_SAMPLERS) == {f"{w.inner_name}-{w.name}" for w in WRAPPERS} and len(WRAPPERS) >= 2
    for name, wrapper in COMPOSED_SAMPLERS.items():
        plain = merged({**TINY_LENET, "model": "lenet5"}, search={"sampler": name},
                       budgets=smoke_budget(reference_ratios=[0.3, 0.5]))
        cfg = build_config(plain, where="t", overrides={"budget": "smoke"})
        sampler = sampler_for(cfg, 0)
        assert type(sampler) is wrapper and type(sampler.inner) is type(SAMPLERS[wrapper.inner_name](0))
        reason = wrapper.refusal(dataclasses.replace(cfg.search, granularity="global"))
        refused = merged(plain, search={"granularity": "global"})
        if reason is None:
            assert build_config(refused, where="t", overrides={"budget": "smoke"}).search.sampler == name
        else:
            with pytest.raises(ConfigError, match=name):
                build_config(refused, where="t", overrides={"budget": "smoke"})


def test_tpe_spread_gives_every_other_trial_a_level_over_the_reference_span():
    """``tpe-spread``: odd trials take their level from an even spread from 0 to the largest reference
    ratio (0.35, then 0.175 and 0.525, then the eighths), also once TPE models the study; even trials keep TPE's
    own level; an enqueued plan keeps its parameters; another process spreads the same levels."""
    import optuna

    from search.study._study import sampler_for
    from search.config import LevelSpread
    from tests.conftest import two_key_study

    plain = merged({**TINY_LENET, "model": "lenet5"}, search={"sampler": "tpe-spread"},
                   budgets=smoke_budget(reference_ratios=[0.3, 0.5, 0.7]))
    cfg = build_config(plain, where="t", overrides={"budget": "smoke"})
    sampler = sampler_for(cfg, 0)
    assert isinstance(sampler, LevelSpread) and (sampler.low, sampler.high) == (0.0, 0.7)
    assert isinstance(sampler.inner, optuna.samplers.TPESampler)  # composed: the wrapper around the tpe entry
    plain_tpe = build_config(merged(plain, search={"sampler": "tpe"}), where="t", overrides={"budget": "smoke"})
    assert not isinstance(sampler_for(plain_tpe, 0), LevelSpread)
    study = two_key_study(sampler, 16)  # TPE's own model from trial 10 on
    levels = [t.params["level"] for t in study.trials]
    assert levels[0] == 0.9
    assert [levels[n] for n in (1, 3, 5, 7, 9, 11, 13, 15)] == pytest.approx(
        [0.35, 0.175, 0.525, 0.0875, 0.4375, 0.2625, 0.6125, 0.04375])
    assert len({round(levels[n], 6) for n in range(2, 16, 2)}) == 7  # TPE's own, not spread
    assert [sampler_for(cfg, 7).level(n) for n in (1, 3)] == [sampler.level(1), sampler.level(3)]


def test_objectives_are_read_by_name_not_position():
    """The report's front order and the progress bar find accuracy and the size axis by the study's metric
    names and directions, so a study whose values are in another order reads the same."""
    import optuna

    from search.storage import axes
    for names, directions in ((["val_accuracy", "size_mb"], ["maximize", "minimize"]),
                              (["size_mb", "val_accuracy"], ["minimize", "maximize"]),
                              (["latency_ms", "val_accuracy", "size_mb"], ["minimize", "maximize", "minimize"])):
        study = optuna.create_study(directions=directions)
        study.set_metric_names(names)
        acc, size = axes(study)
        assert names[acc] == "val_accuracy" and names[size] == names[directions.index("minimize")]
