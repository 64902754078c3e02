"""Image folders at any size: decoded once into a cache or streamed from their files (the same
batches either way), stratified subsets, optional val/ and test/, and odd folders refused or
skipped with one line."""
from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from pruning import DatasetError, load_dataset, train_batches
from pruning.data import eval_batches, stratified_indices
from pruning import ImageSpec
from tests.conftest import write_image_folder

SPEC = ImageSpec(input_size=32, crop_pct=0.875, interpolation="bilinear", channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, fashion_mnist):
    return write_image_folder(tmp_path_factory.mktemp("folder"), fashion_mnist, per_class=40)


def test_cache_and_streaming_give_the_same_batches(folder):
    cached = load_dataset("imagefolder", data_dir=folder, image=SPEC)
    streamed = load_dataset("imagefolder", data_dir=folder, image=SPEC, cache_mb=0.01, workers=2)
    assert not cached.streamed and streamed.streamed and any("streamed" in n for n in streamed.notes)
    assert cached.train_x.shape == streamed.train_x.shape == (144, 3, 37, 37)
    assert cached.augment == "rrc+flip"
    pairs = zip(train_batches(cached, 16, torch.Generator().manual_seed(3)),
                train_batches(streamed, 16, torch.Generator().manual_seed(3)))
    for (xa, ya), (xb, yb) in pairs:
        assert xa.shape == (16, 3, 32, 32) and torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, _), (xb, _) in zip(eval_batches(cached, "test", 50), eval_batches(streamed, "test", 50)):
        assert torch.equal(xa, xb)


class _OtherPipeline:
    """A pipeline of a test's own (the shape a GPU decoder would take): a split's images as an
    object that is not a tensor and answers what StreamedImages answers, here from a tensor it holds
    and counts its batches."""

    def __init__(self, images: torch.Tensor, served: list) -> None:
        self.images, self.served = images, served

    @property
    def shape(self):
        return tuple(self.images.shape)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, key) -> torch.Tensor:
        return next(iter(self.batches([key])))

    def to(self, device):
        return _OtherPipeline(self.images.to(device), self.served)

    def select(self, idx: torch.Tensor):
        return _OtherPipeline(self.images[idx], self.served)

    def batches(self, keys):
        for key in keys:
            self.served.append(key)
            yield self.images[key]


def test_a_new_pipeline_is_one_class_the_batching_never_names(folder, monkeypatch):
    """The extension cost of a new image pipeline: a Pipeline subclass (here defined in the test; in
    the product, a module of pruning.data.pipelines) whose split objects are like _OtherPipeline. It
    registers by being defined, the folder loader chooses it by its rank, and training batches,
    evaluation batches, inputs, subsets and the device move agree with the cached tensors'."""
    from pruning.data import _pipeline
    from pruning.data.pipelines.cached import Cached

    cached = load_dataset("imagefolder", data_dir=folder, image=SPEC)
    _pipeline.pipelines()  # the package's pipelines registered (once per process) before the registry is copied
    monkeypatch.setattr(_pipeline, "PIPELINES", dict(_pipeline.PIPELINES))  # the test's class joins a copy
    served: list = []

    class Other(_pipeline.Pipeline):
        name, rank = "other", 99

        def wants(self, f: _pipeline.Folder) -> bool:
            return True

        def load(self, paths, labels, f, interpolation):
            x, y, bad = Cached().load(paths, labels, f, interpolation)
            return _OtherPipeline(x, served), y, bad

        def note(self, f):
            return f"held by the test's pipeline: {f.images} images"

    other = load_dataset("imagefolder", data_dir=folder, image=SPEC)
    assert other.streamed and not cached.streamed and "held by the test's pipeline: 320 images" in other.notes
    for (xa, ya), (xb, yb) in zip(train_batches(cached, 16, torch.Generator().manual_seed(3)),
                                  train_batches(other.to("cpu"), 16, torch.Generator().manual_seed(3))):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, _), (xb, _) in zip(eval_batches(cached, "val", 50), eval_batches(other, "val", 50)):
        assert torch.equal(xa, xb)
    assert torch.equal(cached.inputs("test", 5, 3), other.inputs("test", 5, 3))
    small, small_other = cached.subset(train=40), other.subset(train=40)
    assert torch.equal(small.inputs("train", 40), small_other.inputs("train", 40))
    assert len(served) > 10  # the batches came through the pipeline, not around it

    class Tuned(Other):  # no name of its own: not registered, nothing replaced
        rank = 100
    assert "other" in _pipeline.PIPELINES and type(_pipeline.PIPELINES["other"]) is Other
    with pytest.raises(TypeError, match="pipeline name 'cached' .* is taken by pruning.data.pipelines.cached.Cached"):
        class Clash(_pipeline.Pipeline):
            name = "cached"


