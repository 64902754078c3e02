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
import pandas as pd
import pytest
import torch

from pruning import ExportError
from pruning import eval_batches, quantization
from search import export, pick, report
from search.cli import run_cli
from search.results import int8_table
from search.config import RunOptions, load_config
from search.trial import load_data
from tests.conftest import REPO, TINY_LENET, cli, merged


@pytest.fixture(scope="module")
def study(headline_study):
    return headline_study


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


def test_layers_onnxruntime_left_in_fp32_are_named(picked):
    folder, _, _ = picked
    block = json.loads((folder / "p.json").read_text())["int8"]
    # every LeNet5 layer is INT8 but those the bar kept: onnxruntime leaves none of its own
    assert {n.rsplit(" (", 1)[0] for n in quantization.unquantized_layers(folder / "p.int8.onnx")} == set(block["kept_fp32"])
    assert block["left_fp32"] == []
    fp32 = quantization.unquantized_layers(folder / "p.onnx")  # the FP32 file: every weight layer is "left"
    assert len(fp32) >= 4 and all(name.endswith(("(Conv)", "(Gemm)", "(MatMul)")) for name in fp32)
    assert "left in FP32 by onnxruntime's quantizer: node_x (Conv)" in int8_table({**block, "left_fp32": ["node_x (Conv)"]})
    assert "left in FP32" not in int8_table(block)


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
    """Layer b costs 3 points, c 1 point, a nothing: keeping b then c in FP32 is the answer, found by
    trying every layer kept, then bisecting the ranking (asked for only once the bar misses)."""
    cost = {"a": 0.0, "b": 0.03, "c": 0.01}
    calls, ranked = [], []

    def accuracy_with(kept):
        calls.append(tuple(kept))
        return 0.9 - sum(v for k, v in cost.items() if k not in kept)

    def rank():
        ranked.append(1)
        return ["b", "c", "a"]
    assert quantization.keep_sensitive(["a", "b", "c"], 0.9, accuracy_with, 0.5, rank=rank) == \
        (("b", "c"), pytest.approx(0.9))
    assert calls == [(), ("a", "b", "c"), ("b",), ("b", "c")] and ranked == [1]
    assert quantization.keep_sensitive(["a", "b", "c"], 0.9, accuracy_with, 4.0, rank=rank) == ((), pytest.approx(0.86))
    assert ranked == [1]  # the bar held at once: no ranking


def test_an_int8_bar_no_ranking_can_hold_fails_fast():
    """Even with every layer kept in FP32 the drop misses (the quantized activations lose it): one
    line after two runs, before any ranking; when it holds only with all of them, the line says so
    after the bisection (log2 of the layers)."""
    calls = []
    nodes = [f"n{i}" for i in range(40)]
    with pytest.raises(ExportError, match="even with all 40 Conv/Gemm/MatMul layers kept in FP32"):
        quantization.keep_sensitive(nodes, 0.9, lambda kept: calls.append(1) or 0.5, 0.5, rank=pytest.fail)
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(ExportError, match="with 39 of 40 layers kept in FP32 val top-1 is 50.00 %"):
        quantization.keep_sensitive(nodes, 0.9, lambda kept: calls.append(1) or (0.9 if len(kept) == 40 else 0.5), 0.5,
                                    rank=lambda: nodes)
    assert len(calls) == 2 + 6  # nothing kept, all kept, ceil(log2(40)) bisection steps


def test_the_noise_ranking_puts_the_layer_whose_weights_int8_cannot_hold_first(tmp_path):
    """Three convolutions; the middle one's every output channel has one weight 10^4 times its others,
    so per-channel INT8 rounds the others to 0: from one run of the quantized file, that layer ranks
    first."""
    from torch import nn

    from pruning import export_onnx
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 4, 3, padding=1)).eval()
    with torch.no_grad():
        model[2].weight[:, 0, 0, 0] = 1e4 * model[2].weight.abs().max()
    x = torch.randn(16, 1, 8, 8)
    fp32 = export_onnx(model, tmp_path / "m.onnx", x[:1])
    pre = quantization.preprocess(fp32, tmp_path / "pre.onnx")
    batches = [x.numpy()]
    int8 = quantization.quantize(pre, tmp_path / "int8.onnx", batches, method="minmax", cache=tmp_path / "cache.json")
    nodes = quantization.quantizable_nodes(pre)
    ranked = quantization.noise_ranking(pre, int8, nodes, x.numpy(), tmp_path)
    assert sorted(ranked) == sorted(nodes) and len(nodes) == 3
    assert ranked[0] == nodes[1], ranked


