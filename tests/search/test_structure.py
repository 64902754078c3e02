"""The shape of the code, read from its import statements:

- ``search``'s sub-packages are layers, each importing only the ones below it
  (config < storage < trial < results < study < cli < the commands), and no module imports itself
  back through a cycle;
- commands are leaves (no command imports another command);
- a private module (``_name``) is imported only from inside its own package: the product and the
  benches use ``pruning``, ``models`` and ``search.<layer>`` through their public names. A test may
  look inside the package its folder tests (``tests/pruning`` into ``pruning.data._dataset``), never into
  another;
- every public name a package lists in ``__all__`` exists;
- only the Ray backend imports Ray;
- the data seam: outside the ``pruning.data`` package nothing reads a dataset's split tensors
  (``train_x`` ... ``test_y``) or asks whether its images are streamed; code asks the ``Dataset`` for
  ``inputs``, ``count``, ``labels`` or batches, so a new image pipeline is one class behind it."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.conftest import REPO

SEARCH = REPO / "search"
LAYERS = ["config", "storage", "trial", "results", "study", "cli"]  # bottom to top; the commands sit above
COMMANDS = {p.stem for p in SEARCH.glob("*.py") if not p.stem.startswith("_")}
PACKAGES = ["pruning", "pruning.data", "models", "search"] + [f"search.{layer}" for layer in LAYERS]


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (``from a import b`` counts ``a`` and,
    where ``b`` is a module, ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def _files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts]


def _layer(module: str) -> int | None:
    """The layer index of a ``search`` module; the commands (``search.run`` …) are one above the top."""
    parts = module.split(".")
    if parts[0] != "search" or len(parts) == 1:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else len(LAYERS)


def test_the_sub_packages_are_the_layers():
    assert {p.name for p in SEARCH.iterdir() if (p / "__init__.py").exists()} == set(LAYERS)
    assert not [p.name for p in SEARCH.glob("_*.py") if p.name != "__init__.py"], "a private module outside a layer"


def test_each_layer_imports_only_the_layers_below_it():
    for path in _files("search"):
        here = _layer(_module_name(path))
        if here is None:
            continue
        for dep in _imported(path):
            there = _layer(dep)
            assert there is None or there <= here, f"{_module_name(path)} imports {dep}, a layer above it"


def test_commands_do_not_import_commands():
    assert COMMANDS >= {"run", "train", "pick", "report"}
    for path in _files("search"):
        deps = {d.split(".")[1] for d in _imported(path) if d.startswith("search.") and d.count(".") == 1}
        assert not deps & COMMANDS, f"{_module_name(path)} imports the command(s) {deps & COMMANDS}"


def test_no_import_cycles():
    graph = {_module_name(p): _imported(p) for p in _files("search", "pruning", "models")}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if dep == node or dep not in graph or dep.rsplit(".", 1)[0] == node:  # a package's own modules
                continue
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [node, dep]))
            if dep not in state:
                visit(dep, path + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def _owner(private: str) -> str:
    """The package a private module belongs to: ``search.trial._objective`` -> ``search.trial``."""
    parts = private.split(".")
    return ".".join(parts[:next(i for i, p in enumerate(parts) if p.startswith("_"))])


@pytest.mark.parametrize("folder", ["search", "bench", "pruning", "models", "tests"])
def test_private_modules_are_imported_only_from_their_own_package(folder):
    wrong = []
    for path in _files(folder):
        here = _module_name(path)
        tested = here.split(".")[1] if folder == "tests" and here.count(".") >= 2 else None
        for dep in _imported(path):
            if dep.split(".")[0] not in ("search", "pruning", "models") or not any(
                    p.startswith("_") for p in dep.split(".")):
                continue
            owner = _owner(dep)
            inside = here == owner or here.startswith(owner + ".")
            if not inside and not (tested and owner.split(".")[0] == tested):
                wrong.append(f"{here} imports {dep}")
    assert not wrong, "private modules used from outside their package: " + "; ".join(sorted(wrong))


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_exists(package):
    module = importlib.import_module(package)
    names = getattr(module, "__all__", None)
    assert names is not None and len(names) == len(set(names)), f"{package} has no __all__, or repeats a name"
    assert all(hasattr(module, n) for n in names), [n for n in names if not hasattr(module, n)]


def test_ray_is_imported_only_by_its_backend():
    for path in _files("search", "pruning", "models"):
        text = path.read_text()
        if path.name != "_ray.py":
            assert "import ray" not in text and "from ray" not in text, path.name


SPLIT_FIELDS = {f"{split}_{part}" for split in ("train", "val", "test") for part in "xy"}


def test_nothing_reaches_past_the_data_seam():
    wrong = []
    for path in _files("search", "pruning", "models", "bench"):
        if REPO / "pruning" / "data" in path.parents:  # the package and its pipelines
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and (node.attr in SPLIT_FIELDS or node.attr == "streamed"):
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.Name) and node.id == "StreamedImages":
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno} StreamedImages")
    assert not wrong, "reaches past the data interface: " + "; ".join(wrong)
