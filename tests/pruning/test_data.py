from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from pruning.data import _builtin, _dataset
from pruning import DatasetError, load_dataset, train_batches


def test_fashion_mnist_real_images(fashion_mnist):
    d = fashion_mnist
    assert d.train_x.shape == (54000, 1, 32, 32) and d.val_x.shape == (6000, 1, 32, 32)
    assert d.test_x.shape == (10000, 1, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.num_classes == 10 and set(d.test_y.unique().tolist()) == set(range(10))
    # padded from 28x28 with a zero border; real images are not constant inside it
    assert d.train_x[:, :, :2].max() == 0 and d.train_x[:, :, 2:30, 2:30].float().std() > 30


def test_validation_split_is_deterministic_and_disjoint():
    a = load_dataset("synthetic", seed=3, val_fraction=0.2)
    b = load_dataset("synthetic", seed=3, val_fraction=0.2)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    assert a.val_x.shape[0] == 400 and a.train_x.shape[0] == 1600
    train_rows = {bytes(x.numpy()) for x in a.train_x}
    assert not any(bytes(x.numpy()) in train_rows for x in a.val_x)
    c = load_dataset("synthetic", seed=4, val_fraction=0.2)
    assert not torch.equal(a.val_x, c.val_x)


def test_the_holdout_is_the_val_images_the_subset_leaves_out(fashion_mnist):
    from dataclasses import replace
    n = fashion_mnist.val_y.shape[0]
    tagged = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)  # each val image carries its index in two pixels
    tagged[:, 0, 0, 0], tagged[:, 0, 0, 1] = torch.arange(n) // 256, torch.arange(n) % 256
    d = replace(fashion_mnist, val_x=tagged)
    index = lambda ds: {int(x[0, 0, 0]) * 256 + int(x[0, 0, 1]) for x in ds.val_x}  # noqa: E731
    searched = index(d.subset(val=600))
    rest = d.holdout(val=600)
    assert len(searched) == 600 and rest.count("val") == n - 600
    assert not searched & index(rest) and searched | index(rest) == set(range(n))  # disjoint, and all of the split
    drawn = d.holdout(val=600, n=1000)
    assert drawn.count("val") == 1000 and not searched & index(drawn)
    share = torch.bincount(rest.val_y, minlength=10).double() * 1000 / rest.count("val")
    assert (torch.bincount(drawn.val_y, minlength=10) - share).abs().max() < 1  # stratified: each class in proportion
    assert d.holdout(val=n) is None and d.holdout(val=n + 5) is None
    assert torch.equal(d.holdout(val=600).train_x, d.train_x)  # only the val split changes


def test_missing_dataset_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(_builtin, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message


def test_unknown_dataset():
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_mnist_idx_files_in_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    d = load_dataset("mnist", data_dir=tmp_path, download=False, val_fraction=0.1)
    assert d.train_x.shape == (45, 1, 32, 32) and d.val_x.shape == (5, 1, 32, 32) and d.test_x.shape[0] == 20


def _write_cifar_batch(path, n: int, rng, label_key: str) -> None:
    batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: rng.integers(0, 10, n).tolist()}
    path.write_bytes(pickle.dumps(batch))


def test_cifar10_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _write_cifar_batch(folder / f"data_batch_{i}", 20, rng, "labels")
    _write_cifar_batch(folder / "test_batch", 10, rng, "labels")
    d = load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert d.train_x.shape == (90, 3, 32, 32) and d.val_x.shape == (10, 3, 32, 32) and d.test_x.shape == (10, 3, 32, 32)
    assert d.augment == "crop+flip"
    x, y = next(train_batches(d, 16, torch.Generator().manual_seed(0)))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (16,)


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    _write_cifar_batch(folder / "train", 30, rng, "fine_labels")
    _write_cifar_batch(folder / "test", 10, rng, "fine_labels")
    d = load_dataset("cifar100", data_dir=tmp_path, download=False)
    assert d.num_classes == 100 and d.train_x.shape[0] + d.val_x.shape[0] == 30


class _Boom:
    def __reduce__(self):
        return (print, ("code ran",))


def test_cifar_batch_with_foreign_objects_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": _Boom(), "labels": [0]}))
    with pytest.raises(DatasetError, match="builtins.print"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_imagefolder_tree(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("cat", "dog", "fox"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    d = load_dataset("imagefolder", data_dir=tmp_path, val_fraction=0.25)
    assert d.preprocessing.class_names == ("cat", "dog", "fox") and d.preprocessing.resize == "bicubic"
    assert d.num_classes == 3 and d.train_x.shape == (14, 3, 32, 32) and d.test_x.shape == (6, 3, 32, 32)
    assert sorted(d.test_y.tolist()) == [0, 0, 1, 1, 2, 2]


def test_imagefolder_without_train_folder(tmp_path):
    with pytest.raises(DatasetError, match="train"):
        load_dataset("imagefolder", data_dir=tmp_path)


def test_crop_flip_keeps_shape_and_moves_pixels():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 3, 32, 32)
    out = _dataset._crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert not torch.equal(out, x)


def test_crop_flip_without_padding_is_identity_or_mirror():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = _dataset._crop_flip(x, torch.Generator().manual_seed(1), pad=0)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_crop_shifts_by_at_most_the_padding():
    x = torch.zeros(32, 1, 8, 8, dtype=torch.uint8)
    x[:, :, 4, 4] = 255  # one bright pixel
    out = _dataset._crop_flip(x, torch.Generator().manual_seed(2), pad=2)
    for img in out[:, 0]:
        if img.max() > 0:
            r, c = (img == 255).nonzero()[0].tolist()
            assert abs(r - 4) <= 2 and (abs(c - 4) <= 2 or abs(c - 3) <= 2)


def test_imagefolder_needs_two_classes_and_readable_images(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "only").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / "only" / "a.png")
    with pytest.raises(DatasetError, match="1 class folder.*needs at least 2"):
        load_dataset("imagefolder", data_dir=tmp_path)
    for split in ("train", "test"):
        (tmp_path / split / "other").mkdir()
        (tmp_path / split / "other" / "b.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="1 of 2 images are unreadable.*more than 5% is refused"):
        load_dataset("imagefolder", data_dir=tmp_path)