def test_a_bar_missed_at_first_keeps_the_noisiest_layer_of_the_real_file(picked, tmp_path, monkeypatch):
    """End to end on the picked LeNet5 file: the bar misses with every layer quantized and holds once
    any is kept (forced), so one layer is kept, and it is the first of the noise ranking of the same
    all-INT8 file, which is asked for once."""
    from pruning import Int8Settings, quantize_within

    folder = picked[0]
    shape = ort.InferenceSession(str(folder / "p.onnx")).get_inputs()[0].shape
    x = np.random.default_rng(0).standard_normal((16, *shape[1:])).astype(np.float32)
    verdicts = iter([False])  # the first call (nothing kept) misses; every later one holds
    monkeypatch.setattr(quantization, "_holds", lambda fp32, int8, max_drop: next(verdicts, True))
    ranked = []
    real = quantization.noise_ranking
    monkeypatch.setattr(quantization, "noise_ranking", lambda *a: ranked.append(real(*a)) or ranked[-1])
    result = quantize_within(folder / "p.onnx", tmp_path / "p.int8.onnx", [x], [x], np.zeros(16, np.int64),
                             Int8Settings())
    pre = quantization.preprocess(folder / "p.onnx", tmp_path / "pre.onnx")
    assert len(ranked) == 1 and sorted(ranked[0]) == sorted(quantization.quantizable_nodes(pre))
    assert result.kept_fp32 == (ranked[0][0],)
    assert any(layer.startswith(f"{ranked[0][0]} (") for layer in quantization.unquantized_layers(result.path))


@pytest.mark.parametrize("method, hinted", [("minmax", True), ("entropy", True), ("percentile", False)])
def test_an_int8_bar_that_fails_names_the_calibration_that_clips_outliers(picked, method, hinted, monkeypatch):
    """A bar that fails at minmax or entropy calibration says to try percentile (a ResNet50 point lost
    14.7 pts at minmax, 4.6 at percentile); at percentile the line is the bar's own."""
    from pruning import Int8Settings, quantize_within

    folder = picked[0]
    shape = ort.InferenceSession(str(folder / "p.onnx")).get_inputs()[0].shape
    x = np.zeros((4, *shape[1:]), np.float32)
    for error, hint in ((quantization.BarMissed("INT8 cannot hold --max-int8-drop 0.5: ...; ship the FP32 file or "
                                                "raise the bar"), hinted),
                        (ExportError("onnxruntime could not quantize the model: ..."), False)):  # a tool's failure
        def fails(*args, error=error, **kwargs):
            raise error
        monkeypatch.setattr(quantization, "keep_sensitive", fails)
        with pytest.raises(ExportError) as info:
            quantize_within(folder / "p.onnx", folder / "hint.int8.onnx", [x], [x], np.zeros(4, np.int64),
                            Int8Settings(calibration_method=method))
        assert ("or calibrate with search.pick / search.export --calibration-method percentile" in str(info.value)) \
            is hint
        assert len(str(info.value).splitlines()) == 1


def _report_int8(study, copy) -> None:
    """What search.report does on a copy of the study, with report.int8: recovered (an existing study's
    stored config wins over --config, so the test sets it on the config the report is written with)."""
    from dataclasses import replace

    from search.cli import resolve
    from search.results import write_report
    from search.study import open_existing

    args = report.get_args_parser().parse_args(["--model", "lenet5", "--config", str(study[1]), "--budget", "smoke",
                                                "--out", str(copy), "--data-dir", str(REPO / "data")])
    found = open_existing(*resolve(args))
    found.cfg = replace(found.cfg, report=replace(found.cfg.report, int8="recovered"))
    write_report(found)


@pytest.fixture(scope="module")
def int8_report(study, tmp_path_factory):
    """A copy of the tiny study whose report measured INT8 for its recovered points."""
    copy = tmp_path_factory.mktemp("int8-report") / "out"
    shutil.copytree(study[2], copy)
    _report_int8(study, copy)
    return copy


def test_report_int8_none_measures_nothing(study):
    out = study[2]
    assert not (out / "int8.json").exists() and "INT8 val" not in (out / "report.md").read_text()
    assert pd.read_csv(out / "pareto.csv")["int8_val_accuracy"].isna().all()
    assert json.loads((out / "report.json").read_text())["headline"]["int8"] is None


