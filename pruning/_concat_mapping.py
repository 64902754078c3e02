"""Torch-Pruning's concatenation index mapping in linear time.

Torch-Pruning re-derives every concatenation's index mapping each time it builds a pruning group
(``DependencyGraph.get_pruning_group`` calls ``index_mapping.update_index_mapping``), and its
``update_concat_index_mapping`` pairs inputs with dependencies through a list scan inside a scan
inside a scan: inputs² × dependencies per concatenation. DenseNet121 concatenates up to 32 inputs at
58 places, so each of the several hundred groups one surgery builds paid for that again: 40 % of a
DenseNet121 graph trace, plan surgery and checkpoint rebuild (0.80 / 1.14 / 0.51 s against
0.48 / 0.68 / 0.32 s here, AMD EPYC, 64x64 inputs).

:func:`update_concat_index_mapping` sets the same mappings (same dependencies, same offsets, the
k-th repeat of an input taking the k-th dependency as the library's does) with one pass per input.
It replaces the library's function only for the version it was checked against
(``LIBRARY_VERSION``, the version pyproject.toml pins); any other version keeps its own.
tests/pruning/test_concat_mapping.py checks that both set the same mappings, and the same surgery.

The library also re-derives *every* mapping of the graph before each group it builds, though only a
surgery changes them: listing a DenseNet121's 121 groups re-derived them 121 times, 60 % of a map
cell's surgery under cProfile. Inside :func:`held` (no pruning there) the graph's mappings are derived once.
"""
from __future__ import annotations

from contextlib import contextmanager
from importlib.metadata import version
from typing import Iterator

from torch_pruning import ops
from torch_pruning.dependency import constants, index_mapping, shape_infer

LIBRARY_VERSION = "1.6.1"
LIBRARY = index_mapping.update_concat_index_mapping  # the library's own, kept for the equivalence test
LIBRARY_UPDATE = index_mapping.update_index_mapping  # every mapping of a graph, re-derived
HELD = "_pruning_mappings_held"  # graph attribute: True while its mappings are known to be current


def update_concat_index_mapping(graph, cat_node) -> None:
    """``torch_pruning.dependency.index_mapping.update_concat_index_mapping`` (1.6.1), with each
    input's dependencies found by one pass rather than by a scan per input."""
    if cat_node.type != ops.OPTYPE.CONCAT:
        return
    dim = getattr(cat_node.grad_fn, "_saved_dim", None)
    if dim is not None and dim != 1 and dim < constants.MAX_VALID_DIM:
        return
    if cat_node.module.concat_sizes is not None:
        chs = cat_node.module.concat_sizes
    else:
        chs = [shape_infer.infer_channels_between(graph, n, cat_node) for n in cat_node.inputs]
        cat_node.module.concat_sizes = chs
    out_size = shape_infer.infer_in_channels_recursively(graph, cat_node, recursive_depth=[0])
    if out_size is not None and out_size != sum(chs):
        return  # the concat was applied on a dimension other than the channels
    if any(ch is None for ch in chs):
        return
    offsets = [0]
    for ch in chs:
        offsets.append(offsets[-1] + ch)
    cat_node.module.offsets = offsets
    if not cat_node.enable_index_mapping:
        return
    into = _by_target(cat_node.dependencies)  # cat -> its inputs: reverse mappings
    for k, (i, in_node) in _occurrences(cat_node.inputs):
        deps = into.get(id(in_node), [])
        if k < len(deps):
            deps[k].index_mapping[1] = index_mapping._ConcatIndexMapping(offset=offsets[i: i + 2], reverse=True)
    for k, (i, in_node) in _occurrences(cat_node.inputs):  # each input -> cat: forward mappings
        dep = _kth_to(in_node.dependencies, cat_node, k)
        if dep is not None:
            dep.index_mapping[1] = index_mapping._ConcatIndexMapping(offset=offsets[i: i + 2], reverse=False)


def _by_target(dependencies) -> dict[int, list]:
    """Dependencies grouped by target node, in list order, each dependency object once."""
    out: dict[int, list] = {}
    seen: set[int] = set()
    for dep in dependencies:
        if id(dep) not in seen:
            seen.add(id(dep))
            out.setdefault(id(dep.target), []).append(dep)
    return out


def _kth_to(dependencies, target, k: int):
    """The k-th (0 first) distinct dependency of ``dependencies`` on ``target``, or None."""
    seen: set[int] = set()
    for dep in dependencies:
        if dep.target is target and id(dep) not in seen:
            if len(seen) == k:
                return dep
            seen.add(id(dep))
    return None


def _occurrences(nodes):
    """(k, (i, node)): ``node`` is the k-th repeat (0 first) of itself among ``nodes``, at position i."""
    count: dict[int, int] = {}
    for i, node in enumerate(nodes):
        k = count.get(id(node), 0)
        count[id(node)] = k + 1
        yield k, (i, node)


def update_index_mapping(graph) -> None:
    """``torch_pruning.dependency.index_mapping.update_index_mapping``, skipped while the graph's
    mappings are held current (:func:`held`)."""
    if not getattr(graph, HELD, False):
        LIBRARY_UPDATE(graph)


@contextmanager
def held(graph) -> Iterator[None]:
    """Build groups of ``graph`` without re-deriving its index mappings before each one: derived
    once on entry, read as they are until exit. Nothing inside may prune: a surgery changes them."""
    LIBRARY_UPDATE(graph)
    setattr(graph, HELD, True)
    try:
        yield
    finally:
        setattr(graph, HELD, False)


def install() -> bool:
    """Use :func:`update_concat_index_mapping` and :func:`update_index_mapping` in Torch-Pruning if
    it is the version they mirror."""
    if version("torch-pruning") != LIBRARY_VERSION:
        return False
    index_mapping.update_concat_index_mapping = update_concat_index_mapping
    index_mapping.update_index_mapping = update_index_mapping
    return True
