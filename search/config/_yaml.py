"""Reading a config file: a regular file of bounded size, YAML without aliases, bounded integers
and no key given twice; anything else is one :class:`ConfigError` line."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from search.config._errors import ConfigError

MAX_CONFIG_BYTES = 1_000_000
MAX_INT_DIGITS = 30  # no setting needs 10^30; longer integers overflow a float or Python's int parsing


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a config never needs them, and nested aliases can make a
    small file expand without bound."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"YAML aliases (*{event.anchor}) are not allowed in a config "
                              f"(line {event.start_mark.line + 1}); write the values out")
        return super().compose_node(parent, index)

    def construct_yaml_int(self, node):
        """Refuse an integer of more than :data:`MAX_INT_DIGITS` digits before Python converts it (a
        5,000-digit one exceeds Python's conversion limit; 10^400 overflows a float)."""
        if sum(c.isdigit() for c in str(node.value)) > MAX_INT_DIGITS:
            raise ConfigError(f"an integer of {len(str(node.value)):,} digits at line {node.start_mark.line + 1} "
                              f"is not a config value; write a number of at most {MAX_INT_DIGITS} digits")
        return super().construct_yaml_int(node)

    def construct_mapping(self, node, deep=False):
        """Refuse a key given twice in one mapping (YAML would silently keep the last value)."""
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key {str(key)[:80]!r} is given twice at line {key_node.start_mark.line + 1}; "
                                  f"keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_NoAliasLoader.add_constructor("tag:yaml.org,2002:int", _NoAliasLoader.construct_yaml_int)


def _read_regular(path: Path) -> bytes:
    """The bytes of ``path``, refused unless it is a regular file of at most ``MAX_CONFIG_BYTES``:
    opened non-blocking and checked on the descriptor, as reading a FIFO or ``/dev/zero`` (directly
    or through a link) would wait or read forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"config {path} is not a regular file (a FIFO, a device, a socket or a folder); "
                              f"name a YAML file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path} is larger than {MAX_CONFIG_BYTES:,} bytes; it is not a config")
        return handle.read(MAX_CONFIG_BYTES + 1)


def read_yaml(path: str | Path) -> dict:
    """A config file as a mapping, or one line saying why it cannot be read."""
    path = Path(path)
    try:
        text = _read_regular(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"cannot read config {path}: {reason}") from None
    try:
        raw = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config {path} is not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"config {path} is nested too deeply") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values")
    return raw
