"""An ONNX export stands alone: copied with the one data file it names it runs anywhere, and a
missing data file is refused in one line."""
from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch

import pruning._export as export_mod
from models import create_model


def _ort(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": x.numpy()})[0]


def _exported_lenet(folder, monkeypatch, embed_limit: int | None = None):
    if embed_limit is not None:
        monkeypatch.setattr(export_mod, "EMBED_LIMIT_BYTES", embed_limit)
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_channels=1).eval()
    x = torch.randn(4, 1, 32, 32)
    folder.mkdir()
    export_mod.export_onnx(model, folder / "m.onnx", x)
    return model, x


@pytest.mark.parametrize("embed_limit, files", [(None, {"m.onnx"}), (0, {"m.onnx", "m.onnx.data"})])
def test_an_export_stands_alone_after_a_copy(embed_limit, files, tmp_path, monkeypatch):
    import shutil
    from pruning import uses_external_data, verify_standalone
    model, x = _exported_lenet(tmp_path / "a", monkeypatch, embed_limit)
    assert {p.name for p in (tmp_path / "a").iterdir()} == files  # no hidden temp file or folder left behind
    assert uses_external_data(tmp_path / "a" / "m.onnx") is (embed_limit == 0)
    (tmp_path / "b").mkdir()
    for name in files:  # what a deployment copies: the export and the one data file it names
        shutil.copyfile(tmp_path / "a" / name, tmp_path / "b" / name)
    with torch.no_grad():
        np.testing.assert_allclose(_ort(tmp_path / "b" / "m.onnx", x), model(x).numpy(), atol=1e-4, rtol=1e-4)
    assert verify_standalone(tmp_path / "a" / "m.onnx", model, x).max_abs_diff <= 1e-4


def test_an_export_missing_its_data_file_is_refused_in_one_line(tmp_path, monkeypatch):
    from pruning import ExportError, verify_standalone
    model, x = _exported_lenet(tmp_path / "a", monkeypatch, 0)
    (tmp_path / "a" / "m.onnx.data").unlink()
    with pytest.raises(ExportError, match="onnxruntime cannot run m.onnx"):
        verify_standalone(tmp_path / "a" / "m.onnx", model, x)


def _ill_conditioned_pruned(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """A timm model pruned by the engine, its BatchNorm recalibrated on images with a large constant
    part (near-constant channels: tiny running variance under a large mean), the state in which a
    pruned EfficientNet-B0's export was refused with 100 % top-1 agreement (issue 39)."""
    from models import parse_source
    from pruning import apply_plan, prunable_units, recalibrate_bn

    torch.manual_seed(0)
    model = parse_source(f"timm:{name}").build(num_classes=4).eval()
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.weight.data.uniform_(0.5, 1.5)  # trained scales; timm zero-inits some, which hides everything
    x = torch.randn(1, 3, 64, 64)
    pruned, _ = apply_plan(model, {u.name: 0.5 for u in prunable_units(model, x)}, example_input=x, round_to=8)
    images = lambda n: 20 + 0.01 * torch.randn(n, 3, 64, 64)  # noqa: E731
    recalibrate_bn(pruned, [images(16) for _ in range(3)])
    return pruned.eval(), images(16)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_large_100"])
def test_a_pruned_timm_efficientnet_and_mobilenetv3_export(name, tmp_path):
    """fp32 itself is uncertain on such a model: the export is held to PyTorch fp32's own error
    against float64, and a wrong export is still refused."""
    from pruning import ExportError, export_onnx, verify_standalone
    model, x = _ill_conditioned_pruned(name)
    export_onnx(model, tmp_path / "m.onnx", x)
    check = verify_standalone(tmp_path / "m.onnx", model, x)
    assert check.top1_agreement == 1.0
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(x.double()).numpy()
        torch_error = np.abs(model(x).numpy() - exact).max()
    ort_error = np.abs(_ort(tmp_path / "m.onnx", x) - exact).max()
    assert ort_error <= export_mod.NOISE_FACTOR * max(torch_error, export_mod.ATOL)
    with torch.no_grad():  # another model under the same file: its logits are off by far more than fp32 noise
        wrong = copy.deepcopy(model)
        next(p for n, p in wrong.named_parameters() if "classifier" in n).mul_(1.05)
    with pytest.raises(ExportError, match="against float64 onnxruntime is off by"):
        verify_standalone(tmp_path / "m.onnx", wrong, x)


def test_non_finite_logits_from_onnxruntime_are_refused(tmp_path, monkeypatch):
    """NaN logits compare unequal yet argmax to class 0: once reported as 100 % top-1 agreement."""
    from pruning import ExportError, verify_onnx
    model, x = _exported_lenet(tmp_path / "a", monkeypatch)
    monkeypatch.setattr(export_mod, "_run_onnx", lambda path, batch: np.full((4, 10), np.nan, np.float32))
    with pytest.raises(ExportError, match="not finite"):
        verify_onnx(tmp_path / "a" / "m.onnx", model, x)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_large_100"])
def test_a_pruned_timm_efficientnet_and_mobilenetv3_quantize_to_int8(name, tmp_path):
    """INT8 through the tools pick --int8 uses (quant_pre_process, quantize_static QDQ): SiLU, hard-swish
    and squeeze-excite go through, every conv is quantized, and the file stands alone from an empty folder
    with logits close to FP32's (random weights on random images: the agreement is measured, the accuracy
    bar is tested on real images in tests/search/test_int8.py)."""
    import shutil

    import onnx

    from models import parse_source
    from pruning import apply_plan, export_onnx, prunable_units, recalibrate_bn
    from pruning._quantize import onnx_predictions, preprocess, quantizable_nodes, quantize

    torch.manual_seed(0)
    model = parse_source(f"timm:{name}").build(num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    pruned, _ = apply_plan(model, {u.name: 0.5 for u in prunable_units(model, x)}, example_input=x, round_to=8)
    images = [torch.randn(16, 3, 64, 64) for _ in range(4)]
    recalibrate_bn(pruned, images[:3])
    fp32 = export_onnx(pruned.eval(), tmp_path / "m.onnx", images[0])
    pre = preprocess(fp32, tmp_path / "pre.onnx")
    batches = [b.numpy() for b in images]
    quantize(pre, tmp_path / "m.int8.onnx", batches[:3], method="minmax", cache=tmp_path / "calibration.json")
    graph = onnx.load(str(tmp_path / "m.int8.onnx")).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    fed = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert convs and all(n.input[1] in fed for n in convs)  # every conv's weight is INT8
    assert len(quantizable_nodes(pre)) >= len(convs)
    (tmp_path / "alone").mkdir()
    alone = shutil.copyfile(tmp_path / "m.int8.onnx", tmp_path / "alone" / "model.onnx")
    got, want = _ort(alone, images[3]), _ort(fp32, images[3])
    assert np.isfinite(got).all() and got.shape == want.shape == (16, 4)
    # INT8 noise, not a wrong graph (near 0): 0.83 / 0.88 measured for these random weights and images
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.5
    agreement = (onnx_predictions(alone, batches[3:]) == onnx_predictions(fp32, batches[3:])).mean()
    assert agreement >= 0.5, agreement  # 4 classes: chance is 0.25
