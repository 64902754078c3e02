"""The search's own error for a request that cannot be carried out as given; every layer raises it,
the commands turn it into one line and exit code 2."""
from __future__ import annotations


class UsageError(ValueError):
    """A request that cannot be carried out as given (e.g. no front point meets a budget)."""


class ConfigError(ValueError):
    """A configuration that cannot be used: the message says which key and what is allowed."""
