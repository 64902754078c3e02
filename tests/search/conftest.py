from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from search._cli import run_cli
from tests.conftest import REPO

TINY_LENET = {
    "dataset": "fashion-mnist",
    "baseline": {"epochs": 2, "lr": 0.05},
    "finetune": {"lr": 0.01, "kd_weight": 0.0},
    "search": {"granularity": "unit", "uniform_ratios": [0.2, 0.5, 0.8], "early_stop_margin": 0.03},
    "budgets": {"smoke": {"trials": 8, "finetune_steps": 15, "bn_batches": 2, "baseline_epochs": 2,
                          "train_subset": 4096, "val_subset": 600, "test_subset": 1000}},
}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    return write_config(tmp_path / "tiny.yaml", TINY_LENET)


def cli(module, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run a command's main() as the CLI would, returning (exit code, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_cli(module.main, argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def base_args(config: Path, out: Path, model: str = "lenet5") -> list[str]:
    return ["--model", model, "--config", str(config), "--budget", "smoke", "--out", str(out),
            "--data-dir", str(REPO / "data")]


PYTHON = sys.executable
