"""What a study's sensitivity map costs, per model: the whole map (every plan key pruned alone at each
ratio of the grid, adaptive BatchNorm, accuracy on the map's images) computed as ``search.run``
computes it, on the budget's data, timed over repeats, and the seconds per cell.

    python bench/map_cost.py [--models densenet121 resnet50 mobilenet_v2] [--budget cpu] [--repeats 2]

The model is untrained, so no baseline has to be trained first: the surgery, the BatchNorm pass and the
evaluation are the same work whatever the weights (two ratios whose channel counts round alike are
scored once either way), and the accuracies mean nothing here. Yet the untrained DenseNet121's map took
112-135 s where a trained study's took 81 s on the same code and CPU (not explained): compare this
bench's figures with each other (a change before and after), not with a study's.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _common
import optuna
import torch

from pruning import Checkpoint, CheckpointMeta
from search.config import RunOptions, load_config, quiet_libraries
from search.trial import build_context, build_model, load_data, map_grid, map_images, prepare_map


def one_map(model: str, cfg, opts: RunOptions, data) -> tuple[float, int, int]:
    """(seconds, cells, images a cell scores) of one map computed from nothing."""
    net = build_model(cfg, data)
    # the context reads a baseline's figures; the map never does (it scores the model itself)
    meta = CheckpointMeta(model=model, num_classes=data.num_classes, in_channels=data.in_channels,
                          metrics={"val_accuracy": 0.0})
    with tempfile.TemporaryDirectory() as out:
        ctx = build_context(cfg, opts, Path(out), data=data,
                            start=Checkpoint(model=net, history=[], plan={}, meta=meta, checksum=""))
        study = optuna.create_study()
        start = time.perf_counter()
        prepare_map(ctx, study)
        seconds = time.perf_counter() - start
    cells = len(ctx.keys) * len(map_grid(cfg.search))
    return seconds, cells, map_images(cfg, data.count("val"), len(ctx.keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["densenet121", "resnet50", "mobilenet_v2"])
    parser.add_argument("--budget", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    quiet_libraries()
    _common.header(f"the sensitivity map's cost, `{args.budget}` budget", torch.device("cpu"))
    print(f"# cpu: {_common.cpu_model()}")
    print(f"{'model':<14} {'cells':>5} {'images':>6} {'map s':>24} {'s per cell':>24}")
    for model in args.models:
        cfg = load_config(model, overrides={"budget": args.budget})
        opts = RunOptions(progress=False, write_report=False)
        data = load_data(cfg, opts)  # once per model: the repeats time the map, not the loading
        runs = [one_map(model, cfg, opts, data) for _ in range(args.repeats)]
        seconds = [s for s, _, _ in runs]
        cells, images = runs[0][1], runs[0][2]
        print(f"{model:<14} {cells:>5} {images:>6} {_common.spread(seconds):>24} "
              f"{_common.spread([s / cells for s in seconds]):>24}", flush=True)


if __name__ == "__main__":
    main()
