"""The cached dataset behind the data interface: uint8 splits on the training device, batched,
augmented and normalized as tensor ops."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch
import torch.nn.functional as F

from pruning._preprocessing import Preprocessing
from pruning.data._splits import _take, stratified_indices


RRC_SCALE = (0.25, 1.0)  # area share of a random-resized crop (timm's fine-tuning recipes use 0.08-1; small sets
RRC_RATIO = (3 / 4, 4 / 3)  # lose too much at 0.08)


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
    input_size: int = field(kw_only=True)  # the model's input side; cached images may be larger (cropped)
    resize_size: int | None = None  # the shorter side source images were resized to before the centre crop
    notes: tuple[str, ...] = ()  # what loading skipped or decided, for the console
    root: str | None = None  # the image folder it was read from (None: a built-in dataset)

    @property
    def has_test(self) -> bool:
        return int(self.test_x.shape[0]) > 0

    @property
    def preprocessing(self) -> Preprocessing:
        names = self.class_names or tuple(str(i) for i in range(self.num_classes))
        return Preprocessing(channels=self.in_channels, input_size=self.input_size, pad=self.pad,
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
        """Whether the images are decoded batch by batch (:class:`StreamedImages`, or any other
        pipeline with its ``batches``, ``select``, ``to``, ``shape`` and ``device``) rather than held as tensors."""
        return not isinstance(self.train_x, torch.Tensor)

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

    def holdout(self, *, val: int, n: int | None = None) -> "Dataset | None":
        """The validation images that ``subset(val=val)`` leaves out (a stratified draw of ``n`` of
        them, None: all) as this dataset's val split: images a search that read the subset never
        selected on. None when the subset takes the whole split."""
        count = self.val_y.shape[0]
        if val >= count:
            return None
        keep = torch.ones(count, dtype=torch.bool)
        keep[stratified_indices(self.val_y, val).cpu()] = False
        rest = torch.nonzero(keep).flatten().to(self.val_y.device)
        if n is not None and n < rest.numel():
            rest = rest[stratified_indices(self.val_y[rest], n).to(rest.device)]
        return replace(self, val_x=_take(self.val_x, rest), val_y=self.val_y[rest])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> normalized float32 at the model's input size (centre-cropped when the
        cached images are larger; one fused affine map: x * scale + shift)."""
        x = center_crop(x, self.input_size)
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
        yield data.normalize(augment(x, data.augment, data.input_size, generator)), data.train_y[idx]


def eval_batches(data: Dataset, split: str, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalized batches of a split, in order, without augmentation."""
    x, y = data.split(split)
    slices = [slice(start, start + batch_size) for start in range(0, x.shape[0], batch_size)]
    images = (x[s] for s in slices) if isinstance(x, torch.Tensor) else x.batches(slices)
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
