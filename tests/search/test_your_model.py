"""Your model, your data: a network the user trained (torchvision, timm, their own code), at its own
resolution, on an image folder, goes through run -> report -> pick -> ONNX like a registry model."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models import parse_source
from pruning import ImageSpec, TrainConfig, load_checkpoint, load_dataset, recalibrate_bn, train, train_batches
from tests.conftest import PYTHON, REPO, write_config, write_image_folder

IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
USER_CODE = '''
import torch
from torch import nn


class Block(nn.Module):
    """A residual add and a concatenation of its own."""

    def __init__(self, width):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.side = nn.Conv2d(width, width // 2, 1)
        self.merge = nn.Conv2d(width + width // 2, width, 1)

    def forward(self, x):
        h = x + self.b(self.a(x))
        return self.merge(torch.cat([h, self.side(x)], dim=1))


def build(num_classes, width=16):
    return nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         Block(width), nn.MaxPool2d(2), Block(width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory, fashion_mnist):
    return write_image_folder(tmp_path_factory.mktemp("yours"), fashion_mnist, per_class=80, size=64)


_TRAINED: dict[tuple, bytes] = {}  # what _trained_weights saved, by what it trained: tests that train alike share it


def _trained_weights(folder: Path, source_text: str, out: Path, *, steps: int, kwargs=None) -> Path:
    """The user's side: their model trained on their folder at 64x64, saved the way torchvision's
    reference scripts do (``{"model": state_dict, ...}``). Trained once per session for the same model
    (a file entry point: the same code), steps and images (the README's walk and the resume test train
    the same ResNet18, two tests the same code of the user's)."""
    name = source_text
    if ".py:" in source_text:
        path, fn = source_text.rsplit(":", 1)
        name = (Path(path).read_text(), fn)
    key = (name, json.dumps(kwargs, sort_keys=True), steps,
           tuple(sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*.png"))))
    if key in _TRAINED:
        out.write_bytes(_TRAINED[key])
        return out
    spec = ImageSpec(input_size=64, crop_pct=0.875, interpolation="bilinear", channels=3, **IMAGENET)
    data = load_dataset("imagefolder", data_dir=folder, image=spec)
    torch.manual_seed(0)
    model = parse_source(source_text, kwargs).build(num_classes=data.num_classes)
    train(model, data, TrainConfig(steps=steps, batch_size=32, lr=0.05, warmup=0.1), progress=False)
    # a few hundred steps leave BatchNorm's running statistics near their start where its momentum is small
    # (torchvision's MobileNetV3: 0.01, every prediction one class in eval mode); a user's trained model has
    # settled ones
    batches = train_batches(data, 32, torch.Generator().manual_seed(0))
    recalibrate_bn(model, [x for (x, _), _ in zip(batches, range(8))])
    torch.save({"model": model.state_dict(), "epoch": 1}, out)
    _TRAINED[key] = out.read_bytes()
    return out


def _run(args: list[str]) -> None:
    from search.run import main

    assert main(args) == 0


def seams_only(config: dict) -> dict:
    """A config for the tests of the model and data seams: its smoke budget times no front point, its
    report makes no INT8 rows, and its sensitivity map prunes each key alone at one ratio, not four.
    The three are model-agnostic, cost most of a torchvision model's smoke run (a ResNet18 at 64x64:
    105 s of latency and 67 s of INT8 in a 188-s run; DenseNet121's 48-cell map: 50 s of an 82-s
    study) and have tests of their own (LeNet5's report, tests/search/test_int8.py, the INT8 picks
    below, tests/search/test_sensitivity.py). One ratio still prunes every key of the user's model."""
    config["budgets"]["smoke"]["latency"] = "none"
    config["report"]["int8"] = "none"
    config["search"]["sensitivity_ratios"] = [0.5]
    return config


def _smoke_config(folder: Path, *, headline_max_drop: float | None = None) -> Path:
    """configs/any-model.yaml whose smoke budget times no front point, whose report makes no INT8
    rows and whose map has one ratio (:func:`seams_only`). ``headline_max_drop``: a bar every point clears, so the report has a
    headline to load (a study without one never opens a front checkpoint)."""
    config = seams_only(yaml.safe_load((REPO / "configs" / "any-model.yaml").read_text()))
    name = "any-model-smoke.yaml"
    if headline_max_drop is not None:
        config["report"]["headline_max_drop"] = headline_max_drop
        name = "any-model-smoke-headline.yaml"
    return write_config(folder / name, config)


def _study(folder: Path, out: Path, source: str, weights: Path, *extra: str, config: Path | None = None) -> dict:
    _run(["--model", source, "--weights", str(weights), "--dataset", "imagefolder", "--data-dir", str(folder),
          "--config", str(config or _smoke_config(out.parent)), "--image-size", "64", "--budget", "smoke",
          "--out", str(out), "--quiet", *extra])
    return json.loads((out / "report.json").read_text())


def _pick_and_export(folder: Path, out: Path, source: str, tmp: Path) -> None:
    import onnxruntime as ort

    from search.pick import main as pick

    save = tmp / "picked.pt"
    assert pick(["--model", source, "--dataset", "imagefolder", "--data-dir", str(folder), "--out", str(out),
                 "--max-drop", "100", "--save", str(save), "--export", "onnx"]) == 0
    ckpt = load_checkpoint(save, expect_model=source)
    assert ckpt.meta.preprocessing.input_size == 64 and ckpt.meta.preprocessing.resize_size == 73
    sidecar = json.loads(save.with_suffix(".json").read_text())
    assert sidecar["input"]["shape"] == ["batch", 3, 64, 64] and "centre 64x64" in sidecar["preprocessing"]["formula"]
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = ckpt.model.eval()(x).numpy()
    got = ort.InferenceSession(str(save.with_suffix(".onnx")), providers=["CPUExecutionProvider"]).run(
        None, {ort.InferenceSession(str(save.with_suffix(".onnx"))).get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(got, expected, atol=1e-3)


INT8_BAR = 7.0  # val points: the folder's val split is 32 images (val_fraction 0.1 of 320), one image is 3.1 pt


def _pick_int8(folder: Path, out: Path, source: str, tmp: Path) -> dict:
    """pick --export onnx --int8 on a study of ``source``: the INT8 file holds the bar on the study's val
    split, and a copy of it alone in an empty folder agrees with the FP32 file on real images."""
    import shutil

    import onnxruntime as ort

    from pruning import eval_batches
    from search.pick import main as pick

    save = tmp / "picked.pt"
    assert pick(["--model", source, "--dataset", "imagefolder", "--data-dir", str(folder), "--out", str(out),
                 "--max-drop", "100", "--save", str(save), "--export", "onnx", "--int8", "--calibration-images",
                 "128", "--max-int8-drop", str(INT8_BAR)]) == 0
    block = json.loads(save.with_suffix(".json").read_text())["int8"]
    assert block["val_drop_pt"] <= INT8_BAR and block["top1_agreement"] >= 0.9 and block["agreement_images"] >= 100
    assert block["size_mb"] < block["fp32_size_mb"] and block["calibration"]["images"] == 128
    (tmp / "alone").mkdir()
    alone = shutil.copyfile(tmp / "picked.int8.onnx", tmp / "alone" / "model.onnx")
    spec = ImageSpec(input_size=64, crop_pct=0.875, interpolation="bilinear", channels=3, **IMAGENET)
    data = load_dataset("imagefolder", data_dir=folder, image=spec)
    x = next(eval_batches(data, "train", 128))[0].cpu().numpy()  # real images, eval preprocessing
    preds = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0].argmax(1)
             for p in (alone, save.with_suffix(".onnx"))]
    assert (preds[0] == preds[1]).mean() >= 0.9
    return block


@pytest.mark.slow
def test_int8_of_a_torchvision_model(folder, tmp_path):
    """torchvision's MobileNetV3-Small at 64x64 (hard-swish, squeeze-excite), the user's weights."""
    source = "torchvision:mobilenet_v3_small"
    weights = _trained_weights(folder, source, tmp_path / "w.pt", steps=150)
    _study(folder, tmp_path / "study", source, weights)
    _pick_int8(folder, tmp_path / "study", source, tmp_path)


@pytest.mark.slow
def test_int8_of_a_users_own_code(folder, tmp_path):
    """A user entry point (file.py:fn) with a residual add and a concatenation."""
    (tmp_path / "nets.py").write_text(USER_CODE)
    source = f"{tmp_path / 'nets.py'}:build"
    weights = _trained_weights(folder, source, tmp_path / "w.pt", steps=250)
    _study(folder, tmp_path / "study", source, weights)
    _pick_int8(folder, tmp_path / "study", source, tmp_path)


@pytest.mark.slow
def test_a_torchvision_model_with_its_own_weights_goes_the_whole_way(folder, tmp_path):
    """torchvision's densenet121 (a concatenating family; resnet18 goes the same way as the README's
    own-model walk in tests/test_readme.py). Two trials, not the smoke budget's four: what the model
    changes shows in the first (the test took 69 s with four, 60 with two)."""
    source = "torchvision:densenet121"
    weights = _trained_weights(folder, source, tmp_path / "w.pt", steps=60)
    answer = _study(folder, tmp_path / "study", source, weights, "--trials", "2")
    base = load_checkpoint(tmp_path / "study" / "baseline.pt", expect_model=source)
    given = torch.load(weights, weights_only=True)["model"]
    assert all(torch.equal(base.model.state_dict()[k].cpu(), v) for k, v in given.items())  # never retrained
    assert base.meta.provenance["trained_by"] == "user"
    assert answer["baseline"]["val_accuracy"] == pytest.approx(base.meta.metrics["val_accuracy"])
    assert answer["front_points"] >= 1 and (tmp_path / "study" / "pareto.csv").exists()
    assert f"from {folder}" in (tmp_path / "study" / "report.md").read_text()
    _pick_and_export(folder, tmp_path / "study", source, tmp_path)


@pytest.mark.slow
def test_a_timm_model_goes_the_same_way(folder, tmp_path):
    """timm's resnet10t; a user's own code goes the same way in the headline walk below."""
    source = "timm:resnet10t"
    weights = _trained_weights(folder, source, tmp_path / "w.pt", steps=250)
    answer = _study(folder, tmp_path / "study", source, weights)
    assert answer["front_points"] >= 1
    _pick_and_export(folder, tmp_path / "study", source, tmp_path)


@pytest.mark.slow
def test_your_own_code_goes_run_report_dashboard_pick_onnx_with_a_headline(folder, tmp_path):
    """The README's own-model walk with a model of the user's own code and a study that has a headline:
    the report loads the headline's checkpoint (its channel widths) with the entry point the study was
    run with, so run, report, pick and export all take the same --model flag."""
    from search.report import main as report
    from tests.test_readme import _served_study_names

    (tmp_path / "nets.py").write_text(USER_CODE)
    source = f"{tmp_path / 'nets.py'}:build"
    weights = _trained_weights(folder, source, tmp_path / "w.pt", steps=250)
    out = tmp_path / "study"
    answer = _study(folder, out, source, weights, config=_smoke_config(tmp_path, headline_max_drop=100.0))
    assert answer["headline"] is not None, answer
    assert "Channel widths of the headline" in (out / "report.md").read_text()
    assert report(["--model", source, "--dataset", "imagefolder", "--data-dir", str(folder), "--out", str(out),
                   "--budget", "smoke"]) == 0
    dashboard = [str(Path(PYTHON).parent / "optuna-dashboard"), str(out / "journal.log"),
                 "--artifact-dir", str(out / "artifacts")]
    assert len(_served_study_names(dashboard, tmp_path)) == 1
    _pick_and_export(folder, out, source, tmp_path)
    with pytest.raises(Exception, match="loading it imports that code"):
        load_checkpoint(out / "baseline.pt")  # a file alone never imports user code


@pytest.mark.slow
def test_a_resume_with_other_weights_or_size_is_refused_and_changes_nothing(folder, tmp_path):
    source = "torchvision:resnet18"
    weights = _trained_weights(folder, source, tmp_path / "w.pt", steps=150)
    _study(folder, tmp_path / "s", source, weights, "--trials", "1", "--no-recover")  # a study to resume: one trial
    before = {p: p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()}
    other = tmp_path / "other.pt"
    state = torch.load(weights, weights_only=True)
    state["model"]["fc.bias"] += 1
    torch.save(state, other)
    for flags, match in ((["--weights", str(other)], "weights_sha256"),
                         (["--weights", str(weights), "--image-size", "96"], "image_size")):
        proc = subprocess.run([PYTHON, "-m", "search.run", "--model", source, "--dataset", "imagefolder",
                               "--data-dir", str(folder), "--config", str(_smoke_config(tmp_path)),
                               "--budget", "smoke", "--out", str(tmp_path / "s"), "--quiet", *flags], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 2 and match in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()} == before


BAD = {
    "unknown torchvision name": (["--model", "torchvision:resnet51"], "close matches: torchvision:resnet50"),
    "missing entry point": (["--model", "{tmp}/nets.py:nope"], "has no function 'nope'"),
    "entry point raises": (["--model", "{tmp}/nets.py:broken"], "raised RuntimeError: no GPU here"),
    "too small an image": (["--model", "torchvision:inception_v3", "--image-size", "32"],
                           "--image-size 32 is too small for torchvision:inception_v3; the smallest input"),
    "pickled module": (["--model", "torchvision:resnet18", "--weights", "{tmp}/whole.pt"], "whole pickled model"),
    "class count": (["--model", "torchvision:resnet18", "--weights", "{tmp}/thousand.pt"],
                    "has 1000 outputs but the dataset has 4 classes"),
    "wrong keys": (["--model", "torchvision:resnet34", "--weights", "{w}"], "the weights do not fit"),
    "registry name, torchvision weights": (["--model", "vgg16", "--weights", "{tmp}/tv_vgg.pt"],
                                           "use --model torchvision:vgg16"),
    "chance level": (["--model", "torchvision:resnet18", "--weights", "{tmp}/untrained.pt"], "chance level"),
    "bad model kwargs": (["--model", "torchvision:resnet18", "--model-kwargs", "[1]"], "expected a JSON object"),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    import torchvision

    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "nets.py").write_text("def broken(num_classes):\n    raise RuntimeError('no GPU here')\n")
    torch.save(torchvision.models.resnet18(num_classes=2), tmp / "whole.pt")
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), tmp / "thousand.pt")
    torch.save(torchvision.models.vgg16(num_classes=4).state_dict(), tmp / "tv_vgg.pt")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), tmp / "untrained.pt")
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_of_your_model_is_one_line_and_writes_nothing(folder, bad_files, tmp_path, case):
    flags, match = BAD[case]
    flags = [f.format(tmp=bad_files, w=bad_files / "untrained.pt") for f in flags]
    out = tmp_path / "study"
    proc = subprocess.run([PYTHON, "-m", "search.run", *flags, "--dataset", "imagefolder", "--data-dir", str(folder),
                           "--budget", "smoke", "--out", str(out), "--quiet"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 2, proc.stderr
    assert match in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists() or not any(p.is_file() and p.stat().st_size for p in out.rglob("*")), \
        sorted(out.rglob("*"))


def test_a_fixed_size_model_at_another_size_is_told_the_size_it_takes():
    """A registry LeNet5 (a flatten before its first Linear) at 64x64: the line names 32x32."""
    from models import create_model
    from search.config import UsageError
    from search.trial import check_input_size

    with pytest.raises(UsageError, match=r"does not run on 64x64 inputs but does on 32x32: pass --image-size 32"):
        check_input_size(create_model("lenet5", num_classes=10, in_channels=1), 1, 64, "lenet5")
