"""Image files decoded safely (special files, decompression bombs and unreadable files refused or
counted) and :class:`StreamedImages`, a split decoded batch by batch from its files."""
from __future__ import annotations

import os
import stat
import warnings
from typing import Iterator

import numpy as np
import torch

from pruning._errors import DatasetError
from pruning.data._splits import stratified_indices


MAX_IMAGE_PIXELS = 50_000_000  # an image folder's file above this is refused (decompression bombs)


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
    if isinstance(like, torch.Tensor):
        return torch.zeros(0, channels, side, side, dtype=torch.uint8)
    return like.select(torch.zeros(0, dtype=torch.int64))


def _sample(x, y: torch.Tensor, n: int = 2000) -> torch.Tensor:
    """Up to ``n`` training images (a stratified draw), for the channel statistics."""
    idx = stratified_indices(y, min(n, y.shape[0]))
    return x[idx] if isinstance(x, torch.Tensor) else x.select(idx)[slice(0, idx.shape[0])]


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
