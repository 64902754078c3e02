"""The built-in datasets (Fashion-MNIST, MNIST, CIFAR-10/100, synthetic) read from their files,
and :func:`load_dataset`, the one way a study gets its data."""
from __future__ import annotations

import gzip
import io
import math
import pickle
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pruning._errors import DatasetError
from pruning._preprocessing import ImageSpec
from pruning.data._dataset import Dataset
from pruning.data._folder import _load_imagefolder
from pruning.data._splits import _carve, _channel_stats


DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "synthetic")
# Training-time augmentation: "auto" is the dataset's default (pad-crop and flip for natural images,
# none for digits and clothing); flips are wrong for digits and text, so they can be turned off.
# "rrc" is the random-resized crop of ImageNet training (from the cached, larger image to the input).
AUGMENTATIONS = ("auto", "none", "crop", "flip", "crop+flip", "rrc", "rrc+flip")
_DEFAULT_AUGMENT = {"fashion-mnist": "none", "mnist": "none", "cifar10": "crop+flip", "cifar100": "crop+flip",
                    "imagefolder": "crop+flip", "synthetic": "none"}
_MAX_TENSOR_MB = 8000  # a built-in set resized above this is refused with the size that fits
_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Per-channel mean/std of the training images (the usual published values).
_STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def load_dataset(name: str, *, data_dir: str | Path = "data", val_fraction: float = 0.1,
                 seed: int = 0, download: bool = True, augment: str = "auto", image: ImageSpec | None = None,
                 cache_mb: float = 4096, workers: int = 2) -> Dataset:
    """Load a dataset with a validation split carved from the training set (an image folder's own
    ``val/`` is used where it has one).

    Args:
        name: one of ``DATASETS``.
        data_dir: where datasets are looked for (and downloaded to).
        val_fraction: fraction of the training set held out for validation (fixed by ``seed``).
        seed: seed of the validation split.
        download: allow torchvision to download a missing dataset.
        augment: one of ``AUGMENTATIONS``; ``auto`` takes the dataset's default.
        image: the model's input (size, crop, channels, normalization); None: 32x32 as stored.
        cache_mb: an image folder whose decoded images fit in this many MB is cached in memory;
            a larger one is streamed from its files.
        workers: processes that decode an image folder's files.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if augment not in AUGMENTATIONS:
        raise DatasetError(f"unknown augmentation {augment!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}")
    data_dir, image = Path(data_dir), image or ImageSpec()
    if name == "imagefolder":
        data = _load_imagefolder(data_dir, image, val_fraction=val_fraction, seed=seed, cache_mb=cache_mb,
                                 workers=workers)
    else:
        data = _load_tensors(name, data_dir, val_fraction=val_fraction, seed=seed, download=download, image=image)
    if augment == "auto":  # an image folder cached above the input size gets ImageNet's training crops
        larger = data.train_x.shape[-1] > data.input_size
        augment = "rrc+flip" if name == "imagefolder" and larger else _DEFAULT_AUGMENT[name]
    return replace(data, augment=augment)


def _load_tensors(name: str, data_dir: Path, *, val_fraction: float, seed: int, download: bool,
                  image: ImageSpec) -> Dataset:
    """A built-in dataset (32x32 tensors), resized and converted to the model's input if it asks."""
    pad, names = 0, ()
    if name in ("fashion-mnist", "mnist"):
        (trx, try_), (tex, tey) = _load_idx(name, data_dir, download)
        pad = (32 - trx.shape[-1]) // 2
        trx, tex = F.pad(trx, (pad,) * 4), F.pad(tex, (pad,) * 4)
        classes = 10
        names = _FASHION_CLASSES if name == "fashion-mnist" else tuple(str(i) for i in range(10))
    elif name in ("cifar10", "cifar100"):
        (trx, try_), (tex, tey) = _load_cifar(name, data_dir, download)
        classes = 10 if name == "cifar10" else 100
    else:
        (trx, try_), (tex, tey) = synthetic_splits(seed=seed)
        classes = 10
    resize, side = "none", image.input_size  # 28-32 pixel sources: resized to the input, no crop
    channels = image.channels or trx.shape[1]
    need_mb = (trx.shape[0] + tex.shape[0]) * channels * side * side / 1e6
    if need_mb > _MAX_TENSOR_MB:
        raise DatasetError(f"{name} at {side}x{side} would take {need_mb / 1000:.1f} GB in memory; pass a smaller "
                           f"--image-size (e.g. 64) for these {trx.shape[-1]}-pixel images")
    if side != trx.shape[-1]:
        trx, tex = (_resize_tensor(t, side, image.interpolation) for t in (trx, tex))
        resize = image.interpolation
    if image.channels and image.channels != trx.shape[1]:
        trx, tex = (_to_channels(t, image.channels) for t in (trx, tex))
    stats = _STATS.get(name) if image.channels in (None, trx.shape[1]) and resize == "none" else None
    stats = stats if stats and len(stats[0]) == trx.shape[1] else _channel_stats(trx)
    (trx, try_), (vx, vy) = _carve(trx, try_, name, val_fraction, seed)
    return Dataset(name=name, train_x=trx, train_y=try_, val_x=vx, val_y=vy, test_x=tex, test_y=tey,
                   num_classes=classes, mean=image.mean or stats[0], std=image.std or stats[1], class_names=names,
                   pad=pad, resize=resize, input_size=image.input_size)


