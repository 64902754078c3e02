"""The sensitivity map: its allocations on toy maps whose right answer is known, the reference and
the centre it gives a study, and a map that survives a kill and is never computed twice."""
from __future__ import annotations

import itertools
import os
import subprocess

import pytest
import torch

from search.config import ENV, ConfigError, build_config, fingerprint, first_difference, load_config
from search.trial._allocation import (SensitivityMap, additive_saving, bisect, costaware_plan, isotonic,
                                      threshold_plan)
from search.trial._space import center_at, params_for, ratios
from tests.conftest import PYTHON, REPO, TINY_LENET, base_args, merged, study_of, write_config

GRID = (0.25, 0.5, 0.75)


def _toy(accuracy: dict, saved: dict) -> SensitivityMap:
    return SensitivityMap(ratios=GRID, base_accuracy=0.9, accuracy=accuracy, saved=saved, measure="params",
                          base_measure=1000.0)


def test_the_monotone_fit_pools_what_noise_made_non_monotone():
    assert isotonic([0, 2, 1, 3]) == [0, 1.5, 1.5, 3]
    assert isotonic([3, 2, 1]) == [2, 2, 2]
    fitted = _toy({"a": (0.91, 0.88, 0.89)}, {"a": (1, 2, 3)}).drops("a")
    assert fitted == sorted(fitted) and fitted[0] == 0.0 and min(fitted) >= 0.0  # a gain is no negative drop


def test_the_threshold_allocation_prunes_the_key_that_loses_nothing():
    """Key ``free`` loses nothing until 0.75; key ``vital`` loses 5 points at 0.25: every threshold
    below 5 points leaves ``vital`` unpruned and prunes ``free``."""
    smap = _toy({"free": (0.9, 0.9, 0.9), "vital": (0.85, 0.6, 0.3)}, {"free": (1, 2, 3), "vital": (1, 2, 3)})
    plan = threshold_plan(smap, 1.0)
    assert plan["free"] == pytest.approx(0.75) and plan["vital"] < 0.25 * 1.0 / 5 + 1e-9
    assert threshold_plan(smap, 0.0)["free"] == 0.0  # the tie slope: no threshold jumps every flat key at once


def test_the_costaware_allocation_spends_the_drop_where_it_saves_most():
    """Equal drops, ``big`` saves ten times what ``small`` does: a budget ``big`` alone can meet goes
    to ``big``; the threshold allocation (blind to cost) prunes both alike."""
    drops = (0.89, 0.88, 0.87)
    smap = _toy({"big": drops, "small": drops}, {"big": (100, 200, 300), "small": (10, 20, 30)})
    plan = costaware_plan(smap, 200.0)
    assert plan["big"] == pytest.approx(0.5) and plan["small"] == 0.0
    assert additive_saving(smap, plan) == pytest.approx(200.0)
    even = threshold_plan(smap, 1.0)
    assert even["big"] == pytest.approx(even["small"])


def test_bisection_meets_a_target_measure_from_below():
    smap = _toy({"a": (0.9, 0.89, 0.8), "b": (0.88, 0.8, 0.7)}, {"a": (5, 10, 15), "b": (5, 10, 15)})
    size = lambda plan: 1000 - additive_saving(smap, plan)  # noqa: E731
    plan = bisect(lambda t: threshold_plan(smap, t), size, 985.0, 0.0, 50.0)
    assert 984.5 <= size(plan) <= 985.0


def test_the_centred_space_puts_shape_zero_on_the_map_plan():
    center = [(0.0, {"a": 0.0, "b": 0.0}), (0.5, {"a": 0.1, "b": 0.8})]
    assert center_at(center, 0.25) == pytest.approx({"a": 0.05, "b": 0.4})
    at_center = ratios({"level": 0.5, "a": 0.0, "b": 0.0}, ["a", "b"], "unit", 0.9, center)
    assert at_center == pytest.approx({"a": 0.1, "b": 0.8})
    moved = ratios({"level": 0.5, "a": -2.0, "b": 2.0}, ["a", "b"], "unit", 0.9, center)
    assert moved == pytest.approx({"a": 0.0, "b": 0.9})  # clipped to [0, max_ratio]
    back = params_for({"a": 0.2, "b": 0.7}, 0.5, "unit", center)
    assert ratios(back, ["a", "b"], "unit", 0.9, center) == pytest.approx({"a": 0.2, "b": 0.7})


