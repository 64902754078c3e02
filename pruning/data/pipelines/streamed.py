"""A folder too large for the cache: each file's header checked once (the unreadable skipped), the
images decoded batch by batch from their files when a batch is asked for (:class:`StreamedImages`)."""
from __future__ import annotations

import torch

from pruning.data._files import StreamedImages, _readable_header
from pruning.data._pipeline import Folder, Pipeline


class Streamed(Pipeline):
    name = "streamed"
    rank = 0  # holds any folder: the last one asked

    def wants(self, folder: Folder) -> bool:
        return True

    def load(self, paths, labels, folder: Folder, interpolation: str):
        files = StreamedImages(tuple(paths), folder.side, interpolation, folder.channels, folder.workers)
        bad = [i for i, p in enumerate(paths) if not _readable_header(p)]
        skipped = set(bad)
        keep = torch.tensor([i for i in range(len(paths)) if i not in skipped], dtype=torch.int64)
        return files.select(keep), torch.tensor(labels, dtype=torch.int64)[keep], [paths[i] for i in bad]

    def note(self, folder: Folder) -> str:
        return (f"{folder.images} images at {folder.side}x{folder.side} exceed the {folder.cache_mb:g} MB cache: "
                f"streamed from their files with {folder.workers} decoding worker(s)")