def _resize_tensor(x: torch.Tensor, side: int, interpolation: str) -> torch.Tensor:
    out = []
    for chunk in x.split(4096):  # bounded memory for the float copy
        out.append(F.interpolate(chunk.float(), size=(side, side), mode=interpolation, antialias=True,
                                 align_corners=False).round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else x.new_zeros((0, x.shape[1], side, side))


def _to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 3 and x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and x.shape[1] == 3:  # ITU-R 601 luma, as PIL's convert("L")
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (x.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise DatasetError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")


# --- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------------------

_MAX_IDX_BYTES = 1 << 30  # 1 GiB decompressed: the largest MNIST-style file is 47 MB


def _read_idx(path: Path, ndim_expected: int) -> np.ndarray:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                raw = handle.read(_MAX_IDX_BYTES + 1)
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt gzip
        raise DatasetError(f"{path} is not a readable gzip file ({type(exc).__name__}); "
                           f"download or reinstall it") from None
    if len(raw) > _MAX_IDX_BYTES:
        raise DatasetError(f"{path} is larger than 1 GiB uncompressed; not an MNIST-style IDX file")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim_expected:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file of {ndim_expected} dimension(s)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim_expected, offset=4)) \
        if len(raw) >= 4 + 4 * ndim_expected else ()
    if len(dims) != ndim_expected or len(raw) - 4 - 4 * ndim_expected != math.prod(dims) \
            or (ndim_expected == 3 and dims[1:] != (28, 28)):
        raise DatasetError(f"{path} is truncated or malformed: its header says {dims}, "
                           f"its body has {max(0, len(raw) - 4 - 4 * ndim_expected)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim_expected).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _idx_folders(name: str, data_dir: Path) -> list[Path]:
    tv_name = "FashionMNIST" if name == "fashion-mnist" else "MNIST"
    folders = [data_dir, data_dir / tv_name / "raw"]
    if name == "fashion-mnist":
        folders.append(DEBIAN_FASHION_MNIST)
    return folders


def _load_idx(name: str, data_dir: Path, download: bool):
    folders = _idx_folders(name, data_dir)
    folder = next((f for f in folders if all(_find_idx(f, s) for pair in _IDX_FILES.values() for s in pair)), None)
    if folder is None and download:
        _download(name, data_dir)
        folder = data_dir / ("FashionMNIST" if name == "fashion-mnist" else "MNIST") / "raw"
    if folder is None:
        hint = ("install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or "
                if name == "fashion-mnist" else "")
        raise DatasetError(f"{name} not found in {', '.join(map(str, folders))} and download is off; "
                           f"{hint}put the IDX files in {data_dir} or allow the download")
    splits = []
    for images, labels in _IDX_FILES.values():
        x = torch.from_numpy(_read_idx(_find_idx(folder, images), 3).copy()).unsqueeze(1)
        y = torch.from_numpy(_read_idx(_find_idx(folder, labels), 1).astype(np.int64))
        if x.shape[0] != y.shape[0]:
            raise DatasetError(f"{folder}: {images} has {x.shape[0]} images but {labels} {y.shape[0]} labels")
        if y.numel() and int(y.max()) > 9:
            raise DatasetError(f"{folder}: {labels} has label {int(y.max())}; MNIST-style sets have labels 0-9")
        splits.append((x, y))
    return splits


def _download(name: str, data_dir: Path) -> None:
    import torchvision.datasets as tvd

    try:
        if name == "fashion-mnist":
            tvd.FashionMNIST(str(data_dir), download=True)
        elif name == "mnist":
            tvd.MNIST(str(data_dir), download=True)
        else:
            from torchvision.datasets.utils import download_and_extract_archive

            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            download_and_extract_archive(cls.url, str(data_dir), filename=cls.filename, md5=cls.tgz_md5)
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        hint = " or install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)" \
            if name == "fashion-mnist" else ""
        raise DatasetError(f"{name} is not in {data_dir} and downloading it failed "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                           f"connect to the network{hint}") from None


# --- CIFAR (python pickle batches, read with a loader that only builds numpy arrays) ------------

class _ArrayUnpickler(pickle.Unpickler):
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise DatasetError(f"CIFAR batch refers to {module}.{name}, which a dataset file never needs")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
        if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 99)):
            raise ValueError("labels do not match the images")
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"{path} is not a CIFAR batch file ({type(exc).__name__})") from None
    return torch.from_numpy(data.copy()), torch.from_numpy(labels)


def _load_cifar(name: str, data_dir: Path, download: bool):
    if name == "cifar10":
        folder, train_files, test_files, key = data_dir / "cifar-10-batches-py", \
            [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"
    else:
        folder, train_files, test_files, key = data_dir / "cifar-100-python", ["train"], ["test"], "fine_labels"
    if not all((folder / f).is_file() for f in train_files + test_files):
        if not download:
            raise DatasetError(f"{name} not found in {folder} and download is off; allow the download "
                               f"or unpack the python version of {name} into {data_dir}")
        _download(name, data_dir)

    def read(files: list[str]):
        parts = [_read_cifar_batch(folder / f, key) for f in files]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return read(train_files), read(test_files)


# --- synthetic (tests only) ------------------------------------------------------------------------

def synthetic_splits(*, seed: int = 0, train: int = 2000, test: int = 500, classes: int = 10,
                     channels: int = 1) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Class-dependent patterns plus noise, as uint8 images: learnable, and for tests only."""
    g = torch.Generator().manual_seed(1234)
    patterns = torch.rand(classes, channels, 32, 32, generator=g)
    g.manual_seed(seed + 1)

    def make(n: int):
        y = torch.randint(0, classes, (n,), generator=g)
        x = 0.6 * patterns[y] + 0.4 * torch.rand(n, channels, 32, 32, generator=g)
        return (x * 255).round().to(torch.uint8), y
    return make(train), make(test)