def test_the_report_gives_recovered_points_int8_columns(int8_report):
    table = pd.read_csv(int8_report / "pareto.csv")
    recovered = table["recovered_val_accuracy"].notna()
    assert recovered.any() and table.loc[recovered, "int8_val_accuracy"].notna().all()
    assert table.loc[~recovered, "int8_val_accuracy"].isna().all()  # INT8 is for what pick ships
    cache = {key.split("|")[0]: block for key, block in json.loads((int8_report / "int8.json").read_text()).items()}
    assert len(cache) == recovered.sum()
    for _, row in table[recovered].iterrows():
        block = cache[row["recovered_checkpoint"].split("/")[-1]]  # the recovered checkpoint is what is quantized
        assert block["val_drop_pt"] <= 0.5 and block["top1_agreement"] >= 0.95  # pick's bar, on the val split
        assert block["val_accuracy"] == pytest.approx(row["int8_val_accuracy"])
        # the FP32 file on onnxruntime against the recovery's own score (PyTorch, the study's precision)
        assert block["fp32_val_accuracy"] == pytest.approx(row["recovered_val_accuracy"], abs=0.01)
    rows = table[recovered]
    assert (rows["int8_size_mb"] > 0).all() and (rows["int8_ort_b64_ms"] > 0).all()
    assert (rows["int8_b1_speedup_low"] <= rows["int8_b1_speedup_high"]).all()  # a range, never asserted as a speed
    md = (int8_report / "report.md").read_text()
    assert "| INT8 val | INT8 MB | INT8 ms b1 / b64 | INT8 vs FP32 b1 / b64 |" in md
    assert "## Search vs. the classic allocations" in md  # the other sections stay
    head = json.loads((int8_report / "report.json").read_text())["headline"]
    row = table[table["trial"] == head["trial"]].iloc[0]  # recovered: the headline is chosen among recovered points
    assert head["int8"]["val_accuracy"] == pytest.approx(row["int8_val_accuracy"])
    assert head["int8"]["speedup_text"]["1"] and isinstance(head["int8"]["kept_fp32"], list)


def test_report_int8_is_cached_per_artifact(int8_report, study, monkeypatch):
    import search.results._int8 as int8_mod

    def never(*args, **kwargs):
        raise AssertionError("a cached point was quantized again")
    monkeypatch.setattr(int8_mod, "int8_figures", never)
    before = pd.read_csv(int8_report / "pareto.csv")["int8_val_accuracy"]
    _report_int8(study, int8_report)
    pd.testing.assert_series_equal(pd.read_csv(int8_report / "pareto.csv")["int8_val_accuracy"], before)


def test_a_point_whose_int8_cannot_be_made_is_named_and_the_report_goes_on(study, tmp_path, monkeypatch):
    import search.results._int8 as int8_mod

    def refused(*args, **kwargs):
        raise ExportError("INT8 cannot hold --max-int8-drop 0.5: ...")
    monkeypatch.setattr(int8_mod, "quantize_within", refused)
    copy = tmp_path / "out"
    shutil.copytree(study[2], copy)
    _report_int8(study, copy)
    md = (copy / "report.md").read_text()
    assert "not made — INT8 cannot hold --max-int8-drop 0.5" in md
    assert pd.read_csv(copy / "pareto.csv")["int8_val_accuracy"].isna().all()


@pytest.mark.parametrize("latency", ["all", "recovered"])
def test_the_estimate_counts_report_int8(latency):
    """report.int8 adds its INT8 files to the report's estimated cost; with report.latency none nothing is
    timed, so nothing is quantized either."""
    from types import SimpleNamespace

    from search.config import build_config
    from search.study._estimate import report_seconds

    data = SimpleNamespace(count={"train": 4096, "val": 600, "test": 1000}.__getitem__)  # the Dataset's counts
    opts = SimpleNamespace(write_report=True)

    def cost(**report):
        cfg = build_config(merged({**TINY_LENET, "model": "lenet5"}, report=report), where="t",
                           overrides={"budget": "smoke"})
        return report_seconds(cfg, opts, data, 1e-3)
    assert cost(latency=latency, int8="recovered") > cost(latency=latency, int8="none")
    assert cost(latency="none", int8="recovered") == cost(latency="none", int8="none")
