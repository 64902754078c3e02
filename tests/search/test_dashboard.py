"""optuna-dashboard, started as the user would from the printed command, serves the study as written."""
from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from search import run
from search._config import load_config
from search._study import dashboard_command
from tests.conftest import REPO
from tests.search.conftest import base_args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@pytest.fixture
def served_study(tmp_path, tiny_config, fashion_mnist):
    out = tmp_path / "out"
    assert run.main(base_args(tiny_config, out) + ["--quiet", "--trials", "4"]) == 0
    cfg = load_config("lenet5", path=tiny_config, budget="smoke", out=str(out))
    port = _free_port()
    command = shlex.split(dashboard_command(cfg)) + ["--host", "127.0.0.1", "--port", str(port)]
    command[0] = str(Path(sys.executable).parent / "optuna-dashboard")  # the venv's, PATH or not
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                _get(base + "/api/meta")
                break
            except OSError:
                time.sleep(0.2)
        yield base, out
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_dashboard_serves_study_front_notes_and_artifacts(served_study):
    base, out = served_study
    summaries = json.loads(_get(base + "/api/studies"))["study_summaries"]
    (summary,) = [s for s in summaries if s["study_name"] == "lenet5-fashion-mnist"]
    detail = json.loads(_get(f"{base}/api/studies/{summary['study_id']}"))
    assert detail["objective_names"] == ["val_accuracy", "size_mb"]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "journal.log")))
    study = optuna.load_study(study_name="lenet5-fashion-mnist", storage=storage)
    assert sorted(t["number"] for t in detail["best_trials"]) == sorted(t.number for t in study.best_trials)
    assert len(detail["trials"]) == 4
    trial = next(t for t in detail["trials"] if t["artifacts"])
    assert "val accuracy" in trial["note"]["body"]
    assert {a["key"] for a in trial["user_attrs"]} >= {"plan", "size_mb", "proxy_accuracy", "checkpoint_artifact"}
    artifact = trial["artifacts"][0]
    body = _get(f"{base}/artifacts/{summary['study_id']}/{trial['trial_id']}/{artifact['artifact_id']}")
    assert body == (out / "artifacts" / artifact["artifact_id"]).read_bytes() and len(body) > 1000
