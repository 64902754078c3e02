"""Gains with their noise: two plans compared on the same validation images, image by image.

The images are the ones the search never read where the budget holds some out: the searched candidate
compared with a reference is the best of many on the search's own images, which flatters it there.

A difference of accuracies measured on one set of images is paired: both models saw the same
images, so the noise of the difference is that of the images on which they *disagree*, much less
than each accuracy's own (σ ≈ 0.95 pt on 1,000 images). The interval is a paired bootstrap of
the per-image difference; one that holds 0 is "inside the noise", and the report says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

RESAMPLES = 2000   # bootstrap draws: the 2.5/97.5 percentiles move by < 0.05 pt between seeds at this count
LEVEL = 0.95       # a 95 % interval


@dataclass(frozen=True)
class Gain:
    """``a`` minus ``b`` in points of accuracy, with its paired bootstrap interval."""

    points: float
    low: float
    high: float

    @property
    def inside_noise(self) -> bool:
        return self.low <= 0.0 <= self.high

    def text(self) -> str:
        span = f"{self.points:+.2f} pts (95 % interval {self.low:+.2f} to {self.high:+.2f})"
        return span + (", inside the noise" if self.inside_noise else "")


def paired_gain(a: torch.Tensor, b: torch.Tensor, *, seed: int = 0) -> Gain:
    """Accuracy of ``a`` minus that of ``b`` (bool vectors over the same images), in points.

    The per-image difference takes three values (+1, 0, -1), so a bootstrap resample is a
    multinomial draw of their counts: exact, and no n x RESAMPLES index matrix."""
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"paired accuracies need two vectors over the same images, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.bool().cpu(), b.bool().cpu()
    n = a.numel()
    up, down = int((a & ~b).sum()), int((~a & b).sum())
    counts = np.random.default_rng(seed).multinomial(n, [up / n, down / n, 1 - (up + down) / n], size=RESAMPLES)
    diffs = 100.0 * (counts[:, 0] - counts[:, 1]) / n
    tail = (1 - LEVEL) / 2 * 100
    return Gain(points=100.0 * (up - down) / n, low=float(np.percentile(diffs, tail)),
                high=float(np.percentile(diffs, 100 - tail)))


@dataclass
class Paired:
    """Per-image correctness of trials' checkpoints on one set of validation images, computed once per
    trial (``load``: trial number -> that trial's hits). ``held_out``: the images are ones the search
    never read, so a candidate it chose for scoring well on its own images is not flattered there.
    ``baseline``: a loader of the hits of the model the study pruned from, on the same images (computed once)."""

    load: Callable[[int], torch.Tensor]
    images: int = 0
    held_out: bool = False
    baseline: Callable[[], torch.Tensor] | None = None
    _hits: dict[int, torch.Tensor] = field(default_factory=dict)
    _baseline_hits: torch.Tensor | None = None

    def where(self) -> str:
        """The images, in words: "on the 5,000 validation images the search never read"."""
        if self.held_out:
            return f"on the {self.images:,} validation images the search never read"
        return f"on the search's {self.images:,} validation images"

    def accuracy(self, trial: int) -> float:
        return float(self.hits(trial).float().mean())

    def hits(self, trial: int) -> torch.Tensor:
        if trial not in self._hits:
            self._hits[trial] = self.load(trial)
        return self._hits[trial]

    def gain(self, a: int, b: int) -> Gain:
        """Trial ``a``'s accuracy minus trial ``b``'s on these images, paired."""
        return paired_gain(self.hits(a), self.hits(b))

    def loss(self, trial: int) -> Gain | None:
        """What trial ``trial`` lost against the baseline, on these images, paired (the baseline's accuracy
        minus the trial's); None without ``baseline``. A plan of the trial's size can beat it beyond the
        noise only where this loss is beyond the noise itself, or by beating the baseline."""
        if self.baseline is None:
            return None
        if self._baseline_hits is None:
            self._baseline_hits = self.baseline()
        return paired_gain(self._baseline_hits, self.hits(trial))


def trial_hits(out: Path, model: str, checkpoints: dict[int, tuple[str, str | None]], data, precision: str,
               ) -> Callable[[int], torch.Tensor]:
    """A loader of trial ``n``'s validation hits from its checkpoint (artifact id, SHA-256)."""
    from pruning import correct, load_checkpoint
    from search.storage import trial_artifact

    def load(number: int) -> torch.Tensor:
        artifact, digest = checkpoints[number]
        ckpt = load_checkpoint(trial_artifact(out, artifact, digest, number), expect_model=model)
        return correct(ckpt.model, data, "val", precision=precision)
    return load
