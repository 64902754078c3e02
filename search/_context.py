"""Shared set-up of the commands: device, data under the budget, the baseline (trained once,
resumable per epoch) and the model a study prunes from."""
from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import torch

from models import create_model
from pruning import (Checkpoint, CheckpointError, CheckpointMeta, Dataset, Reference, TrainHooks, TrainState,
                     atomic_write, evaluate, load_checkpoint, load_dataset, measure, save_pruned, train)
from pruning._train import prepare
from pruning._typed import to_plain
from search._config import ConfigError, RunOptions, StudyConfig
from search._faults import fault
from search._storage import BASELINE_PARTIAL, baseline_path

# The validation split never follows --seed: a baseline trained on one split and evaluated on another
# would be scored on its own training images.
VAL_SPLIT_SEED = 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(name)


def load_data(cfg: StudyConfig, opts: RunOptions) -> Dataset:
    """The study's dataset cut to the budget's subsets, on the run's device."""
    spend = cfg.spend
    data = load_dataset(cfg.dataset, data_dir=opts.data_dir, val_fraction=cfg.val_fraction, seed=VAL_SPLIT_SEED,
                        download=opts.download, augment=cfg.augment)
    data = data.subset(train=spend.train_subset, val=spend.val_subset, test=spend.test_subset)
    return data.to(resolve_device(opts.device))


def train_baseline(cfg: StudyConfig, out: Path, data: Dataset, *, epochs: float | None = None,
                   progress: bool = True, then: str = "") -> Checkpoint:
    """Train the unpruned model with the config's recipe and save ``<out>/baseline.pt`` (``then``:
    what follows it, shown beside the progress bar so its ETA reads as the whole study's).

    The run saves its state after every epoch, so an interrupted baseline continues where it
    stopped (with the same recipe) instead of starting over.
    """
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels)
    recipe = cfg.baseline_recipe(epochs)
    partial = out / BASELINE_PARTIAL
    resume = _resume_state(partial, model, recipe, progress)

    def save_epoch(state: TrainState) -> None:
        payload = {"recipe": to_plain(recipe), "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                   "state": asdict(state)}
        atomic_write(partial, lambda tmp: torch.save(payload, tmp))
        fault("after_baseline_epoch")

    result = train(model, data, recipe, progress=progress, desc=f"baseline {cfg.model}{then}",
                   hooks=TrainHooks(on_epoch=save_epoch, resume=resume))
    meta = CheckpointMeta(
        model=cfg.model, num_classes=data.num_classes, in_channels=data.in_channels, dataset=cfg.dataset,
        preprocessing=data.preprocessing,
        metrics={"val_accuracy": evaluate(model, data, "val"), "test_accuracy": evaluate(model, data, "test"),
                 "train_seconds": result.seconds, "images_per_s": result.images_per_s},
        provenance={"recipe": to_plain(recipe), "steps": result.steps, "budget": cfg.budget, "seed": cfg.seed})
    save_pruned(baseline_path(out), model, None, meta)
    partial.unlink(missing_ok=True)
    return load_checkpoint(baseline_path(out), expect_model=cfg.model)


def _resume_state(partial: Path, model: torch.nn.Module, recipe, progress: bool) -> TrainState | None:
    if not partial.exists():
        return None
    try:
        payload = torch.load(partial, map_location="cpu", weights_only=True)
        if payload["recipe"] != to_plain(recipe):
            raise ValueError("another recipe")
        model.load_state_dict(payload["model"])
        state = TrainState(**payload["state"])
    except Exception as exc:  # a stale or damaged partial run is not worth keeping: start over
        if progress:
            print(f"note: not resuming the interrupted baseline ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0][:80] if str(exc) else ''}); starting over", file=sys.stderr)
        return None
    if progress:
        print(f"resuming the interrupted baseline at step {state.step}", file=sys.stderr)
    return state


def reference_of(ckpt: Checkpoint, example: torch.Tensor) -> Reference:
    """Figures of the unpruned baseline that every candidate is compared with: a pruned checkpoint
    carries its study's (``--from``); a baseline is measured here."""
    if ckpt.meta.reference is not None:
        return ckpt.meta.reference
    m = measure(ckpt.model, example.to(next(ckpt.model.parameters()).device))
    metrics = ckpt.meta.metrics
    if "val_accuracy" not in metrics or "test_accuracy" not in metrics:
        raise CheckpointError("the starting model records no val/test accuracy; train it with search.train")
    return Reference(params=m.params, macs=m.macs, size_mb=m.size_mb, val_accuracy=float(metrics["val_accuracy"]),
                     test_accuracy=float(metrics["test_accuracy"]))


def start_checkpoint(cfg: StudyConfig, out: Path, data: Dataset) -> Checkpoint:
    """The model a study prunes from: ``from_checkpoint``, or the study folder's baseline (a new
    study's session trains it first), checked against the dataset, on the data's device."""
    source = cfg.from_checkpoint or str(baseline_path(out))
    ckpt = load_checkpoint(source, expect_model=cfg.model)
    meta = ckpt.meta
    if meta.dataset not in (None, cfg.dataset):
        raise CheckpointError(f"{source} was trained on {meta.dataset!r}, not {cfg.dataset!r}; "
                              f"use another --out or another starting checkpoint")
    if meta.in_channels != data.in_channels or meta.num_classes != data.num_classes:
        raise CheckpointError(f"{source} has {meta.in_channels} input channels and {meta.num_classes} classes; "
                              f"{cfg.dataset} has {data.in_channels} and {data.num_classes}")
    ckpt.model = prepare(ckpt.model, data.device).eval()
    return ckpt
