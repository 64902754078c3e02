"""Datasets held as uint8 tensors on the training device, batched and augmented as tensor ops."""
from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import stat
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
# "rrc" is the random-resized crop of ImageNet training (from the cached, larger image to the input).
AUGMENTATIONS = ("auto", "none", "crop", "flip", "crop+flip", "rrc", "rrc+flip")
_DEFAULT_AUGMENT = {"fashion-mnist": "none", "mnist": "none", "cifar10": "crop+flip", "cifar100": "crop+flip",
                    "imagefolder": "crop+flip", "synthetic": "none"}
INTERPOLATIONS = ("bilinear", "bicubic")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_MAX_TENSOR_MB = 8000  # a built-in set resized above this is refused with the size that fits
MAX_BAD_SHARE = 0.05  # unreadable files in an image folder: skipped and counted up to this share, refused above
RRC_SCALE = (0.25, 1.0)  # area share of a random-resized crop (timm's fine-tuning recipes use 0.08-1; small sets
RRC_RATIO = (3 / 4, 4 / 3)  # lose too much at 0.08)
_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot")
MAX_INPUT_SIZE = 4096  # the largest model input side a checkpoint may record
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
    export sidecars: bring it to ``channels`` x ``input_size`` x ``input_size``, then
    ``x = (pixels / 255 - mean) / std`` per channel.

    Attributes:
        channels: 1 (grayscale) or 3 (RGB, channel order R, G, B; a grayscale image is replicated).
        input_size: height and width the model takes.
        pad: zero pixels added on each side of the source image (2 for 28x28 digits and clothing).
        resize: the interpolation of the resize ("none": the source already has the size, or is padded).
        mean, std: per channel, of pixel values scaled to [0, 1].
        class_names: the label of each output, in order.
        resize_size: the shorter side is resized to this, then the centre ``input_size`` square is
            cropped (the usual evaluation transform); None: resized straight to ``input_size``.
    """

    channels: int
    input_size: int
    pad: int
    resize: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    resize_size: int | None = None

    def __post_init__(self) -> None:
        """Values a deployment can follow (a forged or hand-edited checkpoint is refused here)."""
        if self.channels not in (1, 3):
            raise ValueError(f"preprocessing.channels must be 1 or 3, got {self.channels}")
        if not 1 <= self.input_size <= MAX_INPUT_SIZE:
            raise ValueError(f"preprocessing.input_size must be 1..{MAX_INPUT_SIZE} pixels, got {self.input_size}")
        if not 0 <= self.pad < self.input_size:
            raise ValueError(f"preprocessing.pad must be 0..{self.input_size - 1}, got {self.pad}")
        if self.resize not in ("none", *INTERPOLATIONS):
            raise ValueError(f"preprocessing.resize must be one of none, {', '.join(INTERPOLATIONS)}; "
                             f"got {str(self.resize)[:40]!r}")
        if self.resize_size is not None and not self.input_size <= self.resize_size <= 4 * MAX_INPUT_SIZE:
            raise ValueError(f"preprocessing.resize_size must be at least the input size {self.input_size}, "
                             f"got {self.resize_size}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.channels or not all(math.isfinite(v) for v in values):
                raise ValueError(f"preprocessing.{name} must be {self.channels} finite numbers, got {values[:8]}")
        if min(self.std) <= 0:
            raise ValueError(f"preprocessing.std must be positive, got {self.std}")
        if not all(isinstance(c, str) and 0 < len(c) <= 200 for c in self.class_names):
            raise ValueError("preprocessing.class_names must be non-empty names of at most 200 characters")


@dataclass(frozen=True)
class ImageSpec:
    """How images are brought to a model's input (from its source's defaults and the config).

    Attributes:
        input_size: height and width the model takes.
        crop_pct: evaluation crop: the shorter side is resized to ``input_size / crop_pct`` and the
            centre ``input_size`` square kept (1.0: resized straight to the input size).
        interpolation: one of ``INTERPOLATIONS``.
        channels: 1 or 3 to convert the images to; None keeps the dataset's.
        mean, std: normalization; None takes the dataset's own statistics.
    """

    input_size: int = 32
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def side(self) -> int:
        """The side of the cached square images (at least the input size)."""
        return max(self.input_size, int(round(self.input_size / self.crop_pct)))


def image_spec_of(pre: "Preprocessing") -> ImageSpec:
    """The :class:`ImageSpec` that reproduces a recorded preprocessing (exports verify on it)."""
    crop = pre.input_size / pre.resize_size if pre.resize_size else 1.0
    return ImageSpec(input_size=pre.input_size, crop_pct=crop, interpolation=pre.resize if pre.resize in
                     INTERPOLATIONS else "bicubic", channels=pre.channels, mean=tuple(pre.mean), std=tuple(pre.std))


@dataclass(frozen=True)
class Dataset:
    """Train / validation / test splits as uint8 images (N, C, S, S) and int64 labels: tensors
    (cached, on the training device) or :class:`StreamedImages` (decoded from files batch by batch).
    Images larger than ``input_size`` are centre-cropped for evaluation and cropped by the
    augmentation for training. A missing test split has no images (its figures are absent)."""

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
    resize: str = "none"  # the interpolation that brought source images to the cached size
    input_size: int = 0   # the model's input side (0: the cached side)
    resize_size: int | None = None  # the shorter side source images were resized to before the centre crop
    notes: tuple[str, ...] = ()  # what loading skipped or decided, for the console
    root: str | None = None  # the image folder it was read from (None: a built-in dataset)

    @property
    def size(self) -> int:
        """The model's input side in pixels."""
        return self.input_size or int(self.train_x.shape[-1])

    @property
    def has_test(self) -> bool:
        return int(self.test_x.shape[0]) > 0

    @property
    def preprocessing(self) -> Preprocessing:
        names = self.class_names or tuple(str(i) for i in range(self.num_classes))
        return Preprocessing(channels=self.in_channels, input_size=self.size, pad=self.pad,
                             resize=self.resize, mean=tuple(self.mean), std=tuple(self.std), class_names=names,
                             resize_size=self.resize_size)

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    @property
    def streamed(self) -> bool:
        return isinstance(self.train_x, StreamedImages)

    def to(self, device: str | torch.device) -> "Dataset":
        """The same dataset with every tensor on ``device`` (streamed images are decoded onto it)."""
        moved = {k: getattr(self, k).to(device) for k in
                 ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return replace(self, **moved)

    def subset(self, *, train: int | None = None, val: int | None = None,
               test: int | None = None) -> "Dataset":
        """A stratified random draw of ``train`` / ``val`` / ``test`` examples of each split (every
        class in proportion, fixed seed; None keeps a split whole): never the first N files, which on
        a class-sorted folder are a few classes."""
        def cut(n: int | None, x, y: torch.Tensor):
            if n is None or n >= y.shape[0]:
                return x, y
            idx = stratified_indices(y, n).to(y.device)
            return _take(x, idx), y[idx]
        tx, ty = cut(train, self.train_x, self.train_y)
        vx, vy = cut(val, self.val_x, self.val_y)
        sx, sy = cut(test, self.test_x, self.test_y)
        return replace(self, train_x=tx, train_y=ty, val_x=vx, val_y=vy, test_x=sx, test_y=sy)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> normalized float32 at the model's input size (centre-cropped when the
        cached images are larger; one fused affine map: x * scale + shift)."""
        x = center_crop(x, self.size)
        scale, shift = _affine(self.mean, self.std, x.device)
        return x.float().mul_(scale).add_(shift)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A normalized batch of training images, for tracing and measuring."""
        return self.inputs("train", batch)

    def inputs(self, split: str, n: int, start: int = 0) -> torch.Tensor:
        """Images ``start`` to ``start + n`` of ``split``, normalized at the model's input size: for
        tracing, calibrating, verifying an export (cached or streamed alike)."""
        return self.normalize(self.split(split)[0][start:start + n])

    def count(self, split: str) -> int:
        """How many examples ``split`` holds (0: no test split)."""
        return int(self.split(split)[1].shape[0])

    def labels(self, split: str) -> torch.Tensor:
        """The int64 labels of ``split``, in the order :func:`eval_batches` yields its images."""
        return self.split(split)[1]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw uint8 images (a tensor or :class:`StreamedImages`) and labels of ``name``: what the
        data seam's own code reads; everything else asks :meth:`inputs`, :meth:`count`, :meth:`labels`
        or the batch iterators."""
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
    indices = [order[start:start + batch_size] for start in
               (range(0, n - batch_size + 1, batch_size) if n >= batch_size else [0])]
    images = data.train_x.batches(indices) if data.streamed else (data.train_x[idx] for idx in indices)
    for idx, x in zip(indices, images):  # the generator's draws come in batch order on both paths
        yield data.normalize(augment(x, data.augment, data.size, generator)), data.train_y[idx]


def eval_batches(data: Dataset, split: str, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalized batches of a split, in order, without augmentation."""
    x, y = data.split(split)
    slices = [slice(start, start + batch_size) for start in range(0, x.shape[0], batch_size)]
    images = x.batches(slices) if isinstance(x, StreamedImages) else (x[s] for s in slices)
    for s, batch in zip(slices, images):
        yield data.normalize(batch), y[s]


