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
from search.storage import dashboard_command
from tests.conftest import base_args


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
    port = _free_port()
    command = shlex.split(dashboard_command(out, None)) + ["--host", "127.0.0.1", "--port", str(port)]
    assert command[0] == str(Path(sys.executable).parent / "optuna-dashboard")  # works in a fresh shell
    server = subprocess.Popen(command, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={"PATH": "/usr/bin:/bin"})
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


@pytest.mark.slow
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
    keys = [a["key"] for a in trial["user_attrs"]]
    assert set(keys) >= {"plan", "size_mb", "proxy_accuracy", "checkpoint"}
    assert keys[:3] == ["val_accuracy", "size_mb", "pruned_pct"]
    artifact = trial["artifacts"][0]
    body = _get(f"{base}/artifacts/{summary['study_id']}/{trial['trial_id']}/{artifact['artifact_id']}")
    assert body == (out / "artifacts" / artifact["artifact_id"]).read_bytes() and len(body) > 1000
    stopped = [t for t in detail["trials"] if t["state"] in ("Pruned", "Fail")]
    assert all(t["note"]["body"].startswith(("**Stopped early**", "**Failed**")) for t in stopped)


@pytest.mark.slow
def test_dashboard_serves_the_study_note_and_the_report_as_artifacts(served_study):
    base, out = served_study
    summaries = json.loads(_get(base + "/api/studies"))["study_summaries"]
    (summary,) = [s for s in summaries if s["study_name"] == "lenet5-fashion-mnist"]
    detail = json.loads(_get(f"{base}/api/studies/{summary['study_id']}"))
    note = detail["note"]["body"]
    assert "Baseline:" in note and ("Take it" in note and "python -m search.pick" in note or "No front point" in note)
    names = {a["filename"]: a["artifact_id"] for a in detail["artifacts"]}
    assert {"report.md", "pareto.png", "pareto.csv", "baseline.pt"} <= set(names)
    served = _get(f"{base}/artifacts/{summary['study_id']}/{names['report.md']}")
    assert served == (out / "report.md").read_bytes()
