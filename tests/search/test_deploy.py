"""From front to deployment: ONNX export verified on onnxruntime, the sidecar, the report that
names its pick command, the CPU-time guard and the commands' help."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models import create_model
from pruning import CheckpointMeta, apply_plan, load_pruned, prunable_units, save_pruned
from search import pick
from search.config import RunOptions, load_config
from search.trial import load_data
from search.study._estimate import estimate, guard
from search.config import UsageError
from tests.conftest import PYTHON, REPO, cli


@pytest.fixture(scope="module")
def study(headline_study):
    return headline_study


def _ort(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": x.numpy()})[0]


def _pick_headline(study, capsys) -> dict:
    """Run the pick command the report names (exactly as written, to a file of the test's own) and
    return the JSON line it prints."""
    root, config, out = study
    report = (out / "report.md").read_text()
    assert "★" in report and "python -m search.pick" in report and "Channel widths of the headline" in report
    command = next(line for line in report.splitlines() if line.startswith("python -m search.pick"))
    argv = command.split()[3:]
    argv[argv.index("--save") + 1] = str(root / "headline.pt")
    code, stdout, err = cli(pick, argv + ["--data-dir", str(REPO / "data")], capsys)  # the exact command works
    assert code == 0, err
    return json.loads(stdout.strip().splitlines()[-1])


def test_the_report_leads_to_a_model(study, capsys):
    root, config, out = study
    result = _pick_headline(study, capsys)
    headline = json.loads((out / "report.json").read_text())["headline"]
    assert result["trial"] == headline["trial"] and (root / "headline.onnx").exists()


def test_an_exported_lenet5_matches_pytorch_in_onnxruntime(study, capsys):
    root, config, out = study
    saved = root / "headline.pt"
    if not saved.exists():  # run on its own (or first): make the export itself
        _pick_headline(study, capsys)
    model = load_pruned(saved)
    data = load_data(load_config("lenet5", path=config, overrides={"budget": "smoke"}),
                     RunOptions(data_dir=str(REPO / "data")))
    for batch in (1, 7, 64):  # a dynamic batch dimension
        x = data.normalize(data.test_x[:batch]).cpu()
        with torch.no_grad():
            np.testing.assert_allclose(_ort(root / "headline.onnx", x), model(x).numpy(), atol=1e-4, rtol=1e-4)
    sidecar = json.loads((root / "headline.json").read_text())
    pre = sidecar["preprocessing"]
    assert pre["pad"] == 2 and pre["channels"] == 1 and pre["mean"] == [0.286] and pre["std"] == [0.353]
    assert sidecar["class_names"][0] == "T-shirt/top" and len(sidecar["class_names"]) == 10
    assert sidecar["verification"]["max_abs_diff"] <= 1e-3 and sidecar["provenance"]["study"] == "lenet5-fashion-mnist"
    assert model.preprocessing.pad == 2  # load_pruned hands the preprocessing to the code that uses the model


@pytest.mark.slow
def test_a_pruned_resnet50_exports_and_matches(tmp_path, fashion_mnist):
    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=10, in_channels=1).eval()
    x = torch.randn(1, 1, 32, 32)
    pruned, record = apply_plan(model, {u.name: 0.5 for u in prunable_units(model, x)}, example_input=x, round_to=8)
    ckpt = save_pruned(tmp_path / "r50.pt", pruned, record,
                       CheckpointMeta(model="resnet50", num_classes=10, in_channels=1, dataset="fashion-mnist",
                                      preprocessing=fashion_mnist.preprocessing))
    result = subprocess.run([PYTHON, "-m", "search.export", "--checkpoint", str(ckpt), "--data-dir",
                             str(REPO / "data")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    xb = fashion_mnist.normalize(fashion_mnist.val_x[:16])
    with torch.no_grad():
        np.testing.assert_allclose(_ort(tmp_path / "r50.onnx", xb), pruned.eval()(xb).numpy(), atol=1e-3, rtol=1e-3)
    assert json.loads((tmp_path / "r50.json").read_text())["input"]["shape"] == ["batch", 1, 32, 32]


# Training seconds per image on a quiet 2-core CPU (DESIGN's figures): the guard's decision is tested
# on fixed rates, so a busy machine cannot change the outcome.
QUIET_RATE_S = {"lenet5": 1 / 11_000, "densenet121": 1 / 11}


@pytest.mark.parametrize("model, budget, refused", [("densenet121", "default", True), ("lenet5", "default", False),
                                                    ("densenet121", "smoke", False)])
def test_the_cpu_guard(model, budget, refused, monkeypatch, fashion_mnist):
    import search.study._estimate as est_mod
    monkeypatch.setattr(est_mod, "seconds_per_image", lambda cfg, data, precise=True, **_: QUIET_RATE_S[model])
    cfg = load_config(model, overrides={"budget": budget})
    opts = RunOptions(data_dir=str(REPO / "data"), device="cpu")
    est = estimate(cfg, opts, fashion_mnist, baseline_exists=False, trials_left=cfg.spend.trials)
    if refused:
        with pytest.raises(UsageError, match="this is GPU work.*--budget smoke.*--yes"):
            guard(cfg, opts, est, torch.device("cpu"))
        guard(cfg, RunOptions(yes=True), est, torch.device("cpu"))  # --yes goes on
    else:
        guard(cfg, opts, est, torch.device("cpu"))  # smoke is never refused, whatever its estimate
        assert model != "lenet5" or est.total_s < 3600


CPU_CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.yaml") if "\n  cpu:" in p.read_text())


@pytest.mark.parametrize("name", CPU_CONFIGS)
def test_every_cpu_budget_leaves_the_search_its_trials(name):
    """A config's ``cpu`` budget, a short study on this machine, is a search and not a run of
    references: at most three reference ratios (the three kinds take at most 9 trials), no early
    stopping (rungs stop searched candidates the references pass unjudged), the recovered points
    timed. any-model.yaml's lacked all three, and a user-brought ResNet18's headline was the
    sensitivity 0.1 reference, 18.3 % smaller (docs/measurements.md)."""
    cfg = load_config("torchvision:resnet18" if name == "any-model" else name, overrides={"budget": "cpu"})
    assert len(cfg.reference_ratios) * len(cfg.search.references) <= cfg.spend.trials * 0.4
    assert not cfg.early_stop and cfg.latency == "recovered"


def test_what_a_budget_is_for_is_its_scope_not_its_name(monkeypatch, fashion_mnist):
    """The guard and the report read the budget's ``scope`` field: a budget named anything with scope
    ``smoke`` is never refused and is the one a refusal suggests; one named ``smoke`` but scoped ``full``
    is refused like any other. A budget without the field means what its name always meant, and the field
    is not fingerprinted (a study made before it resumes)."""
    import dataclasses

    import search.study._estimate as est_mod
    from search.config import fingerprint
    monkeypatch.setattr(est_mod, "seconds_per_image", lambda cfg, data, precise=True, **_: QUIET_RATE_S["densenet121"])
    cfg = load_config("densenet121", overrides={"budget": "default"})
    budgets = dict(cfg.budgets, quick=dataclasses.replace(cfg.budgets["smoke"], scope="smoke"),
                   smoke=dataclasses.replace(cfg.budgets["default"], scope="full"))
    opts = RunOptions(data_dir=str(REPO / "data"), device="cpu")
    for name, refused in (("quick", False), ("smoke", True), ("default", True)):
        named = dataclasses.replace(cfg, budgets=budgets, budget=name)
        assert named.scope == ("smoke" if name == "quick" else "full")
        est = estimate(named, opts, fashion_mnist, baseline_exists=False, trials_left=named.spend.trials)
        if refused:
            with pytest.raises(UsageError, match="this is GPU work.*--budget quick "):
                guard(named, opts, est, torch.device("cpu"))
        else:
            guard(named, opts, est, torch.device("cpu"))
    assert [load_config("lenet5", overrides={"budget": b}).scope for b in ("smoke", "default", "full")] == \
        ["smoke", "full", "full"]
    assert load_config("vgg16", overrides={"budget": "cpu"}).scope == "short"
    scoped = dataclasses.replace(cfg, budgets=dict(cfg.budgets, default=dataclasses.replace(cfg.spend, scope="short")))
    assert fingerprint(scoped) == fingerprint(cfg)


@pytest.mark.parametrize("rough_s, shown, measured", [(1e-4, False, False), (1e-4, True, True), (1.0, False, True)])
def test_the_estimate_is_measured_when_shown_or_over_the_limit(rough_s, shown, measured, monkeypatch, fashion_mnist):
    import search.study._estimate as est_mod
    monkeypatch.setattr(est_mod, "seconds_per_image", lambda cfg, data, precise=True, **_: 1e-6 if precise else rough_s)
    monkeypatch.setattr(est_mod, "graph_probe", lambda cfg, model, data: (0, 0.0))  # the training rate alone
    cfg = load_config("lenet5")
    est = estimate(cfg, RunOptions(), fashion_mnist, baseline_exists=False, trials_left=60, precise=shown)
    assert est.upper_bound is not measured
    assert (est.total_s < 60) is measured  # 1 µs per image: seconds; 100 µs: minutes; 1 s: days


@pytest.mark.parametrize("rates, kept", [((1.0, 1.0, 1e-6), 1e-6), ((1.0, 1.0, 1.0), 1.0), ((1.0, 1.0, 2.0), 1.0)])
def test_an_estimate_over_the_limit_is_measured_again_before_a_refusal(rates, kept, monkeypatch, fashion_mnist):
    """A slow moment during the probe (seen once on a quiet machine: LeNet5 default estimated at 34 min,
    done in 3.6) must not refuse a study: over the limit, the rate is measured again, the faster kept."""
    import search.study._estimate as est_mod
    monkeypatch.setattr(est_mod, "REPROBE_PAUSE_S", 0.0)
    monkeypatch.setattr(est_mod, "graph_probe", lambda cfg, model, data: (0, 0.0))  # the training rate alone
    cfg = load_config("lenet5")

    def run(rates, opts=RunOptions(device="cpu")):
        probes = iter(rates)  # the rough probe, the precise one, the second precise one
        monkeypatch.setattr(est_mod, "seconds_per_image", lambda cfg, data, precise=True, **_: next(probes))
        est = estimate(cfg, opts, fashion_mnist, baseline_exists=False, trials_left=60)
        return est, next(probes, None)
    est, left = run(rates)
    assert left is None  # all three probes ran
    assert est.total_s == pytest.approx(run((kept,) * 3)[0].total_s)  # the faster rate's estimate
    assert (est.total_s > 3600) is (kept == 1.0)
    _, left = run(rates, RunOptions(device="cpu", yes=True))  # nothing to refuse: no second probe
    assert left == rates[2]


@pytest.mark.parametrize("command", ["run", "train", "pick", "report", "recover", "export"])
def test_help_gives_defaults_and_an_example(command, capsys):
    import importlib
    parser = importlib.import_module(f"search.{command}").get_args_parser()
    text = parser.format_help()
    assert "example:\n  python -m search." in text
    exclusive = [a for group in parser._mutually_exclusive_groups for a in group._group_actions]
    for action in parser._actions:
        if action.option_strings and action.dest != "help" and action not in exclusive:
            rendered = parser._get_formatter()._get_help_string(action)
            assert "default" in rendered or "required" in rendered, (command, action.dest)


@pytest.mark.parametrize("per_image_s, overhead_s", [(0.01, 0.5), (1e-5, 0.05)])
def test_the_rate_excludes_a_training_call_s_fixed_cost(per_image_s, overhead_s, monkeypatch, fashion_mnist):
    """A slow model's fixed cost per call (0.5 s) was spread over 32 images: the estimate was 10-25x off."""
    import search.study._estimate as est_mod
    from types import SimpleNamespace

    def fake_train(model, data, cfg, progress=False):
        return SimpleNamespace(seconds=overhead_s + per_image_s * cfg.steps * cfg.batch_size)
    monkeypatch.setattr(est_mod, "train", fake_train)
    measured = est_mod.seconds_per_image(load_config("lenet5"), fashion_mnist)
    assert measured == pytest.approx(per_image_s, rel=0.01)
