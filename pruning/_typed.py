"""Frozen dataclasses from plain values (YAML, JSON, checkpoint metadata) and back, with every
field's type and range checked: one implementation for configs and records alike.

A field's range lives in its metadata (``field(default=..., metadata=bounds(above=0))``); the
dataclass's ``__post_init__`` calls :func:`check_fields`, so a value is checked however the object
is made. Numbers must be finite, ``bool`` is never taken for a number, and unknown keys are errors.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Mapping

_NONE = type(None)


def bounds(*, low: float | None = None, high: float | None = None, above: float | None = None,
           below: float | None = None, choices: tuple | None = None) -> dict[str, Any]:
    """Field metadata: ``low``/``high`` inclusive, ``above``/``below`` exclusive, ``choices`` a set."""
    return {k: v for k, v in (("low", low), ("high", high), ("above", above), ("below", below),
                              ("choices", choices)) if v is not None}


def _range_text(meta: Mapping[str, Any]) -> str:
    if "choices" in meta:
        return "one of: " + ", ".join(map(str, meta["choices"]))
    lo = f"> {meta['above']}" if "above" in meta else f">= {meta['low']}" if "low" in meta else ""
    hi = f"< {meta['below']}" if "below" in meta else f"<= {meta['high']}" if "high" in meta else ""
    return " and ".join(p for p in (lo, hi) if p)


def _in_range(value: Any, meta: Mapping[str, Any]) -> bool:
    if "choices" in meta:
        return value in meta["choices"]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return True
    return not (("low" in meta and value < meta["low"]) or ("high" in meta and value > meta["high"])
                or ("above" in meta and value <= meta["above"]) or ("below" in meta and value >= meta["below"]))


def check_fields(obj: Any, where: str) -> None:
    """Raise ``ValueError`` naming the first field of ``obj`` outside its metadata's range."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{where}.{f.name} must be a finite number, got {item!r}")
            if item is not None and f.metadata and not _in_range(item, f.metadata):
                raise ValueError(f"{where}.{f.name} must be {_range_text(f.metadata)}, got {item!r}")


def from_plain(cls: type, data: Any, *, where: str, error: type[Exception] = ValueError) -> Any:
    """Build the frozen dataclass ``cls`` from a mapping of plain values, or raise ``error`` with one
    line naming the key (``where.key``), the value received and what is allowed."""
    if not isinstance(data, Mapping):
        raise error(f"{where} must be a mapping of keys to values, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise error(f"unknown key {where}.{unknown[0]}; allowed: {', '.join(sorted(known))}")
    try:
        values = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise error(str(exc).splitlines()[0] if str(exc) else f"{where}: {type(exc).__name__}") from None


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        inner = [a for a in args if a is not _NONE]
        if len(inner) == 1:
            return _coerce(inner[0], value, where)
        for option in inner:  # e.g. float | str: the first that takes the value
            try:
                return _coerce(option, value, where)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"{where} has the wrong type ({_kind(value)})")
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_plain(hint, value, where=where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where} must be a list, got {_kind(value)} {value!r}"[:200])
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise TypeError(f"{where} must be a mapping, got {_kind(value)}")
        key_t, val_t = args if args else (Any, Any)
        return {_coerce(key_t, k, where): _coerce(val_t, v, f"{where}.{k}") for k, v in value.items()}
    return _scalar(hint, value, where)


def _scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where} must be true or false, got {value!r}"[:200])
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where} must be a whole number, got {_kind(value)} {value!r}"[:200])
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where} must be a number, got {_kind(value)} {value!r}"[:200])
        if not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"{where} must be text, got {_kind(value)} {value!r}"[:200])
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise TypeError(f"{where} must be {hint.__name__}, got {_kind(value)}")
    return value


def to_plain(obj: Any) -> Any:
    """Plain values (dicts, lists, numbers, text) of a dataclass, for YAML, JSON and checkpoints."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
