"""An image folder (``train/``, ``val/``, ``test/`` of class folders): scanned, checked, and handed
to the image pipeline that holds it (decoded once into the cache, or streamed from its files)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pruning._errors import DatasetError
from pruning._preprocessing import ImageSpec
from pruning.data._dataset import Dataset
from pruning.data._files import _empty, _refuse_special, _sample, _walk_error
from pruning.data._pipeline import Folder, choose
from pruning.data._splits import _carve, _channel_stats


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MAX_BAD_SHARE = 0.05  # unreadable files in an image folder: skipped and counted up to this share, refused above


def _load_imagefolder(data_dir: Path, image: ImageSpec, *, val_fraction: float, seed: int, cache_mb: float,
                      workers: int) -> Dataset:
    """``train/`` (and optional ``val/``, ``test/``) of class folders: class order is the folder
    order (sorted names); images are resized once (shorter side to ``image.resize_size``, centre square)
    and held by the first pipeline that wants them (``pruning.data.pipelines``: cached in memory when
    they fit ``cache_mb``, else streamed from their files)."""
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
    side = image.resize_size
    folder = Folder(sum(len(p) for p, _ in splits.values()), channels, side, cache_mb, workers)
    pipeline = choose(folder)
    loaded = {}
    for sub, (paths, labels) in splits.items():
        x, y, bad = pipeline.load(paths, labels, folder, image.interpolation)
        if bad:
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
    if pipeline.note(folder):
        notes.append(pipeline.note(folder))
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
