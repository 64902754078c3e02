"""The shape of the search package: no import cycles, and commands are leaves (no command imports
another command), so the library modules can be reused by every command and backend."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

SEARCH = REPO / "search"
COMMANDS = {p.stem for p in SEARCH.glob("*.py") if not p.stem.startswith("_")}


def _imports(path: Path) -> set[str]:
    """``search`` modules that ``path`` imports (at any depth of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("search"):
            if node.module == "search":
                found |= {a.name for a in node.names}
            else:
                found.add(node.module.split(".", 1)[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("search.")}
    return found


def _graph() -> dict[str, set[str]]:
    return {p.stem: _imports(p) for p in SEARCH.glob("*.py") if p.stem != "__init__"}


def test_commands_do_not_import_commands():
    assert COMMANDS >= {"run", "train", "pick", "report"}
    for name, deps in _graph().items():
        assert not deps & COMMANDS, f"search/{name}.py imports the command(s) {deps & COMMANDS}"


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [node, dep]))
            if dep not in state:
                visit(dep, path + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_ray_is_imported_only_by_its_backend():
    for path in list(SEARCH.glob("*.py")) + list((REPO / "pruning").glob("*.py")):
        text = path.read_text()
        if path.name != "_ray.py":
            assert "import ray" not in text and "from ray" not in text, path.name
