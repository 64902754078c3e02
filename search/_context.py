"""Shared set-up of the commands: device, data under the budget, and the cached baseline."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

from models import create_model
from pruning import (Checkpoint, CheckpointError, Dataset, evaluate, load_checkpoint, load_dataset, measure,
                     save_pruned, train)
from pruning._train import prepare
from search._cli import UsageError
from search._config import ConfigError, StudyConfig, baseline_recipe
from search._study import journal_path, open_storage, open_study


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(name)


# The validation split never follows --seed: a baseline trained on one split and evaluated on another
# would be scored on its own training images.
VAL_SPLIT_SEED = 0


def load_data(cfg: StudyConfig, *, download: bool = True) -> Dataset:
    """The study's dataset cut to the budget's subsets, on the study's device."""
    spend = cfg.spend
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, val_fraction=cfg.val_fraction,
                        seed=VAL_SPLIT_SEED, download=download)
    data = data.subset(train=spend.train_subset, val=spend.val_subset, test=spend.test_subset)
    return data.to(resolve_device(cfg.device))


def baseline_path(cfg: StudyConfig) -> Path:
    return cfg.out_dir / "baseline.pt"


def train_baseline(cfg: StudyConfig, data: Dataset, *, epochs: float | None = None,
                   progress: bool = True) -> Checkpoint:
    """Train the unpruned model with the config's recipe and save ``<out>/baseline.pt``."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels)
    recipe = baseline_recipe(cfg, epochs)
    result = train(model, data, recipe, progress=progress, desc=f"baseline {cfg.model}")
    meta = {"model": cfg.model, "num_classes": data.num_classes, "in_channels": data.in_channels,
            "dataset": cfg.dataset, "epochs": recipe.epochs, "seed": cfg.seed, "budget": cfg.budget,
            "val_accuracy": evaluate(model, data, "val"), "test_accuracy": evaluate(model, data, "test"),
            "train_seconds": result.seconds, "images_per_s": result.images_per_s}
    save_pruned(baseline_path(cfg), model, None, meta)
    return Checkpoint(model=model.eval(), history=[], metadata=meta)


def ensure_baseline(cfg: StudyConfig, data: Dataset, *, progress: bool = True) -> Checkpoint:
    """The cached baseline of the study folder, trained first if there is none."""
    path = baseline_path(cfg)
    if not path.exists():
        if progress:
            print(f"no baseline in {cfg.out_dir}; training one ({baseline_recipe(cfg).epochs:g} epochs)",
                  file=sys.stderr)
        return train_baseline(cfg, data, progress=progress)
    ckpt = load_checkpoint(path, expect_model=cfg.model)
    if ckpt.metadata.get("dataset") != cfg.dataset:
        raise CheckpointError(f"{path} was trained on {ckpt.metadata.get('dataset')!r}, not {cfg.dataset!r}; "
                              f"use another --out or delete it to retrain")
    return ckpt


def reference_of(ckpt: Checkpoint, example: torch.Tensor) -> dict:
    """Figures of the unpruned baseline that every candidate is compared with.

    A pruned checkpoint carries its study's reference (``--from``); a baseline is measured here.
    """
    if "reference" in ckpt.metadata:
        return dict(ckpt.metadata["reference"])
    m = measure(ckpt.model, example.to(next(ckpt.model.parameters()).device))
    return {"params": m.params, "macs": m.macs, "size_mb": m.size_mb,
            "val_accuracy": ckpt.metadata["val_accuracy"], "test_accuracy": ckpt.metadata["test_accuracy"]}


def start_point(cfg: StudyConfig, data: Dataset, *, progress: bool = True) -> tuple[Checkpoint, dict]:
    """The model a study prunes from (``--from`` or the cached baseline) and the reference figures."""
    if cfg.from_checkpoint:
        ckpt = load_checkpoint(cfg.from_checkpoint, expect_model=cfg.model)
        if ckpt.metadata.get("dataset", cfg.dataset) != cfg.dataset:
            raise CheckpointError(f"{cfg.from_checkpoint} was trained on {ckpt.metadata['dataset']!r}, "
                                  f"not {cfg.dataset!r}")
    else:
        ckpt = ensure_baseline(cfg, data, progress=progress)
    if int(ckpt.metadata["in_channels"]) != data.in_channels or int(ckpt.metadata["num_classes"]) != data.num_classes:
        raise CheckpointError(f"the starting model has {ckpt.metadata['in_channels']} input channels and "
                              f"{ckpt.metadata['num_classes']} classes; {cfg.dataset} has {data.in_channels} "
                              f"and {data.num_classes}")
    ckpt.model = prepare(ckpt.model, data.device).eval()
    return ckpt, reference_of(ckpt, data.example_input(1))


def existing_study(cfg: StudyConfig, *, download: bool = True):
    """Open a study that ``search.run`` wrote, with its data, starting model and reference figures.

    Returns (study, data, start checkpoint, reference); writes nothing.
    """
    if cfg.storage is None and not journal_path(cfg).exists():
        raise UsageError(f"no study in {cfg.out_dir}; run python -m search.run --model {cfg.model} first "
                         f"(or pass the --out / --budget it used)")
    study = open_study(cfg, open_storage(cfg), base="", create=False)
    base = study.user_attrs.get("base", "baseline")
    if base == "baseline" and not baseline_path(cfg).exists():
        raise UsageError(f"{baseline_path(cfg)} is missing; the study's baseline is needed for its reference figures")
    data = load_data(cfg, download=download)
    start, reference = start_point(replace(cfg, from_checkpoint=None if base == "baseline" else base), data,
                                   progress=False)
    return study, data, start, reference