def test_a_wider_offset_reaches_a_plan_the_default_cannot():
    """search.center_offset: a key the centre spares (ratio 0) reaches 0.6 with an offset of 0.6,
    and a reference placed with that offset is the plan it names; with the default 0.25 its
    parameters clip, and the plan they give prunes that key by 0.25 at most."""
    center = [(0.0, {"head": 0.0, "body": 0.0}), (0.5, {"head": 0.0, "body": 0.8})]
    wanted = {"head": 0.6, "body": 0.3}
    wide = params_for(wanted, 0.5, "unit", center, 0.6)
    assert ratios(wide, ["head", "body"], "unit", 0.9, center, 0.6) == pytest.approx(wanted)
    narrow = ratios(params_for(wanted, 0.5, "unit", center), ["head", "body"], "unit", 0.9, center)
    assert narrow["head"] == pytest.approx(0.25) and narrow["body"] == pytest.approx(0.55)
    with pytest.raises(ConfigError, match="center_offset"):
        load_config("lenet5", overrides={"search.center_offset": 0})
    # a study made before the setting resumes at the default, and refuses another offset (the space moved)
    made = lambda offset: fingerprint(build_config(  # noqa: E731
        merged(TINY_LENET, model="lenet5", search={"center_offset": offset}), where="t", overrides={"budget": "smoke"}))
    before = {k: v for k, v in made(0.25).items() if k != "search.center_offset"}
    assert first_difference(before, made(0.25)) is None
    assert first_difference(before, made(0.5)).startswith("search.center_offset")


MAP_CONFIG = merged(TINY_LENET, search={"references": ["uniform", "sensitivity"], "center": "sensitivity",
                                        "sensitivity_ratios": [0.3, 0.6], "reference_ratios": [0.2, 0.5]})


@pytest.mark.slow
def test_the_map_survives_a_kill_and_is_never_computed_twice(tmp_path, fashion_mnist, monkeypatch):
    """A run killed after the map's first key resumes the map at the second; the finished study holds
    the map, the centre and one sensitivity reference per target, and a further run computes nothing."""
    from search import run
    from search.trial import _sensitivity

    config, out = write_config(tmp_path / "map.yaml", MAP_CONFIG), tmp_path / "study"
    args = base_args(config, out) + ["--quiet", "--trials", "6"]
    killed = subprocess.run([PYTHON, "-m", "search.run", *args], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, ENV: "after_sensitivity_row"})
    assert killed.returncode == -9, killed.stderr
    first = study_of(out).user_attrs
    assert "sensitivity_row:conv1" in first and "sensitivity_map" not in first

    cells = []
    real = _sensitivity._cell
    monkeypatch.setattr(_sensitivity, "_cell", lambda *a, **k: cells.append(1) or real(*a, **k))
    assert run.main(args) == 0
    assert len(cells) == 3 * 2  # the three keys the kill left, two ratios each
    attrs = study_of(out).user_attrs
    smap = SensitivityMap.from_plain(attrs["sensitivity_map"])
    assert list(smap.accuracy) == ["conv1", "conv2", "fc1", "fc2"] and smap.ratios == (0.3, 0.6)
    assert smap.accuracy["conv1"] == tuple(first["sensitivity_row:conv1"]["accuracy"])
    assert len(attrs["sensitivity_center"]) > 2
    refs = [t.user_attrs for t in study_of(out).trials if t.user_attrs.get("reference") == "sensitivity"]
    assert refs and all(r["plan"] and r["val_accuracy"] is not None for r in refs)
    assert "## Sensitivity map" in (out / "report.md").read_text() and (out / "sensitivity.png").exists()

    cells.clear()
    assert run.main(args[:-1] + ["8"]) == 0  # extended: the map is read back, not computed
    assert cells == []


