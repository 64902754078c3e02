"""INT8 of a picked model: made with onnxruntime's own tools, measured (accuracy against FP32 on a
small real model, from a copy in an empty folder), held to an accuracy bar, and refused in one line
with nothing written for bad input."""
from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from pruning import ExportError
from pruning import eval_batches, quantization
from search import export, pick, run
from search.cli import run_cli
from search.config import RunOptions, load_config
from search.trial import load_data
from tests.conftest import REPO, TINY_LENET, base_args, cli, merged, write_config


@pytest.fixture(scope="module")
def study(tmp_path_factory, fashion_mnist):
    root = tmp_path_factory.mktemp("int8")
    config = write_config(root / "tiny.yaml", merged(TINY_LENET, report={"headline_max_drop": 50.0}))
    out = root / "out"
    assert run.main(base_args(config, out) + ["--quiet", "--trials", "6"]) == 0
    return root, config, out


def _pick_argv(study, save, *extra) -> list[str]:
    root, config, out = study
    return ["--model", "lenet5", "--config", str(config), "--budget", "smoke", "--out", str(out), "--data-dir",
            str(REPO / "data"), "--max-drop", "50", "--save", str(save), *extra]


@pytest.fixture(scope="module")
def picked(study, tmp_path_factory):
    """pick --export onnx --int8 on the tiny LeNet5 study: (folder, JSON line, stderr)."""
    folder = tmp_path_factory.mktemp("picked")
    out, err = io.StringIO(), io.StringIO()
    argv = _pick_argv(study, folder / "p.pt", "--export", "onnx", "--int8", "--calibration-images", "256")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        run_cli(pick.main, argv)
    assert info.value.code == 0, err.getvalue()
    return folder, json.loads(out.getvalue().strip().splitlines()[-1]), err.getvalue()


def test_pick_int8_is_measured_against_fp32_on_real_images(picked):
    folder, line, err = picked
    block = json.loads((folder / "p.json").read_text())["int8"]
    assert line["int8"]["onnx"] == str(folder / "p.int8.onnx") and block["onnx"] == "p.int8.onnx"
    assert {p.name for p in folder.iterdir()} == {"p.pt", "p.onnx", "p.json", "p.int8.onnx"}  # no temp left
    assert block["format"] == "qdq" and block["calibration"]["images"] == 256
    assert block["calibration"]["method"] == "minmax" and "stratified" in block["calibration"]["draw"]
    # the bar (0.5 pt on val) holds, and the test split agrees within a point
    assert block["val_drop_pt"] <= 0.5 and block["test_drop_pt"] <= 1.5
    assert block["top1_agreement"] >= 0.95 and block["agreement_images"] > 1000
    assert block["size_mb"] < block["fp32_size_mb"]  # 1.2x on this 0.02 MB model: graph overhead weighs in
    for b in ("1", "64"):  # measured, with their spread; never asserted as a speed
        assert block["latency_ms"]["int8"][b] > 0 and block["speedup"][b]["low"] <= block["speedup"][b]["high"]
    assert line["int8"]["val_accuracy"] == block["val_accuracy"]
    assert "top-1 agreement with FP32" in err and "ms batch 64" in err  # the printed table


def test_the_int8_file_stands_alone_and_gives_the_recorded_accuracy(picked, study, tmp_path):
    folder, line, _ = picked
    (tmp_path / "empty").mkdir()
    alone = tmp_path / "empty" / "model.onnx"
    shutil.copyfile(folder / "p.int8.onnx", alone)  # another name, nothing beside it
    session = ort.InferenceSession(str(alone), providers=["CPUExecutionProvider"])
    data = load_data(load_config("lenet5", path=study[1], overrides={"budget": "smoke"}),
                     RunOptions(data_dir=str(REPO / "data")))
    pairs = [(x.cpu().numpy(), y.cpu().numpy()) for x, y in eval_batches(data, "test", 256)]
    preds = np.concatenate([session.run(None, {"images": x})[0].argmax(1) for x, _ in pairs])
    labels = np.concatenate([y for _, y in pairs])
    assert float((preds == labels).mean()) == pytest.approx(line["int8"]["test_accuracy"], abs=1e-9)


