"""The README's commands do not go stale: every command line in its code blocks is checked against
the code it names. ``python -m search.<command> ...`` lines are parsed by that command's own
argument parser (every flag and value valid) and their ``--model`` by the model-source parser;
``make <target>`` lines name a target of the Makefile; ``optuna-dashboard`` lines name a journal
and an artifact folder of one study folder. Running them all is the suite's job elsewhere (a
densenet121 study is hours of CPU); this test catches a renamed flag, a removed command or a model
the registry no longer has."""
from __future__ import annotations

import importlib
import re
import shlex

import pytest

from models import parse_source
from tests.conftest import REPO

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
