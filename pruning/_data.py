"""Datasets held as uint8 tensors on the training device, batched and augmented as tensor ops."""
from __future__ import annotations

import gzip
import io
import math
import pickle
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pruning._errors import DatasetError

DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "synthetic")
# Training-time augmentation: "auto" is the dataset's default (pad-crop and flip for natural images,
# none for digits and clothing); flips are wrong for digits and text, so they can be turned off.
AUGMENTATIONS = ("auto", "none", "crop", "flip", "crop+flip")
_DEFAULT_AUGMENT = {"fashion-mnist": "none", "mnist": "none", "cifar10": "crop+flip", "cifar100": "crop+flip",
                    "imagefolder": "crop+flip", "synthetic": "none"}
_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot")
MAX_IMAGE_PIXELS = 50_000_000  # an image folder's file above this is refused (decompression bombs)
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


@dataclass(frozen=True)
class Preprocessing:
    """What a deployment must do to an image before the model sees it, recorded in checkpoints and
    export sidecars: ``x = (pixels / 255 - mean) / std`` on a ``channels`` x 32 x 32 float tensor.

    Attributes:
        channels: 1 (grayscale) or 3 (RGB, channel order R, G, B).
        input_size: height and width the model takes (32).
        pad: zero pixels added on each side of the source image (2 for 28x28 digits and clothing).
        resize: how a source image of another size is brought to ``input_size`` ("none" or "bicubic").
        mean, std: per channel, of pixel values scaled to [0, 1].
        class_names: the label of each output, in order.
    """

    channels: int
    input_size: int
    pad: int
    resize: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class Dataset:
    """Train / validation / test splits as uint8 image tensors (N, C, 32, 32) and int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"  # one of AUGMENTATIONS other than "auto": pad-crop and/or flip while training
    class_names: tuple[str, ...] = ()
    pad: int = 0          # zero border added to the source images (28x28 -> 32x32)
    resize: str = "none"  # how source images were brought to 32x32

    @property
    def preprocessing(self) -> Preprocessing:
        names = self.class_names or tuple(str(i) for i in range(self.num_classes))
        return Preprocessing(channels=self.in_channels, input_size=int(self.train_x.shape[-1]), pad=self.pad,
                             resize=self.resize, mean=tuple(self.mean), std=tuple(self.std), class_names=names)

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device: str | torch.device) -> "Dataset":
        """The same dataset with every tensor on ``device``."""
        moved = {k: getattr(self, k).to(device) for k in
                 ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return replace(self, **moved)

    def subset(self, *, train: int | None = None, val: int | None = None,
               test: int | None = None) -> "Dataset":
        """The first ``train`` / ``val`` / ``test`` examples of each split (None keeps a split whole)."""
        def cut(n: int | None, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return (x, y) if n is None else (x[:n], y[:n])
        tx, ty = cut(train, self.train_x, self.train_y)
        vx, vy = cut(val, self.val_x, self.val_y)
        sx, sy = cut(test, self.test_x, self.test_y)
        return replace(self, train_x=tx, train_y=ty, val_x=vx, val_y=vy, test_x=sx, test_y=sy)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> normalized float32 (one fused affine map: x * scale + shift)."""
        scale, shift = _affine(self.mean, self.std, x.device)
        return x.float().mul_(scale).add_(shift)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A normalized batch of training images, for tracing and measuring."""
        return self.normalize(self.train_x[:batch])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


_AFFINE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
    key = (mean, std, str(device))
    if key not in _AFFINE:
        m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=device).view(1, -1, 1, 1)
        _AFFINE[key] = (1.0 / (255.0 * s), -m / s)
    return _AFFINE[key]


def train_batches(data: Dataset, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, augmented, normalized training batches (the last partial batch dropped)."""
    n = data.train_x.shape[0]
    order = torch.randperm(n, generator=generator).to(data.device)
    for start in range(0, n - batch_size + 1, batch_size) if n >= batch_size else [0]:
        idx = order[start:start + batch_size]
        x = data.train_x[idx]
        if data.augment != "none":
            x = _crop_flip(x, generator, crop="crop" in data.augment, flip="flip" in data.augment)
        yield data.normalize(x), data.train_y[idx]


