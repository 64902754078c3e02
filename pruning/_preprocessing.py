"""The deployment contract of a checkpoint and its export: how an image becomes the model's input
(:class:`Preprocessing`), and how a dataset brings images to it (:class:`ImageSpec`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from models import DEFAULT_INPUT_SIZE


INTERPOLATIONS = ("bilinear", "bicubic")
MAX_INPUT_SIZE = 4096  # the largest model input side a checkpoint may record


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

    input_size: int = DEFAULT_INPUT_SIZE
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def resize_size(self) -> int:
        """The side the shorter side of an image is resized to before the centre ``input_size``
        square is cut (the input size itself at ``crop_pct`` 1)."""
        return max(self.input_size, int(round(self.input_size / self.crop_pct)))


def image_spec_of(pre: "Preprocessing") -> ImageSpec:
    """The :class:`ImageSpec` that reproduces a recorded preprocessing (exports verify on it)."""
    crop = pre.input_size / pre.resize_size if pre.resize_size else 1.0
    return ImageSpec(input_size=pre.input_size, crop_pct=crop, interpolation=pre.resize if pre.resize in
                     INTERPOLATIONS else "bicubic", channels=pre.channels, mean=tuple(pre.mean), std=tuple(pre.std))