@pytest.mark.slow
def test_a_sensitivity_reference_is_no_larger_than_its_uniform_twin(tmp_path, fashion_mnist):
    """Bisected on the exact measure of the real surgery: each sensitivity reference's size is at most
    that of the uniform reference of its ratio, and within a few percent of it."""
    from search import run

    config, out = write_config(tmp_path / "map.yaml", MAP_CONFIG), tmp_path / "study"
    assert run.main(base_args(config, out) + ["--quiet", "--trials", "5", "--no-recover"]) == 0
    done = {(t.user_attrs["reference"], t.user_attrs["reference_ratio"]): t.user_attrs["size_mb"]
            for t in study_of(out).trials if t.user_attrs.get("reference")}
    for t in study_of(out).trials:  # a reference prunes its exact plan, not its parameters' approximation
        if t.user_attrs.get("reference") == "uniform":
            r = t.user_attrs["reference_ratio"]
            assert t.user_attrs["plan"] == {k: r for k in ("conv1", "conv2", "fc1", "fc2")}
    for (kind, r), size in done.items():
        if kind == "sensitivity":
            assert size <= done[("uniform", r)] * (1 + 1e-9)
            assert size >= 0.9 * done[("uniform", r)]


@pytest.mark.slow  # trains LeNet5 on the whole of Fashion-MNIST first
def test_a_map_of_a_real_model_has_a_row_per_key(trained_lenet, fashion_mnist):
    """The map's cells on a trained LeNet5: accuracy falls as a key loses more channels (fitted), and
    the saved size grows."""
    from search.config import RunOptions, build_config
    from search.trial import SearchContext, safe_units
    from pruning import Checkpoint, plan_keys, train_batches
    from search.trial._sensitivity import ensure_map

    cfg = build_config({**MAP_CONFIG, "model": "lenet5"}, where="t", overrides={"budget": "smoke"})
    data = fashion_mnist.subset(train=512, val=400, test=10)
    example = data.example_input(1)
    start = Checkpoint(model=trained_lenet, history=[], plan={}, meta=None, checksum="")
    units, keep = safe_units(trained_lenet, example, cfg, progress=False)
    calibration = list(itertools.islice(train_batches(data, 64, torch.Generator().manual_seed(0)), 2))
    ctx = SearchContext(cfg=cfg, opts=RunOptions(), out=None, data=data, start=start, baseline=None, units=units,
                        keys=plan_keys(units, "unit"), example=example, keep=keep, artifacts=None,
                        calibration=calibration)
    smap = ensure_map(ctx, _Attrs())
    for k in ctx.keys:
        assert smap.drops(k) == sorted(smap.drops(k)) and smap.savings(k)[-1] > 0
    assert max(smap.drops(k)[-1] for k in ctx.keys) > 1.0  # 60 % of some key's channels costs accuracy
    assert torch.isfinite(torch.tensor(smap.base_measure))


def _lenet():
    from models import create_model

    torch.manual_seed(0)
    return create_model("lenet5", num_classes=10, in_channels=1).eval()


def _context(cfg, model, data):
    """A trial context over ``model`` and ``data``, as a study builds it (no folder, no study)."""
    from pruning import Checkpoint, plan_keys, train_batches
    from search.config import RunOptions
    from search.trial import SearchContext, safe_units

    example = data.example_input(1)
    units, keep = safe_units(model, example, cfg, progress=False)
    return SearchContext(cfg=cfg, opts=RunOptions(), out=None, data=data, units=units, keep=keep,
                         start=Checkpoint(model=model, history=[], plan={}, meta=None, checksum=""), baseline=None,
                         keys=plan_keys(units, "unit"), example=example, artifacts=None,
                         calibration=list(itertools.islice(train_batches(data, 32, torch.Generator().manual_seed(0)), 2)))


class _Attrs:
    """The two calls ensure_map makes on a study."""

    def __init__(self, **attrs):
        self.user_attrs = dict(attrs)

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value


def test_ratios_that_round_to_the_same_widths_are_scored_once(fashion_mnist, monkeypatch):
    """A map row whose ratios round to the same channel counts (round_to 4 on LeNet5's 6-channel
    conv1: 0.1 keeps its 6 channels, 0.2, 0.3 and 0.4 keep 4) evaluates each distinct pruned model once
    and gives the repeated ratios the same cell."""
    from search.config import build_config
    from search.trial import _sensitivity

    model = _lenet()
    cfg = build_config({**MAP_CONFIG, "model": "lenet5", "search": {
        **MAP_CONFIG["search"], "round_to": 4, "sensitivity_ratios": [0.1, 0.2, 0.3, 0.4]}},
        where="t", overrides={"budget": "smoke"})
    data = fashion_mnist.subset(train=256, val=100, test=10)
    ctx = _context(cfg, model, data)
    row, seen, scored = [], {}, []
    real = _sensitivity.evaluate
    monkeypatch.setattr(_sensitivity, "evaluate", lambda *a, **k: scored.append(1) or real(*a, **k))
    for r in (0.1, 0.2, 0.3, 0.4):
        row.append(_sensitivity._cell(ctx, {k: (r if k == "conv1" else 0.0) for k in ctx.keys}, data, "fp32", seen))
    widths = [_sensitivity._pruned(ctx, _sensitivity._per_unit(ctx, {k: (r if k == "conv1" else 0.0) for k in ctx.keys}),
                                   "l1").conv1.out_channels for r in (0.1, 0.2, 0.3, 0.4)]
    assert len(scored) == len(set(widths)) < 4, widths
    for i, j in itertools.combinations(range(4), 2):
        assert row[i] == row[j] or widths[i] != widths[j]


