"""How an image folder's splits are held. A :class:`Pipeline` turns one split's files into the images
the batching reads: a uint8 tensor (``cached``) or an object that answers what
:class:`~pruning.data.StreamedImages` answers (``streamed``: ``batches``, ``select``, ``to``, ``shape``,
``device``, indexing). The folder loader asks the pipelines, highest ``rank`` first, and takes the first
that wants the folder.

The pipelines are the modules of ``pruning.data.pipelines``, every one imported when a folder is
first loaded; a subclass with a ``name`` registers itself. A new one (a GPU JPEG decoder) is one
module there and its test: nothing else names it."""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

from pruning._errors import DatasetError


@dataclass(frozen=True)
class Folder:
    """What a pipeline is asked about: how many images of which side, the cache it may fill, the
    decoding workers it may start."""

    images: int
    channels: int
    side: int
    cache_mb: float
    workers: int

    @property
    def megabytes(self) -> float:
        """The decoded images' size as uint8."""
        return self.images * self.channels * self.side * self.side / 1e6


class Pipeline:
    """One way to hold a folder's images. Subclasses set ``name`` (registering them) and ``rank``."""

    name = ""
    rank = 0  # asked in decreasing rank: the most specific pipeline first, the one that always fits last

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")  # its own: a subclass of a named pipeline must name itself
        if not name:
            return
        held = PIPELINES.get(name)
        if held is not None and (type(held).__module__, type(held).__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"pipeline name {name!r} of {cls.__module__}.{cls.__qualname__} is taken by "
                            f"{type(held).__module__}.{type(held).__qualname__}")
        PIPELINES[name] = cls()  # the same class again (a reload) replaces itself

    def wants(self, folder: Folder) -> bool:
        """Whether this pipeline holds ``folder`` (e.g. it fits the cache; a GPU is there)."""
        raise NotImplementedError

    def load(self, paths: list[str], labels: list[int], folder: Folder, interpolation: str):
        """(images, labels, unreadable paths) of one split, the unreadable files skipped: images is a
        uint8 (N, C, side, side) tensor or a split object as ``StreamedImages``."""
        raise NotImplementedError

    def note(self, folder: Folder) -> str | None:
        """A line for the dataset's notes when this pipeline is the one chosen (None: nothing to say)."""
        return None


PIPELINES: dict[str, Pipeline] = {}


def pipelines() -> list[Pipeline]:
    """Every pipeline of ``pruning.data.pipelines`` (imported once), highest rank first."""
    from pruning.data import pipelines as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return sorted(PIPELINES.values(), key=lambda p: (-p.rank, p.name))


def choose(folder: Folder) -> Pipeline:
    for pipeline in pipelines():
        if pipeline.wants(folder):
            return pipeline
    raise DatasetError(f"no image pipeline holds {folder.images} images at {folder.side}x{folder.side} "
                       f"(pipelines: {', '.join(PIPELINES)})")