def test_the_pipelines_are_the_modules_of_their_package():
    """Every module of pruning.data.pipelines is imported and registers its pipeline: the cached one
    is asked first and holds what fits the cache, the streamed one holds anything."""
    from pathlib import Path

    from pruning.data import _pipeline, pipelines

    modules = {p.stem for p in Path(pipelines.__file__).parent.glob("*.py") if p.stem != "__init__"}
    found = _pipeline.pipelines()
    assert {type(p).__module__.rsplit(".", 1)[1] for p in found} == modules == {"cached", "streamed"}
    small = _pipeline.Folder(images=100, channels=3, side=32, cache_mb=1.0, workers=0)
    large = _pipeline.Folder(images=10_000, channels=3, side=32, cache_mb=1.0, workers=0)
    assert _pipeline.choose(small).name == "cached" and _pipeline.choose(large).name == "streamed"


def test_preprocessing_records_the_resize_and_crop(folder):
    pre = load_dataset("imagefolder", data_dir=folder, image=SPEC).preprocessing
    assert (pre.input_size, pre.resize_size, pre.resize, pre.channels) == (32, 37, "bilinear", 3)
    assert pre.class_names == ("class0", "class1", "class2", "class3")


def test_subsets_are_stratified_draws_not_the_first_files(folder):
    data = load_dataset("imagefolder", data_dir=folder, image=SPEC).subset(train=40, test=20)
    assert data.train_y.bincount().tolist() == [10, 10, 10, 10]
    assert data.test_y.bincount().tolist() == [5, 5, 5, 5]
    labels = torch.tensor([0] * 90 + [1] * 10)
    picked = stratified_indices(labels, 10)
    assert labels[picked].bincount().tolist() == [9, 1] and len(set(picked.tolist())) == 10


def test_val_folder_is_used_and_a_missing_test_folder_means_no_test_figures(tmp_path, fashion_mnist):
    root = write_image_folder(tmp_path, fashion_mnist, per_class=12, splits=("train", "val"))
    data = load_dataset("imagefolder", data_dir=root, image=SPEC)
    assert data.val_y.shape[0] == 48 and data.train_y.shape[0] == 48
    assert not data.has_test and any("no test/" in n for n in data.notes)


def _odd_folder(tmp_path, fashion_mnist):
    return write_image_folder(tmp_path, fashion_mnist, per_class=30, splits=("train",), classes=2)


def test_a_few_unreadable_files_are_counted_and_skipped(tmp_path, fashion_mnist):
    root = _odd_folder(tmp_path, fashion_mnist)
    (root / "train" / "class0" / "zero.png").write_bytes(b"")
    (root / "train" / "class1" / "notes.txt").write_text("not an image: ignored")
    os.symlink(root / "train", root / "train" / "class1" / "loop")  # a link loop is never followed
    data = load_dataset("imagefolder", data_dir=root, image=SPEC)
    assert data.train_y.shape[0] + data.val_y.shape[0] == 60
    assert any("skipped 1 unreadable image" in n and "zero.png" in n for n in data.notes)