def test_a_short_budget_gets_a_short_map():
    """The map's images follow its share of the trials' fine-tune work: the rung images on LeNet5's
    ``default``, the floor on ResNet50's 40-step ``cpu``; more share, more images; never more than the
    split or the rung images."""
    from search.trial import map_images
    from search.trial._sensitivity import MAP_MIN_IMAGES

    lenet = load_config("lenet5", overrides={"budget": "default"})
    assert map_images(lenet, 6000, 4) == lenet.search.rung_val_images == 2000
    assert map_images(lenet, 500, 4) == 500
    resnet = load_config("resnet50", overrides={"budget": "cpu"})
    assert map_images(resnet, 1000, 13) == MAP_MIN_IMAGES
    mnv2 = load_config("mobilenet_v2", overrides={"budget": "cpu"})
    counts = [map_images(load_config("mobilenet_v2", overrides={"budget": "cpu", "search.map_share": share}), 1000, 15)
              for share in (0.05, 0.1, 0.2, 1.0)]
    assert MAP_MIN_IMAGES <= counts[0] < counts[1] < counts[2] <= counts[3] == 1000
    assert counts[1] == map_images(mnv2, 1000, 15)


def test_the_map_scores_its_cells_on_the_images_it_began_with(fashion_mnist, monkeypatch):
    """A new map scores every cell on map_images' count and stores it with the base row; a map
    resumed from a stored base row keeps that row's count whatever the budget says now, and a row
    stored before the count was kept uses the rung images."""
    from search.config import build_config
    from search.trial import _sensitivity, map_images

    cfg = build_config({**MAP_CONFIG, "model": "lenet5"}, where="t", overrides={"budget": "smoke"})
    data = fashion_mnist.subset(train=256, val=500, test=10)
    ctx = _context(cfg, _lenet(), data)
    scored = []
    real = _sensitivity.evaluate
    monkeypatch.setattr(_sensitivity, "evaluate", lambda m, d, *a, **k: scored.append(d.count("val")) or real(m, d, *a, **k))
    study = _Attrs()
    _sensitivity.ensure_map(ctx, study)
    count = map_images(cfg, 500, len(ctx.keys))
    assert count < 500 and set(scored) == {count} and study.user_attrs["sensitivity_base"]["images"] == count

    for stored, expected in ((321, 321), (None, 500)):  # 500: the split, under the rung images (2000)
        base = {"accuracy": 0.5, "measure": 1.0, **({"images": stored} if stored else {})}
        scored.clear()
        _sensitivity.ensure_map(ctx, _Attrs(sensitivity_base=base))
        assert scored and set(scored) == {expected}


def test_an_aimed_spread_solves_odd_trials_levels_for_their_own_shape():
    """``tpe-aim``: once its aim is attached, an odd trial's level is what the aim solves for the shape
    the inner sampler proposed (every key present, the level not among them); even trials keep TPE's
    level; an enqueued plan keeps its parameters; before the aim is attached it spreads like
    ``tpe-spread``."""
    from search.config import build_config
    from search.study._study import sampler_for
    from search.config import AimedSpread, LevelSpread
    from tests.conftest import smoke_budget, two_key_study

    plain = merged({**TINY_LENET, "model": "lenet5"}, search={"sampler": "tpe-aim"},
                   budgets=smoke_budget(reference_ratios=[0.3, 0.5, 0.7]))
    sampler = sampler_for(build_config(plain, where="t", overrides={"budget": "smoke"}), 0)
    assert isinstance(sampler, AimedSpread) and sampler.level(3, {"a": 0.0, "b": 0.0}) == LevelSpread(
        None, 0.0, 0.7).level(3)
    seen = []
    sampler.aim = lambda number, shape: seen.append((number, dict(shape))) or 0.1 + 0.01 * number
    study = two_key_study(sampler, 14)  # TPE's own model from trial 10 on
    levels = {t.number: t.params["level"] for t in study.trials}
    assert levels[0] == 0.9
    assert [levels[n] for n in range(1, 14, 2)] == pytest.approx([0.1 + 0.01 * n for n in range(1, 14, 2)])
    assert all(levels[n] != pytest.approx(0.1 + 0.01 * n) for n in range(2, 14, 2))
    for number, shape in seen:  # the shape the trial was proposed, all keys, never the level
        assert set(shape) == {"a", "b"} and shape == {k: study.trials[number].params[k] for k in "ab"}


