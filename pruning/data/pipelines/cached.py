"""A folder whose decoded images fit the cache: every file decoded once, by the workers, into one
uint8 tensor per split (moved to the training device with the dataset)."""
from __future__ import annotations

import torch

from pruning.data._files import StreamedImages
from pruning.data._pipeline import Folder, Pipeline


class Cached(Pipeline):
    name = "cached"
    rank = 10

    def wants(self, folder: Folder) -> bool:
        return folder.megabytes <= folder.cache_mb

    def load(self, paths, labels, folder: Folder, interpolation: str):
        files = StreamedImages(tuple(paths), folder.side, interpolation, folder.channels, folder.workers)
        decoded = files.decode_all()
        keep = [i for i, t in enumerate(decoded) if t is not None]
        x = torch.stack([decoded[i] for i in keep]) if keep else \
            torch.zeros(0, folder.channels, folder.side, folder.side, dtype=torch.uint8)
        bad = [paths[i] for i, t in enumerate(decoded) if t is None]
        return x, torch.tensor(labels, dtype=torch.int64)[torch.tensor(keep, dtype=torch.int64)], bad
