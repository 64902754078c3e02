"""Shared fixtures and study helpers. Tests never use the network: datasets come from disk or are
written here. ``-m "not slow"`` (make test-fast) leaves out subprocesses, servers, long training, deep
models and tests that make studies of their own beyond the one a module shares."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from pruning import DatasetError, load_dataset

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
if os.environ.get("PYTEST_XDIST_WORKER"):
    # make test runs two pytest workers on this machine's two cores: one thread each, for the commands
    # they start too (two processes of two threads each on two cores spin against each other)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A LeNet5 study small enough for seconds: a real Fashion-MNIST subset, a few fine-tune steps.
TINY_LENET = {
    "dataset": "fashion-mnist",
    "baseline": {"epochs": 2, "lr": 0.05},
    "finetune": {"lr": 0.01, "kd_weight": 0.0},
    "recovery": {"epochs": 0.1, "lr": 0.01, "kd_weight": 0.5},
    "search": {"granularity": "unit", "references": ["uniform"], "reference_ratios": [0.2, 0.5, 0.8],
               "rung_min_trials": 4},
    # configs/lenet5.yaml's runs time every point; INT8 of the recovered points is tested in test_int8.py only
    # (seconds per point, and most test modules make a study of their own)
    "report": {"recover_points": 2, "latency": "recovered", "int8": "none"},
    "budgets": {"smoke": {"trials": 8, "finetune_steps": 15, "bn_batches": 2, "baseline_epochs": 2,
                          "train_subset": 4096, "val_subset": 600, "test_subset": 1000}},
}


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


def one_thread_each() -> dict:
    """The environment for a command that runs beside another heavy one: one OpenMP thread per
    process, as docs/usage.md advises on a busy machine. Two processes of two threads each on two
    cores spin against each other (bench/busy_threads.py): two tiny LeNet5 studies on one journal
    took 133 s side by side and 17 s with one thread each, most of it in the report's latency."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def without_faults() -> dict:
    """The environment of a command a test starts, without a fault point set by the test's own run."""
    from search.config import ENV

    return {k: v for k, v in os.environ.items() if k != ENV}


@pytest.fixture(scope="module")
def synthetic():
    """The synthetic dataset (no files: the tests that need no real images)."""
    return load_dataset("synthetic", seed=0)


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def check_finished(study: optuna.Study, total: int) -> None:
    """``total`` trials finished, none left running, no trial number twice."""
    assert len(study.get_trials(states=FINISHED)) == total
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def merged(base: dict, **sections: dict) -> dict:
    """``base`` with some sections' keys replaced (``search={"eta": 2}``)."""
    out = dict(base)
    for name, values in sections.items():
        out[name] = {**base.get(name, {}), **values} if isinstance(values, dict) else values
    return out


def smoke_budget(**changes) -> dict:
    return {"smoke": {**TINY_LENET["budgets"]["smoke"], **changes}}


def slow_config(tmp_path: Path, steps: int = 300) -> Path:
    """The tiny config with trials long enough that a second process (or a kill) lands inside one."""
    return write_config(tmp_path / "slow.yaml", merged(TINY_LENET, budgets=smoke_budget(finetune_steps=steps)))


@pytest.fixture(scope="session")
def headline_study(tmp_path_factory, fashion_mnist) -> tuple[Path, Path, Path]:
    """(folder, config, study folder) of a 6-trial tiny LeNet5 study whose report has a headline
    however its trials land (a 50-point bar): the path from a front to a shipped model. Shared by the
    deploy and INT8 tests, which read it and write only to folders of their own (a test that changes
    the study copies it first)."""
    from search import run

    root = tmp_path_factory.mktemp("headline-study")
    config = write_config(root / "tiny.yaml", merged(TINY_LENET, report={"headline_max_drop": 50.0}))
    out = root / "out"
    assert run.main(base_args(config, out) + ["--quiet", "--trials", "6"]) == 0
    return root, config, out


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    return write_config(tmp_path / "tiny.yaml", TINY_LENET)


def base_args(config: Path, out: Path, model: str = "lenet5") -> list[str]:
    return ["--model", model, "--config", str(config), "--budget", "smoke", "--out", str(out),
            "--data-dir", str(REPO / "data")]


def cli(module, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run a command's main() as the shell would, returning (exit code, stdout, stderr)."""
    from search.cli import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_cli(module.main, argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def study_of(out: Path, name: str = "lenet5-fashion-mnist") -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "journal.log")))
    return optuna.load_study(study_name=name, storage=storage)


def has_study(out: Path, name: str = "lenet5-fashion-mnist") -> bool:
    if not (out / "journal.log").exists():
        return False
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "journal.log")))
    return any(s.study_name == name for s in optuna.get_all_study_summaries(storage))


def folder_hash(folder: Path) -> dict[str, str]:
    """Content hash of every file of a folder (a study must not change when a command fails)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_image_folder(root: Path, data, *, per_class: int, size: int = 48, splits=("train", "test"),
                       classes: int = 4, taller: int = 8) -> Path:
    """An ImageFolder tree (``<split>/<class>/<n>.png``, RGB, ``size`` x ``size + taller`` so the
    resize-and-crop path is exercised) from the real Fashion-MNIST images of ``data``."""
    from PIL import Image

    for split in splits:
        x, y = (data.train_x, data.train_y) if split != "test" else (data.test_x, data.test_y)
        offset = per_class if split == "val" else 0  # val/ takes other training images than train/
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in torch.nonzero(y == c).flatten()[offset:offset + per_class].tolist():
                Image.fromarray(x[i, 0].numpy()).convert("RGB").resize((size, size + taller)).save(folder / f"{i}.png")
    return root


def two_key_study(sampler, n_trials: int):
    """A toy two-key study (keys ``a``, ``b``, stage granularity) under ``sampler``: a fixed plan
    enqueued first (level 0.9, shapes 0), then ``n_trials`` - 1 sampled ones."""
    import optuna

    from search.trial import sample

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.enqueue_trial({"level": 0.9, "a": 0.0, "b": 0.0})

    def objective(trial):
        ratios = sample(trial, ["a", "b"], "stage", 0.9)
        return -ratios["a"] ** 2 - ratios["b"], sum(ratios.values())

    study.optimize(objective, n_trials=n_trials)
    return study