def test_the_aim_cycles_through_every_target():
    from search.trial._sensitivity import _spread_order

    for n in (1, 2, 3, 6, 12):
        order = _spread_order(n)
        assert sorted(order) == list(range(n))
        for start in range(2 * n):  # any n consecutive odd trials aim at every target once
            assert {order[(start + i) % n] for i in range(n)} == set(range(n))
    assert _spread_order(4) == [0, 2, 1, 3]  # far apart first


@pytest.mark.slow
def test_aimed_trials_land_no_larger_than_the_reference_they_aim_at(tmp_path, fashion_mnist):
    """A real ``tpe-aim`` study: the stored targets are the reference trials' sizes, and every odd
    searched trial is no larger than the reference size it aimed at, and close to it unless its shape
    cannot get that small or large."""
    from search import run
    from search.trial._sensitivity import TARGETS_KEY, _spread_order

    config = write_config(tmp_path / "aim.yaml", merged(MAP_CONFIG, search={"sampler": "tpe-aim"}))
    out = tmp_path / "study"
    assert run.main(base_args(config, out) + ["--quiet", "--trials", "10", "--no-recover"]) == 0
    study = study_of(out)
    refs = {f"{t.user_attrs['reference']} {t.user_attrs['reference_ratio']:g}": t.user_attrs["size_mb"]
            for t in study.trials if t.user_attrs.get("reference")}
    assert study.user_attrs[TARGETS_KEY] == pytest.approx(refs)  # each reference's exact size
    targets = sorted(set(study.user_attrs[TARGETS_KEY].values()))
    assert len(targets) >= 2
    order = _spread_order(len(targets))
    aimed = [t for t in study.trials if not t.user_attrs.get("reference") and t.number % 2 == 1]
    assert aimed
    for t in aimed:
        target = targets[order[(t.number // 2) % len(targets)]]
        assert t.user_attrs["size_mb"] <= target * (1 + 1e-9)
        assert t.user_attrs["size_mb"] >= 0.8 * target or t.params["level"] in (0.0, 0.9)


def test_an_extended_study_aims_at_its_new_references_too(monkeypatch):
    """The targets are stored per reference: a later run with more references (an extended study)
    measures only the new ones and aims at all of them."""
    from search.trial import _sensitivity

    class Study:
        user_attrs: dict = {}

        def set_user_attr(self, key, value):
            self.user_attrs = {**self.user_attrs, key: value}

    measured = []
    monkeypatch.setattr(_sensitivity, "_pruned", lambda ctx, plan, importance: plan)
    monkeypatch.setattr(_sensitivity, "_matched", lambda ctx, plan: measured.append(plan) or 1.0 - sum(plan.values()))
    study = Study()
    first = {("uniform", 0.5): ({}, {"a": 0.5, "b": 0.5})}
    assert _sensitivity.aim_targets(None, study, first) == [0.0]
    more = {**first, ("uniform", 0.3): ({}, {"a": 0.3, "b": 0.3}), ("global", 0.3): ({}, {})}  # no plan: no target
    assert _sensitivity.aim_targets(None, study, more) == pytest.approx([0.0, 0.4])
    assert measured == [{"a": 0.5, "b": 0.5}, {"a": 0.3, "b": 0.3}]  # each once


@pytest.mark.parametrize("change", [{"granularity": "global"}, {"references": []}])
def test_tpe_aim_is_refused_where_it_cannot_aim(change):
    from search.config import ConfigError, build_config
    from tests.conftest import smoke_budget

    plain = merged({**TINY_LENET, "model": "lenet5"}, search={"sampler": "tpe-aim", **change}, budgets=smoke_budget())
    with pytest.raises(ConfigError, match="tpe-aim .* needs references and unit or stage granularity"):
        build_config(plain, where="t", overrides={"budget": "smoke"})


def test_the_estimate_counts_the_maps_keys_at_the_studys_granularity():
    """MobileNetV2 at ``stage`` granularity: the estimate's map has the plan keys a study's context
    gets (15 stages, not its 52 conv layers), every key at ``unit``, and none without the map."""
    from types import SimpleNamespace

    from models import create_model
    from pruning import plan_keys, prunable_units
    from search.config import load_config
    from search.study._estimate import graph_probe

    model = create_model("mobilenet_v2", num_classes=10, in_channels=3)
    data = SimpleNamespace(example_input=lambda n: torch.randn(n, 3, 32, 32))
    units = prunable_units(model, data.example_input(1))
    for granularity in ("stage", "unit"):
        cfg = load_config("mobilenet_v2", overrides={"budget": "cpu", "search.granularity": granularity})
        assert graph_probe(cfg, model, data)[0] == len(plan_keys(units, granularity))
    assert len(plan_keys(units, "stage")) < len(units)
    plain = load_config("mobilenet_v2", overrides={"budget": "cpu", "search.center": "uniform",
                                                   "search.references": ["uniform", "global"]})
    keys, surgery_s = graph_probe(plain, model, data)
    assert keys == 0
    assert surgery_s > 0  # a study without a map still pays its surgeries


def test_the_estimate_charges_one_surgery_per_map_cell_trial_and_front_point(monkeypatch, fashion_mnist):
    """A surgery is most of a map cell on a small split (DenseNet121 at 64x64: 0.6 s of a 1.1-s cell),
    which the estimate once left out (a smoke study estimated at 8 s took 51). With training free and
    a surgery of 0.5 s, the map costs a surgery per cell, a trial one, a recovered point one and each
    front point the report loads one."""
    import search.study._estimate as est_mod
    from search.config import RunOptions, load_config
    from search.trial import map_grid

    monkeypatch.setattr(est_mod, "seconds_per_image", lambda *args, **kwargs: 0.0)
    monkeypatch.setattr(est_mod, "graph_probe", lambda cfg, model, data: (4, 0.5))
    cfg = load_config("lenet5")
    est = est_mod.estimate(cfg, RunOptions(), fashion_mnist, baseline_exists=True, trials_left=60, map_pending=True)
    assert est.map_s == pytest.approx(4 * len(map_grid(cfg.search)) * 0.5)
    assert est.per_trial_s == pytest.approx(0.5) and est.trials_s == pytest.approx(60 * 0.5)
    assert est.recovery_s == pytest.approx(cfg.report.recover_points * 0.5)
    assert est.report_s == pytest.approx(est_mod.FRONT_PER_RECOVERED * cfg.report.recover_points * 0.5)


def test_a_plan_is_measured_once_per_set_of_widths(fashion_mnist, monkeypatch):
    """The map's bisections measure plans by real surgery; two plans that keep the same channels in
    every unit are one surgery, with the same exact measure as a fresh surgery of either."""
    from search.config import build_config
    from search.trial import _sensitivity

    cfg = build_config({**MAP_CONFIG, "model": "lenet5"}, where="t", overrides={"budget": "smoke"})
    ctx = _context(cfg, _lenet(), fashion_mnist.subset(train=64, val=20, test=10))
    surgeries = []
    real = _sensitivity._pruned
    monkeypatch.setattr(_sensitivity, "_pruned", lambda *a, **k: surgeries.append(1) or real(*a, **k))
    plan = {k: 0.5 for k in ctx.keys}
    nudged = {k: 0.5 + 1e-4 for k in ctx.keys}  # less than a channel of any LeNet5 layer
    other = {**plan, "fc1": 0.7}
    sizes = [_sensitivity._measure_of(ctx, p) for p in (plan, nudged, plan, other)]
    assert len(surgeries) == 2 and sizes[0] == sizes[1] == sizes[2] > sizes[3]
    fresh = _context(cfg, _lenet(), fashion_mnist.subset(train=64, val=20, test=10))
    assert _sensitivity._measure_of(fresh, nudged) == sizes[1] and _sensitivity._measure_of(fresh, other) == sizes[3]
