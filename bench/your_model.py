"""A user-brought model end to end on this machine: ``torchvision:resnet18`` trained here as a user
would (outside the tool) on a Fashion-MNIST-as-ImageFolder set at 64x64, saved as a state dict,
then pruned by ``search.run --weights ... --budget cpu`` (the report's headline and its search vs
reference table are the result).

    python bench/your_model.py [--out studies/bench-your-model] [--per-class 500] [--epochs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import header

from models import parse_source
from pruning import ImageSpec, TrainConfig, evaluate, load_dataset, train

REPO = Path(__file__).resolve().parent.parent
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def write_folder(root: Path, per_class: int) -> None:
    from PIL import Image

    fm = load_dataset("fashion-mnist", download=False)
    for split, (x, y, n) in {"train": (*fm.split("train"), per_class),
                             "test": (*fm.split("test"), max(50, per_class // 5))}.items():
        for c in range(10):
            folder = root / split / f"{c}-{fm.class_names[c].replace('/', '_')}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in torch.nonzero(y == c).flatten()[:n].tolist():
                Image.fromarray(x[i, 0].numpy()).convert("RGB").resize((72, 72)).save(folder / f"{i}.png")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="studies/bench-your-model")
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--budget", default="cpu")
    args = p.parse_args()
    header("a user-brought torchvision:resnet18 at 64x64, end to end", torch.device("cpu"))
    work = Path(args.out).with_name(Path(args.out).name + "-inputs")
    if not (work / "train").exists():
        write_folder(work, args.per_class)
    weights = work / "resnet18.pt"
    if not weights.exists():
        spec = ImageSpec(input_size=64, crop_pct=0.875, interpolation="bilinear", channels=3, **IMAGENET)
        data = load_dataset("imagefolder", data_dir=work, image=spec)
        torch.manual_seed(0)
        model = parse_source("torchvision:resnet18").build(num_classes=10)
        began = time.perf_counter()
        train(model, data, TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05), progress=True, desc="user training")
        print(f"# user's training: {time.perf_counter() - began:.0f} s, val {evaluate(model, data, 'val'):.4f}, "
              f"test {evaluate(model, data, 'test'):.4f}")
        torch.save({"model": model.state_dict()}, weights)
    print(f"# load average before the study: {os.getloadavg()[0]:.2f}")
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "search.run", "--model", "torchvision:resnet18", "--weights", str(weights),
                    "--dataset", "imagefolder", "--data-dir", str(work), "--image-size", "64", "--budget", args.budget,
                    "--out", args.out, "--yes"], cwd=REPO, check=True)
    print(f"# study wall time: {time.perf_counter() - began:.0f} s; load average after: {os.getloadavg()[0]:.2f}")
    answer = json.loads((Path(args.out) / "report.json").read_text())
    print(json.dumps({k: answer.get(k) for k in ("baseline", "headline", "front_points")}, indent=1))


if __name__ == "__main__":
    main()