def augment(x: torch.Tensor, mode: str, size: int, generator: torch.Generator) -> torch.Tensor:
    """A training batch at ``size``: random-resized crop (``rrc``) from the cached images, or the
    centre crop followed by pad-crop and/or flip, as ``mode`` says."""
    if mode.startswith("rrc"):
        return _random_resized_crop(x, size, generator, flip="flip" in mode)
    x = center_crop(x, size)
    if mode == "none":
        return x
    return _crop_flip(x, generator, crop="crop" in mode, flip="flip" in mode)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` of a batch of square images (unchanged when already that size)."""
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def _random_resized_crop(x: torch.Tensor, size: int, generator: torch.Generator, *, flip: bool) -> torch.Tensor:
    """ImageNet's random-resized crop (area share ``RRC_SCALE``, aspect ``RRC_RATIO``) and optional
    horizontal flip of a whole batch: one affine resampling, bilinear."""
    b = x.shape[0]
    area = torch.empty(b).uniform_(*RRC_SCALE, generator=generator)
    log_ratio = torch.empty(b).uniform_(math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]), generator=generator)
    ratio = log_ratio.exp()
    sw, sh = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)  # fractions of the side
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - sw)
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - sh)
    mirror = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw * mirror, cx, sh, cy
    grid = F.affine_grid(theta.to(x.device), [b, x.shape[1], size, size], align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def stratified_indices(labels: torch.Tensor, n: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` indices drawn at random with every class in proportion to its share (largest
    remainders), in random order; the same for the same labels and seed."""
    g = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * n / labels.shape[0]
    take = exact.floor().long()
    for i in torch.argsort(exact - take.double(), descending=True, stable=True)[:n - int(take.sum())]:
        take[i] += 1
    picked = [torch.nonzero(labels == c).flatten()[torch.randperm(int(k_all), generator=g)[:int(k)]]
              for c, k, k_all in zip(classes, take, counts)]
    chosen = torch.cat(picked)
    return chosen[torch.randperm(chosen.shape[0], generator=g)]


def _take(x, idx: torch.Tensor):
    return x.select(idx) if isinstance(x, StreamedImages) else x[idx.to(x.device)]


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
        larger = data.train_x.shape[-1] > data.size
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


def _carve(x, y: torch.Tensor, name: str, val_fraction: float, seed: int):
    """(train, val) from a training set: a fixed random ``val_fraction`` held out."""
    n = y.shape[0]
    if n < 2:
        raise DatasetError(f"{name} has {n} training images; a validation split needs at least 2")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(n - 1, max(1, int(round(val_fraction * n))))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return (_take(x, train_idx), y[train_idx]), (_take(x, val_idx), y[val_idx])


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

def _load_imagefolder(data_dir: Path, image: ImageSpec, *, val_fraction: float, seed: int, cache_mb: float,
                      workers: int) -> Dataset:
    """``train/`` (and optional ``val/``, ``test/``) of class folders: class order is the folder
    order (sorted names); images are resized once (shorter side to ``image.side``, centre square),
    cached in memory when they fit ``cache_mb``, else streamed from their files."""
    if data_dir.exists() and not data_dir.is_dir():
        raise DatasetError(f"--data-dir {data_dir} is a file; imagefolder needs a folder with train/<class>/<image>")
    if not (data_dir / "train").is_dir():
        raise DatasetError(f"imagefolder needs {data_dir / 'train'}/<class>/<image> folders (val/ and test/ "
                           f"are optional); pass --data-dir pointing at a folder with train/")
    classes, notes = _class_folders(data_dir / "train"), []
    splits = {}
    for sub in ("train", "val", "test"):
        if (data_dir / sub).is_dir():
            if sub != "train":
                _same_classes(data_dir, sub, classes)
            splits[sub] = _scan(data_dir / sub, classes)
            notes += _hidden_note(data_dir / sub)
    _refuse_empty_classes(data_dir / "train", classes, splits["train"][1])
    channels = image.channels or 3
    side = image.side
    total = sum(len(p) for p, _ in splits.values())
    stream = total * channels * side * side / 1e6 > cache_mb
    loaded, bad_total = {}, 0
    for sub, (paths, labels) in splits.items():
        x, y, bad = _images(paths, labels, side, image.interpolation, channels, stream=stream, workers=workers)
        if bad:
            bad_total += len(bad)
            if len(bad) > MAX_BAD_SHARE * len(paths):
                raise DatasetError(f"{data_dir / sub}: {len(bad)} of {len(paths)} images are unreadable "
                                   f"(e.g. {bad[0]}); more than {MAX_BAD_SHARE:.0%} is refused: fix or remove them")
            notes.append(f"skipped {len(bad)} unreadable image(s) in {data_dir / sub} (e.g. {bad[0]})")
        loaded[sub] = (x, y)
    if len(loaded["train"][1]) == 0:
        raise DatasetError(f"{data_dir / 'train'} has no readable images")
    train, val = (loaded["train"], loaded["val"]) if "val" in loaded else \
        _carve(*loaded["train"], "imagefolder", val_fraction, seed)
    test = loaded.get("test") or (_empty(train[0], channels, side), torch.zeros(0, dtype=torch.int64))
    if stream:
        notes.append(f"{total} images at {side}x{side} exceed the {cache_mb:g} MB cache: streamed from their "
                     f"files with {workers} decoding worker(s)")
    if "test" not in loaded:
        notes.append(f"{data_dir} has no test/ folder: test figures are absent")
    mean, std = (image.mean, image.std) if image.mean and image.std else _channel_stats(_sample(train[0], train[1]))
    return Dataset(name="imagefolder", train_x=train[0], train_y=train[1], val_x=val[0], val_y=val[1],
                   test_x=test[0], test_y=test[1], num_classes=len(classes), mean=tuple(mean), std=tuple(std),
                   class_names=tuple(classes), resize=image.interpolation, input_size=image.input_size,
                   resize_size=side if side != image.input_size else None, notes=tuple(notes), root=str(data_dir))


def _class_folders(root: Path) -> list[str]:
    """The class folders of a split, sorted. Hidden folders (``.ipynb_checkpoints``, ``.git``) are
    left out, as torchvision's tools leave hidden files out (and said so: see :func:`_hidden_note`);
    a link to a missing folder is refused, never left out silently."""
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        raise DatasetError(f"cannot read {root}: {exc.strerror or type(exc).__name__}") from None
    for e in entries:
        if e.is_symlink() and not e.is_dir() and not e.name.startswith("."):
            raise DatasetError(f"{root / e.name} is a symbolic link to {os.readlink(e.path)}, which is not a "
                               f"folder; fix or remove the link")
    names = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if len(names) < 2:
        raise DatasetError(f"{root} has {len(names)} class folder(s); an image classification set needs at least 2")
    return names


def _hidden_note(root: Path) -> list[str]:
    hidden = sorted(e.name for e in os.scandir(root) if e.is_dir() and e.name.startswith("."))
    return [f"{root}: left out hidden folder(s) {', '.join(hidden)} (not classes)"] if hidden else []


def _same_classes(data_dir: Path, sub: str, classes: list[str]) -> None:
    """val/ and test/ need the class folders of train/: one line naming those that differ."""
    own = _class_folders(data_dir / sub)
    extra, missing = sorted(set(own) - set(classes)), sorted(set(classes) - set(own))
    if extra or missing:
        parts = [f"{sub} has class folder(s) {', '.join(extra[:5])} that {data_dir / 'train'} lacks"] if extra else []
        parts += [f"{sub} lacks class folder(s) {', '.join(missing[:5])} of {data_dir / 'train'}"] if missing else []
        raise DatasetError(f"{data_dir}: {'; '.join(parts)}; each split needs the same class folders")


def _refuse_empty_classes(root: Path, classes: list[str], labels: list[int]) -> None:
    """A class without training images would be an output the model never learns."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise DatasetError(f"{root / empty[0]} has no image files ({', '.join(IMAGE_EXTENSIONS)}); every class "
                           f"needs training images: add some or remove the folder")


