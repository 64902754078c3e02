"""An ONNX export stands alone: copied with the one data file it names it runs anywhere, and a
missing data file is refused in one line."""
from __future__ import annotations

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
