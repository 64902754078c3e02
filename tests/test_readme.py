"""The README's commands do not go stale. Fast: every command line of its code blocks is checked
against the code it names (``python -m search.<command>`` lines by that command's own argument
parser and the model-source parser, ``make`` lines against the Makefile's targets, the dashboard
line against one study folder). Slow: every line is run, as a user would type it, with only the
rewrites named below that shrink a study to minutes; a README command no test runs fails."""
from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models import parse_source
from tests.conftest import PYTHON, REPO, write_image_folder

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def _commands(path) -> list[str]:
    """Every command line of the file's code blocks (comments after ``#`` dropped, continuation
    lines joined)."""
    lines = []
    for block in FENCE.findall(path.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


README_COMMANDS = _commands(REPO / "README.md")


def test_the_readme_shows_commands():
    assert any(c.startswith("make search") for c in README_COMMANDS)
    assert any(c.startswith("make test") for c in README_COMMANDS)
    assert sum(c.startswith("python -m search.") for c in README_COMMANDS) >= 3


@pytest.mark.parametrize("line", [c for c in README_COMMANDS if c.startswith("python -m search.")])
def test_a_search_command_of_the_readme_parses(line):
    argv = shlex.split(line)
    module = importlib.import_module(argv[2])
    assert hasattr(module, "main"), f"{argv[2]} is not a command"
    try:
        args = module.get_args_parser().parse_args(argv[3:])
    except SystemExit as exc:
        pytest.fail(f"the README's command is refused by its parser (exit {exc.code}): {line}")
    model = getattr(args, "model", None)
    if model is not None:
        parse_source(model)  # a registry name, torchvision:/timm: architecture or an entry point


@pytest.mark.parametrize("line", [c for c in README_COMMANDS if c.startswith("make ")])
def test_a_make_command_of_the_readme_names_a_target(line):
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
    named = [w for w in shlex.split(line)[1:] if "=" not in w and not w.startswith("-")]
    assert named and set(named) <= targets, f"{line}: the Makefile has {sorted(targets)}"


@pytest.mark.parametrize("line", [c for c in README_COMMANDS if c.startswith("optuna-dashboard ")])
def test_a_dashboard_command_of_the_readme_names_one_study_folder(line):
    argv = shlex.split(line)
    journal = next(a for a in argv[1:] if a.endswith("journal.log"))
    artifacts = argv[argv.index("--artifact-dir") + 1]
    assert journal.rsplit("/", 1)[0] == artifacts.rstrip("/").rsplit("/", 1)[0], line


# ---- The README's commands, run. A resnet50 study is hours of CPU and a resnet50 trained to more
# than chance is minutes, so the own-model walk runs as the README shows it with these rewrites
# only, each visible here: resnet50 -> resnet18 (same family, same trace), a config whose default
# budget is the smoke one (so the default study folder, the one the dashboard line names, is the
# folder used), whose report times no point and makes no INT8 rows and whose map prunes each key at
# one ratio, not four (seams_only: 172 s of the study's 188 were the first two; all three are covered
# by their own tests), 64x64 images, and pick's bar widened (a smoke front is not within 1 point).
WALK_REWRITES = {"resnet50": "resnet18"}
APPENDED = {
    "search.run": ["--quiet"],
    "search.pick": ["--max-drop", "100"],
    "search.summary": [],
}
MAKE_ARGS = "--budget smoke --trials 4 --quiet"


OWN_MODEL_WALK = [c for c in README_COMMANDS if "torchvision:" in c or "torchvision-" in c]
THREE_OBJECTIVES = [c for c in README_COMMANDS if "--objectives" in c or c.startswith("python -m search.summary")]
MAKE_SEARCH = [c for c in README_COMMANDS if c.startswith("make search")]


def test_every_command_of_the_readme_is_run_by_a_test():
    """A command added to the README that none of the run tests below takes up fails here; ``make
    test`` is the command CI itself runs (.ci/run). (A run test may skip where make cannot run:
    ``make search`` outside the project's .venv.)"""
    covered = set(OWN_MODEL_WALK) | set(THREE_OBJECTIVES) | set(MAKE_SEARCH)
    assert set(README_COMMANDS) - covered == {"make test"}
    assert "make test" in (REPO / ".ci" / "run").read_text().splitlines()
    assert [c.split()[0] if c.startswith("optuna") else c.split()[2] for c in OWN_MODEL_WALK] == \
        ["search.run", "optuna-dashboard", "search.pick"]


def _argv(line: str, *, extra=()) -> list[str]:
    for old, new in WALK_REWRITES.items():
        line = line.replace(old, new)
    argv = shlex.split(line)
    if argv[0] == "python":
        argv = [PYTHON] + argv[1:] + APPENDED[argv[2]]
    elif argv[0] == "optuna-dashboard":
        argv = [str(Path(PYTHON).parent / "optuna-dashboard")] + argv[1:]
    return argv + list(extra)


def _shell(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}"
    return done


def _smoke_default_config(path: Path) -> Path:
    from tests.search.test_your_model import seams_only

    config = seams_only(yaml.safe_load((REPO / "configs" / "any-model.yaml").read_text()))
    config["budgets"]["default"] = dict(config["budgets"]["smoke"])
    path.write_text(yaml.safe_dump(config))
    return path


def _served_study_names(argv: list[str], cwd: Path) -> set[str]:
    """The dashboard line, started as a real server on a free port; the study names it serves."""
    from tests.search.test_dashboard import _free_port

    port = _free_port()
    server = subprocess.Popen(argv + ["--host", "127.0.0.1", "--port", str(port)], cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, whatever http_proxy says
    hang_guard = time.monotonic() + 600  # not a speed guess: only a server that neither listens nor exits
    try:
        while server.poll() is None and time.monotonic() < hang_guard:  # waits on the server itself
            try:
                with direct.open(f"http://127.0.0.1:{port}/api/studies", timeout=10) as answer:
                    return {s["study_name"] for s in json.loads(answer.read())["study_summaries"]}
            except urllib.error.HTTPError as exc:
                pytest.fail(f"the README's dashboard answered {exc.code} on /api/studies")
            except OSError:  # not listening yet
                time.sleep(0.2)
        pytest.fail(f"the README's dashboard command exited {server.returncode} or never listened: "
                    f"{server.stderr.read()[-2000:] if server.returncode is not None else ''}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.slow
def test_the_readme_walk_with_your_own_model_runs(tmp_path, fashion_mnist):
    """Prune your own model, as the README shows it: the study, the dashboard on its folder, the
    pick saved as a checkpoint and a verified ONNX file."""
    import onnxruntime as ort

    from pruning import load_checkpoint, to_plain
    from tests.search.test_your_model import _trained_weights

    write_image_folder(tmp_path / "my_images", fashion_mnist, per_class=80, size=64)
    weights = _trained_weights(tmp_path / "my_images", "torchvision:resnet18", tmp_path / "my_resnet18.pt", steps=150)
    config = ["--config", str(_smoke_default_config(tmp_path / "smoke-as-default.yaml"))]
    run_line, dashboard_line, pick_line = OWN_MODEL_WALK
    _shell(_argv(run_line, extra=config + ["--image-size", "64"]), tmp_path)
    study = tmp_path / "studies" / "torchvision-resnet18-imagefolder"
    base = load_checkpoint(study / "baseline.pt", expect_model="torchvision:resnet18")
    given = torch.load(weights, weights_only=True)["model"]
    assert all(torch.equal(base.model.state_dict()[k].cpu(), v) for k, v in given.items())  # never retrained
    assert base.meta.provenance["trained_by"] == "user"
    answer = json.loads((study / "report.json").read_text())
    assert answer["front_points"] >= 1
    assert answer["baseline"]["val_accuracy"] == pytest.approx(base.meta.metrics["val_accuracy"])
    assert "from my_images" in (study / "report.md").read_text()
    assert _served_study_names(_argv(dashboard_line), tmp_path) == {"torchvision-resnet18-imagefolder"}
    _shell(_argv(pick_line, extra=config), tmp_path)
    picked = load_checkpoint(tmp_path / "small.pt", expect_model="torchvision:resnet18")
    assert picked.meta.preprocessing.input_size == 64 and picked.meta.preprocessing.resize_size == 73
    sidecar = json.loads((tmp_path / "small.json").read_text())
    assert sidecar["input"]["shape"] == ["batch", 3, 64, 64] and "centre 64x64" in sidecar["preprocessing"]["formula"]
    assert sidecar["baseline"] == to_plain(picked.meta.baseline) and sidecar["baseline"]["size_mb"] > 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = picked.model.eval()(x).numpy()
    session = ort.InferenceSession(str(tmp_path / "small.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(got, expected, atol=1e-3)


@pytest.mark.slow
def test_the_readme_three_objective_study_and_the_summary_run(tmp_path, fashion_mnist):
    """The three-objective LeNet5 line (the smoke budget appended) and the summary over the studies
    folder it writes."""
    study_line, summary_line = THREE_OBJECTIVES
    smoke = ["--budget", "smoke", "--trials", "4", "--data-dir", str(REPO / "data")]
    _shell(_argv(study_line, extra=smoke), tmp_path)
    study = tmp_path / "studies" / "lenet5-3-objectives"
    assert "## The 3-objective front" in (study / "report.md").read_text()
    _shell(_argv(summary_line), tmp_path)
    table = (tmp_path / "studies" / "summary.md").read_text()
    assert "| lenet5 | " in table and "`studies/lenet5-3-objectives`" in table and (tmp_path / "studies" / "summary.csv").exists()


@pytest.mark.slow
def test_the_readmes_make_search_runs(tmp_path, fashion_mnist):
    """``make search MODEL=lenet5`` through the Makefile (ARGS shrinks it to the smoke budget and
    sends the study to a temporary folder; the venv is the one `make test` set up)."""
    (line,) = MAKE_SEARCH
    stamp = REPO / ".venv" / ".installed"
    if (Path(PYTHON).resolve() != (REPO / ".venv" / "bin" / "python").resolve() or not stamp.exists()
            or stamp.stat().st_mtime < (REPO / "pyproject.toml").stat().st_mtime):
        pytest.skip("make search would (re)install the project's .venv: run this suite through make test")
    out = tmp_path / "lenet5"
    # -o data: the dataset is found already (fashion_mnist); make must not try apt-get from a test
    _shell(shlex.split(line) + ["-C", str(REPO), "-o", "data", f"ARGS={MAKE_ARGS} --out {out}"], tmp_path)
    report = json.loads((out / "report.json").read_text())
    assert report["front_points"] >= 1 and (out / "baseline.pt").exists()
