"""Shared fixtures. Tests never use the network: datasets come from disk or are written here."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pruning import DatasetError, load_dataset

REPO = Path(__file__).resolve().parent.parent
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def fashion_mnist():
    """The real Fashion-MNIST (Debian's dataset-fashion-mnist, installed by `make test`)."""
    try:
        return load_dataset("fashion-mnist", data_dir=REPO / "data", download=False)
    except DatasetError as exc:
        if os.environ.get("CI"):
            raise  # CI installs the package: its absence is a broken set-up, not a reason to skip
        pytest.skip(f"Fashion-MNIST is not installed here ({exc})")


@pytest.fixture(scope="session")
def trained_lenet(fashion_mnist):
    """LeNet5 trained for 3 epochs on Fashion-MNIST (about 15 s on 2 CPU cores)."""
    from models import create_model
    from pruning import TrainConfig, train

    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_channels=1)
    train(model, fashion_mnist, TrainConfig(epochs=3, lr=0.05), progress=False)
    return model.eval()