def _scan(root: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    """Image files of each class folder, sorted; links to folders inside a class are not followed
    (a link loop cannot trap the scan), non-image files are ignored."""
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not os.access(folder, os.R_OK | os.X_OK):
            raise DatasetError(f"cannot read class folder {folder}: permission denied; fix its permissions")
        found = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False, onerror=_walk_error):
            dirnames.sort()
            found += [os.path.join(dirpath, f) for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS)]
        for path in found:
            _refuse_special(path)
        paths += sorted(found)
        labels += [label] * len(found)
    return paths, labels


_SPECIAL = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _refuse_special(path: str) -> None:
    """Refuse, by its type and before it is opened, a file that is no regular file: opening a FIFO
    waits for a writer forever, a link to ``/dev/zero`` never ends. (A link to nowhere is left to
    the decoder, which counts it as unreadable.)"""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    kind = next((text for test, text in _SPECIAL if test(mode)), None)
    if kind:
        raise DatasetError(f"{path} is {kind}, not an image file; remove it from the image folder")


def _walk_error(exc: OSError) -> None:
    raise DatasetError(f"cannot read {exc.filename}: {exc.strerror or type(exc).__name__}")


def decode(path: str, side: int, interpolation: str, channels: int) -> torch.Tensor:
    """One image file -> uint8 (channels, side, side): the shorter side resized to ``side``, the
    centre square kept. Raises :class:`DatasetError` (decompression bombs too) for unreadable files."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # PIL raises DecompressionBombError above twice this
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")
                img = img.convert("RGB" if channels == 3 else "L")
                scale = side / min(img.size)
                w, h = max(side, round(img.width * scale)), max(side, round(img.height * scale))
                img = img.resize((w, h), Image.BICUBIC if interpolation == "bicubic" else Image.BILINEAR)
                left, top = (w - side) // 2, (h - side) // 2
                img = img.crop((left, top, left + side, top + side))
                array = np.asarray(img, dtype=np.uint8).reshape(side, side, channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _Bomb(f"{path} is a decompression bomb ({str(exc)[:80]}); refused") from None
    except (OSError, ValueError, SyntaxError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise DatasetError(f"{path}: {detail}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class _Bomb(DatasetError):
    """A decompression bomb: never skipped, always refused."""


def _images(paths: list[str], labels: list[int], side: int, interpolation: str, channels: int, *,
            stream: bool, workers: int):
    """(images, labels, unreadable paths) of one split: decoded into a tensor, or a :class:`StreamedImages`
    whose files were opened once to check them (their headers), skipping the unreadable."""
    y = torch.tensor(labels, dtype=torch.int64)
    files = StreamedImages(tuple(paths), side, interpolation, channels, workers)
    if stream:
        bad = [i for i, p in enumerate(paths) if not _readable_header(p)]
        keep = torch.tensor([i for i in range(len(paths)) if i not in set(bad)], dtype=torch.int64)
        return files.select(keep), y[keep], [paths[i] for i in bad]
    decoded = files.decode_all()
    bad = [i for i, t in enumerate(decoded) if t is None]
    keep = [i for i, t in enumerate(decoded) if t is not None]
    x = torch.stack([decoded[i] for i in keep]) if keep else torch.zeros(0, channels, side, side, dtype=torch.uint8)
    return x, y[torch.tensor(keep, dtype=torch.int64)], [paths[i] for i in bad]


def _readable_header(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise _Bomb(f"{path} is a decompression bomb ({img.width}x{img.height} pixels); refused")
            img.verify()
        return True
    except _Bomb:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # as decode() refuses it
        raise _Bomb(f"{path} is a decompression bomb ({str(exc)[:80]}); refused") from None
    except Exception:  # PIL raises many types for a damaged file
        return False


def _empty(like, channels: int, side: int):
    if isinstance(like, StreamedImages):
        return like.select(torch.zeros(0, dtype=torch.int64))
    return torch.zeros(0, channels, side, side, dtype=torch.uint8)


def _sample(x, y: torch.Tensor, n: int = 2000) -> torch.Tensor:
    """Up to ``n`` training images (a stratified draw), for the channel statistics."""
    idx = stratified_indices(y, min(n, y.shape[0]))
    return x[idx] if not isinstance(x, StreamedImages) else x.select(idx)[slice(0, idx.shape[0])]


class _Decode(torch.utils.data.Dataset):
    """Files -> uint8 tensors, for a DataLoader's workers (None for an unreadable file)."""

    def __init__(self, files: "StreamedImages", strict: bool) -> None:
        self.files, self.strict = files, strict

    def __len__(self) -> int:
        return len(self.files.paths)

    def __getitem__(self, i: int):
        try:
            return decode(self.files.paths[i], self.files.side, self.files.interpolation, self.files.channels)
        except _Bomb:
            raise
        except DatasetError:
            if self.strict:
                raise
            return None


