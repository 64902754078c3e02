"""bench/gpu_run.sh, the script a GPU lease runs, in its tiny CPU mode: the same phases on LeNet5."""
from __future__ import annotations

import json
import os
import subprocess
import tarfile

import pytest

from tests.conftest import PYTHON, REPO


@pytest.mark.slow
def test_gpu_run_script_in_tiny_mode(tmp_path, fashion_mnist):
    env = {**os.environ, "PYTHON": PYTHON, "GPU_RUN_WORK": str(tmp_path / "work")}
    result = subprocess.run(["bash", "bench/gpu_run.sh", "--tiny", str(tmp_path / "results")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    timings = json.loads((tmp_path / "results" / "timings.json").read_text())
    assert {k: v["status"] for k, v in timings.items()} == {"smoke": "ok", "studies": "ok", "benchmarks": "ok"}
    with tarfile.open(tmp_path / "results" / "gpu-results.tar.gz") as archive:
        names = set(archive.getnames())
    assert {"./studies/lenet5/report.md", "./studies/lenet5/pareto.png", "./smoke/lenet5.sidecar.json",
            "./throughput.bench.txt", "./prune_cost.bench.txt", "./timings.json"} <= names
    log = (tmp_path / "results" / "gpu-run.log").read_text()
    assert "device: " in log and "| lenet5 |" in log