def eval_batches(data: Dataset, split: str, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalized batches of a split, in order, without augmentation."""
    x, y = data.split(split)
    for start in range(0, x.shape[0], batch_size):
        yield data.normalize(x[start:start + batch_size]), y[start:start + batch_size]


_SHIFT_TABLES: dict[tuple, torch.Tensor] = {}


def _shift_table(h: int, w: int, pad: int, device: torch.device) -> torch.Tensor:
    """Flat source indices into a padded image for every (flip, dy, dx): (2 * (2 * pad + 1) ** 2, h * w)."""
    key = (h, w, pad, str(device))
    if key not in _SHIFT_TABLES:
        rows, cols, width = torch.arange(h)[:, None], torch.arange(w)[None, :], w + 2 * pad
        _SHIFT_TABLES[key] = torch.stack([
            ((rows + dy) * width + (c + dx)).reshape(-1)
            for c in (cols, cols.flip(-1)) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
        ]).to(device)
    return _SHIFT_TABLES[key]


def _crop_flip(x: torch.Tensor, generator: torch.Generator, *, crop: bool = True, flip: bool = True,
               pad: int = 4) -> torch.Tensor:
    """Random pad-crop and/or horizontal flip of a whole batch: one gather from a padded copy."""
    b, c, h, w = x.shape
    table = _shift_table(h, w, pad, x.device)
    shifts = (2 * pad + 1) ** 2
    if crop and flip:
        choice = torch.randint(0, table.shape[0], (b,), generator=generator)
    elif crop:
        choice = torch.randint(0, shifts, (b,), generator=generator)
    else:  # flip only: the centered crop, mirrored or not
        choice = torch.randint(0, 2, (b,), generator=generator) * shifts + pad * (2 * pad + 1) + pad
    choice = choice.to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad)).reshape(b, c, -1)
    return padded.gather(2, table[choice].unsqueeze(1).expand(b, c, h * w)).view(b, c, h, w)


def load_dataset(name: str, *, data_dir: str | Path = "data", val_fraction: float = 0.1,
                 seed: int = 0, download: bool = True, augment: str = "auto") -> Dataset:
    """Load a dataset as tensors on the CPU, with a validation split carved from the training set.

    Args:
        name: one of ``DATASETS``.
        data_dir: where datasets are looked for (and downloaded to).
        val_fraction: fraction of the training set held out for validation (fixed by ``seed``).
        seed: seed of the validation split.
        download: allow torchvision to download a missing dataset.
        augment: one of ``AUGMENTATIONS``; ``auto`` takes the dataset's default.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if augment not in AUGMENTATIONS:
        raise DatasetError(f"unknown augmentation {augment!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}")
    data_dir = Path(data_dir)
    pad, resize, names = 0, "none", ()
    if name in ("fashion-mnist", "mnist"):
        (trx, try_), (tex, tey) = _load_idx(name, data_dir, download)
        pad = (32 - trx.shape[-1]) // 2
        trx, tex = F.pad(trx, (pad,) * 4), F.pad(tex, (pad,) * 4)
        classes, stats = 10, _STATS[name]
        names = _FASHION_CLASSES if name == "fashion-mnist" else tuple(str(i) for i in range(10))
    elif name in ("cifar10", "cifar100"):
        (trx, try_), (tex, tey) = _load_cifar(name, data_dir, download)
        classes, stats = (10 if name == "cifar10" else 100), _STATS[name]
    elif name == "imagefolder":
        (trx, try_), (tex, tey), names = _load_imagefolder(data_dir)
        classes, stats, resize = len(names), _channel_stats(trx), "bicubic"
    else:
        (trx, try_), (tex, tey) = synthetic_splits(seed=seed)
        classes, stats = 10, _channel_stats(trx)
    if trx.shape[0] < 2:
        raise DatasetError(f"{name} has {trx.shape[0]} training images; a validation split needs at least 2")
    perm = torch.randperm(trx.shape[0], generator=torch.Generator().manual_seed(seed))
    n_val = min(trx.shape[0] - 1, max(1, int(round(val_fraction * trx.shape[0]))))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return Dataset(name=name, train_x=trx[train_idx], train_y=try_[train_idx],
                   val_x=trx[val_idx], val_y=try_[val_idx], test_x=tex, test_y=tey,
                   num_classes=classes, mean=stats[0], std=stats[1],
                   augment=_DEFAULT_AUGMENT[name] if augment == "auto" else augment,
                   class_names=tuple(names), pad=pad, resize=resize)


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.float().div(255)
    return tuple(xf.mean(dim=(0, 2, 3)).tolist()), tuple(xf.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())


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


# --- ImageFolder ---------------------------------------------------------------------------------

def _load_imagefolder(data_dir: Path):
    from PIL import Image
    from torchvision.datasets import ImageFolder

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # PIL raises DecompressionBombError above twice this

    for sub in ("train", "test"):
        if not (data_dir / sub).is_dir():
            raise DatasetError(f"imagefolder needs {data_dir / sub}/<class>/<image> folders; "
                               f"pass --data-dir pointing at a folder with train/ and test/")
    try:
        train, test = ImageFolder(str(data_dir / "train")), ImageFolder(str(data_dir / "test"))
    except (FileNotFoundError, OSError) as exc:
        raise DatasetError(f"{data_dir}: {str(exc).splitlines()[0][:200]}") from None
    if train.classes != test.classes:
        raise DatasetError(f"{data_dir}: train/ and test/ have different class folders")
    if len(train.classes) < 2:
        raise DatasetError(f"{data_dir}: an image classification set needs at least 2 class folders")

    def read(folder: ImageFolder):
        xs = []
        for path, _ in folder.samples:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    img = folder.loader(path).convert("RGB").resize((32, 32), Image.BICUBIC)
            except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                raise DatasetError(f"cannot read image {path}: {detail}") from None
            xs.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
        if not xs:
            raise DatasetError(f"{folder.root} has no images")
        return torch.stack(xs), torch.tensor(folder.targets, dtype=torch.int64)
    return read(train), read(test), tuple(train.classes)


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