def test_many_unreadable_files_are_refused(tmp_path, fashion_mnist):
    root = _odd_folder(tmp_path, fashion_mnist)
    for i in range(5):
        (root / "train" / "class0" / f"corrupt{i}.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match="5 of 65 images are unreadable"):
        load_dataset("imagefolder", data_dir=root, image=SPEC)


def test_a_decompression_bomb_is_refused_never_skipped(tmp_path, fashion_mnist):
    root = _odd_folder(tmp_path, fashion_mnist)
    Image.new("1", (9000, 9000)).save(root / "train" / "class0" / "bomb.png")  # 81 Mpixel, a few KB
    with pytest.raises(DatasetError, match="decompression bomb"):
        load_dataset("imagefolder", data_dir=root, image=SPEC)
    with pytest.raises(DatasetError, match="decompression bomb"):
        load_dataset("imagefolder", data_dir=root, image=SPEC, cache_mb=0)


def test_one_class_a_file_as_data_dir_and_other_classes_in_test_are_refused(tmp_path, fashion_mnist):
    root = write_image_folder(tmp_path / "a", fashion_mnist, per_class=3, classes=1)
    with pytest.raises(DatasetError, match="1 class folder"):
        load_dataset("imagefolder", data_dir=root, image=SPEC)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        load_dataset("imagefolder", data_dir=tmp_path / "file", image=SPEC)
    root = write_image_folder(tmp_path / "b", fashion_mnist, per_class=3, classes=2)
    (root / "test" / "class9").mkdir()
    with pytest.raises(DatasetError, match=r"test has class folder\(s\) class9 that .*train lacks"):
        load_dataset("imagefolder", data_dir=root, image=SPEC)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder; permissions cannot deny it here")
def test_an_unreadable_class_folder_is_one_line(tmp_path, fashion_mnist):
    root = _odd_folder(tmp_path, fashion_mnist)
    (root / "train" / "class1").chmod(0)
    try:
        with pytest.raises(DatasetError, match="permission denied"):
            load_dataset("imagefolder", data_dir=root, image=SPEC)
    finally:
        (root / "train" / "class1").chmod(0o755)


def test_a_builtin_dataset_follows_the_models_input(fashion_mnist):
    spec = ImageSpec(input_size=48, crop_pct=0.875, interpolation="bilinear", channels=3,
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    data = load_dataset("fashion-mnist", download=False, image=spec).subset(train=64, val=32, test=32)
    assert data.train_x.shape[1:] == (3, 48, 48) and data.example_input(2).shape == (2, 3, 48, 48)
    assert data.augment == "none"


def _header_bomb(path) -> None:
    """A valid 1x1 PNG whose header claims 200,000 x 200,000 pixels (40 gigapixels): PIL itself
    raises on opening it, before our own pixel bound is reached."""
    import struct
    import zlib
    from io import BytesIO

    buffer = BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    raw = bytearray(buffer.getvalue())
    raw[16:24] = struct.pack(">II", 200_000, 200_000)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))  # the header chunk's CRC, resealed
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("cache_mb", [4096, 0], ids=["cached", "streamed"])
def test_a_header_bomb_is_refused_cached_and_streamed_alike(tmp_path, fashion_mnist, cache_mb):
    """Streaming used to skip it as one more unreadable file, while the cache refused it."""
    root = _odd_folder(tmp_path, fashion_mnist)
    _header_bomb(root / "train" / "class0" / "bomb.png")
    with pytest.raises(DatasetError, match="decompression bomb"):
        load_dataset("imagefolder", data_dir=root, image=SPEC, cache_mb=cache_mb)


@pytest.mark.parametrize("cache_mb", [4096, 0], ids=["cached", "streamed"])
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_a_special_file_in_a_class_folder_is_refused_before_it_is_opened(tmp_path, fashion_mnist, cache_mb, kind):
    """Opening a FIFO waits for a writer forever and /dev/zero never ends: refused by type."""
    from tests.search.test_fuzz import no_hang

    root = _odd_folder(tmp_path, fashion_mnist)
    odd = root / "train" / "class1" / "odd.png"
    os.mkfifo(odd) if kind == "fifo" else os.symlink("/dev/zero", odd)
    with no_hang(60), pytest.raises(DatasetError, match=f"{odd} is a (named pipe|character device).*not an image"):
        load_dataset("imagefolder", data_dir=root, image=SPEC, cache_mb=cache_mb)


def test_hidden_folders_are_left_out_and_said_so(tmp_path, fashion_mnist):
    root = _odd_folder(tmp_path, fashion_mnist)
    (root / "train" / ".ipynb_checkpoints").mkdir()
    data = load_dataset("imagefolder", data_dir=root, image=SPEC)
    assert data.class_names == ("class0", "class1")
    assert any("left out hidden folder(s) .ipynb_checkpoints" in n for n in data.notes), data.notes


def test_an_empty_class_folder_is_named_not_called_a_split_mismatch(tmp_path, fashion_mnist):
    root = write_image_folder(tmp_path, fashion_mnist, per_class=3, classes=3)
    for f in (root / "train" / "class2").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=r"train/class2 has no image files .*; every class needs training images"):
        load_dataset("imagefolder", data_dir=root, image=SPEC)


def test_a_class_folder_missing_from_a_split_is_named_with_the_reason(tmp_path, fashion_mnist):
    """A dangling link in train/ left the class out silently, then test/ was "other class folders"."""
    root = write_image_folder(tmp_path, fashion_mnist, per_class=3, classes=3)
    (root / "train" / "class2").rename(tmp_path / "moved")
    os.symlink(tmp_path / "gone", root / "train" / "class2")
    with pytest.raises(DatasetError, match=r"train/class2 is a symbolic link to .*gone, which is not a folder"):
        load_dataset("imagefolder", data_dir=root, image=SPEC)
    (root / "train" / "class2").unlink()
    with pytest.raises(DatasetError, match=r"test has class folder\(s\) class2 that .*train lacks"):
        load_dataset("imagefolder", data_dir=root, image=SPEC)