def test_export_int8_of_a_checkpoint(picked, tmp_path, capsys):
    folder, _, _ = picked
    code, out, err = cli(export, ["--checkpoint", str(folder / "p.pt"), "--out", str(tmp_path / "e.onnx"),
                                  "--data-dir", str(REPO / "data"), "--int8", "--calibration-images", "128"], capsys)
    assert code == 0, err
    line = json.loads(out.strip().splitlines()[-1])
    assert line["int8"]["onnx"] == str(tmp_path / "e.int8.onnx") and line["int8"]["val_drop_pt"] <= 0.5
    assert {p.name for p in tmp_path.iterdir()} == {"e.onnx", "e.json", "e.int8.onnx"}


def _refused(study, tmp_path, capsys, flags, match):
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = cli(pick, _pick_argv(study, tmp_path / "q.pt", *flags), capsys)
    errors = [line for line in err.strip().splitlines() if "error" in line]  # progress notes may precede it
    assert code == 2 and errors == [err.strip().splitlines()[-1]] and match in errors[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp left
    return err


@pytest.mark.parametrize("flags, match", [
    (["--export", "onnx", "--int8", "--calibration-images", "0"], "--calibration-images: must be >= 1, got 0"),
    (["--export", "onnx", "--int8", "--calibration-images", "100000000"], "--calibration-images 100000000 must be "
                                                                          "between 1 and the"),
    (["--int8"], "--int8 quantizes the ONNX export; add --export onnx"),
])
def test_bad_int8_input_is_one_line_and_writes_nothing(study, tmp_path, capsys, flags, match):
    _refused(study, tmp_path, capsys, flags, match)


def test_an_int8_path_inside_another_study_is_refused(study, tmp_path, capsys):
    root, config, out = study
    store = out / "artifacts"
    before = sorted(p.name for p in store.iterdir())
    code, _, err = cli(pick, _pick_argv(study, store / "q.pt", "--export", "onnx", "--int8"), capsys)
    assert code == 2 and "would overwrite the study's own files" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in store.iterdir()) == before


def test_an_int8_request_whose_fp32_export_fails_writes_nothing(study, tmp_path, capsys, monkeypatch):
    import search.results._deploy as deploy

    def broken(*args, **kwargs):
        raise ExportError("ONNX export of the model failed: an operator the exporter does not know")
    monkeypatch.setattr(deploy, "export_onnx", broken)
    _refused(study, tmp_path, capsys, ["--export", "onnx", "--int8"], "ONNX export of the model failed")


def test_an_int8_bar_that_cannot_hold_writes_nothing(study, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(quantization, "_holds", lambda fp32, int8, max_drop: False)
    _refused(study, tmp_path, capsys, ["--export", "onnx", "--int8", "--calibration-images", "64"],
             "INT8 cannot hold --max-int8-drop 0.5")


def test_the_most_sensitive_layers_are_kept_fp32_until_the_drop_holds():
    """Layer b costs 3 points alone, c 1 point, a nothing: keeping b then c in FP32 is the answer."""
    cost = {"a": 0.0, "b": 0.03, "c": 0.01}
    calls = []

    def accuracy_with(kept):
        calls.append(tuple(kept))
        return 0.9 - sum(v for k, v in cost.items() if k not in kept)
    assert quantization.keep_sensitive(["a", "b", "c"], 0.9, accuracy_with, 0.5) == (("b", "c"), pytest.approx(0.9))
    assert calls[:4] == [(), ("a",), ("b",), ("c",)] and calls[4:] == [("b",), ("b", "c")]
    assert quantization.keep_sensitive(["a", "b", "c"], 0.9, accuracy_with, 4.0) == ((), pytest.approx(0.86))
    with pytest.raises(ExportError, match="with 2 of 3 layers kept in FP32"):
        quantization.keep_sensitive(["a", "b", "c"], 0.9, lambda kept: 0.5, 0.5)
