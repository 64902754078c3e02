"""The image-folder pipeline against the training step: images/s of the cached and the streamed
loader (batches, augmentation and normalization included, no model) beside a training step of
``torchvision:resnet18`` at the same input size, so it shows whether the loader keeps the step fed.

    python bench/data_pipeline.py [--sizes 64 224] [--images 512] [--repeats 3]

It writes a Fashion-MNIST image folder (RGB, 80x88 pixels) into a temporary folder first.
"""
from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import torch
from _common import header, spread

from models import parse_source
from pruning import ImageSpec, TrainConfig, load_dataset, train, train_batches

IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def write_folder(root: Path, images: int) -> Path:
    from PIL import Image

    fm = load_dataset("fashion-mnist", download=False)
    per_class = images // 10
    train_x, train_y = fm.split("train")
    for c in range(10):
        folder = root / "train" / f"c{c}"
        folder.mkdir(parents=True)
        for i in torch.nonzero(train_y == c).flatten()[:per_class].tolist():
            Image.fromarray(train_x[i, 0].numpy()).convert("RGB").resize((80, 88)).save(folder / f"{i}.png")
    return root


def loader_rate(data, batch: int, steps: int) -> float:
    """Images/s of ``steps`` training batches (decode where streamed, augment, normalize)."""
    g = torch.Generator().manual_seed(0)
    batches = itertools.islice(itertools.chain.from_iterable(train_batches(data, batch, g) for _ in itertools.count()),
                               steps)
    start = time.perf_counter()
    n = sum(x.shape[0] for x, _ in batches)
    return n / (time.perf_counter() - start)


def step_rate(data, batch: int, steps: int) -> float:
    model = parse_source("torchvision:resnet18").build(num_classes=data.num_classes)
    return train(model, data, TrainConfig(steps=steps, batch_size=batch, lr=0.01), progress=False).images_per_s


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    header("image-folder loader vs torchvision:resnet18 training step (images/s)", torch.device("cpu"))
    print(f"# load average before: {os.getloadavg()[0]:.2f}; {args.images} images, batch {args.batch}")
    with tempfile.TemporaryDirectory() as tmp:
        root = write_folder(Path(tmp), args.images)
        print("| input | cached loader | streamed loader (2 workers) | training step | cached/step | streamed/step |")
        print("|---|---|---|---|---|---|")
        for size in args.sizes:
            spec = ImageSpec(input_size=size, crop_pct=0.875, interpolation="bilinear", channels=3, **IMAGENET)
            cached = load_dataset("imagefolder", data_dir=root, image=spec)
            streamed = load_dataset("imagefolder", data_dir=root, image=spec, cache_mb=0, workers=2)
            rates = {"cached": [], "streamed": [], "step": []}
            for _ in range(args.repeats):  # interleaved, so a neighbour's load hits all three alike
                rates["cached"].append(loader_rate(cached, args.batch, args.steps))
                rates["streamed"].append(loader_rate(streamed, args.batch, args.steps))
                rates["step"].append(step_rate(cached, args.batch, max(2, args.steps // 2)))
            med = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
            print(f"| {size} | {spread(rates['cached'])} | {spread(rates['streamed'])} | {spread(rates['step'])} | "
                  f"{med['cached'] / med['step']:.1f}x | {med['streamed'] / med['step']:.1f}x |")
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
