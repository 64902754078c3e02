"""Splitting and sampling a set of images, held as a tensor or streamed: the stratified draw, the
validation split carved from the training set, the channel statistics."""
from __future__ import annotations


import torch

from pruning._errors import DatasetError


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
    """Rows ``idx`` of images held as a tensor or streamed from files."""
    return x[idx.to(x.device)] if isinstance(x, torch.Tensor) else x.select(idx)


def _carve(x, y: torch.Tensor, name: str, val_fraction: float, seed: int):
    """(train, val) from a training set: a fixed random ``val_fraction`` held out."""
    n = y.shape[0]
    if n < 2:
        raise DatasetError(f"{name} has {n} training images; a validation split needs at least 2")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(n - 1, max(1, int(round(val_fraction * n))))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return (_take(x, train_idx), y[train_idx]), (_take(x, val_idx), y[val_idx])


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.float().div(255)
    return tuple(xf.mean(dim=(0, 2, 3)).tolist()), tuple(xf.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