def _collate(items: list) -> list:
    return items


class StreamedImages:
    """Images decoded from their files when a batch is asked for (an image folder too large for the
    cache): indexing by a slice or an index tensor returns uint8 (k, C, S, S) on ``device``, and
    :meth:`batches` prefetches a sequence of such batches with a ``DataLoader``'s workers."""

    def __init__(self, paths: tuple[str, ...], side: int, interpolation: str, channels: int, workers: int,
                 device: torch.device | str = "cpu") -> None:
        self.paths, self.side, self.interpolation, self.channels = paths, side, interpolation, channels
        self.workers, self.device = workers, torch.device(device)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.channels, self.side, self.side)

    def __len__(self) -> int:
        return len(self.paths)

    def to(self, device: torch.device | str) -> "StreamedImages":
        return StreamedImages(self.paths, self.side, self.interpolation, self.channels, self.workers, device)

    def select(self, idx: torch.Tensor) -> "StreamedImages":
        return StreamedImages(tuple(self.paths[int(i)] for i in idx.cpu()), self.side, self.interpolation,
                              self.channels, self.workers, self.device)

    def __getitem__(self, key) -> torch.Tensor:
        return next(iter(self.batches([key])))

    def _indices(self, key) -> list[int]:
        if isinstance(key, slice):
            return list(range(len(self.paths)))[key]
        return [int(i) for i in torch.as_tensor(key).cpu().flatten()]

    def batches(self, keys) -> Iterator[torch.Tensor]:
        """The batches ``keys`` (slices or index tensors) name, in order, decoded ahead by the workers."""
        keys = list(keys)
        if not keys:
            return
        sampler = [self._indices(k) for k in keys]
        loader = torch.utils.data.DataLoader(_Decode(self, strict=True), batch_sampler=sampler, collate_fn=_collate,
                                             num_workers=self.workers if len(self.paths) > 64 else 0)
        empty = torch.zeros(0, self.channels, self.side, self.side, dtype=torch.uint8)
        for items in loader:
            yield (torch.stack(items) if items else empty).to(self.device)

    def decode_all(self) -> list[torch.Tensor | None]:
        """Every file decoded once (None where unreadable), by the workers."""
        loader = torch.utils.data.DataLoader(_Decode(self, strict=False), batch_size=64, collate_fn=_collate,
                                             num_workers=self.workers if len(self.paths) > 512 else 0)
        return [t for chunk in loader for t in chunk]


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
