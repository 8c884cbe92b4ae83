"""Secrets kept out of what pytest-hil saves (run folders are attached to reports and
uploaded by CI).

A secret is the value of an environment variable (the host's, or the target's
``[env]``) whose name contains ``TOKEN``, ``SECRET``, ``PASSWORD`` or ``KEY``, or
is listed in the target's ``[env] redact = [...]``.  Saved JSON has the values of
such keys replaced wherever they appear (a compose file's ``environment``, with
``env_file`` values inlined), and every occurrence of a secret value in any
string replaced by :data:`MASK`.  The board and the container still get the
real values: only the files written here are redacted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

#: What a secret value is replaced with.
MASK = "***"
#: Names whose values are secrets.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY", re.IGNORECASE)
#: Shorter values are not masked in free text (they would mask ordinary words and numbers).
MIN_SECRET = 4


class Redactor:
    """Masks secret values in text and JSON-like data."""

    def __init__(self, values: Iterable[str], names: Iterable[str] = ()) -> None:
        self.values = sorted({v for v in values if len(v) >= MIN_SECRET}, key=len, reverse=True)
        self.names = frozenset(names)

    @classmethod
    def for_env(cls, *envs: Mapping[str, str], names: Iterable[str] = ()) -> Redactor:
        """The secrets of ``envs`` (default: the host's environment): values of secret-like
        names and of ``names``."""
        listed = frozenset(names)
        values = [value for env in (envs or (os.environ,)) for name, value in env.items()
                  if name in listed or SECRET_NAME.search(name)]
        return cls(values, listed)

    def secret_name(self, name: str) -> bool:
        """Whether a value under ``name`` is a secret."""
        return name in self.names or bool(SECRET_NAME.search(name))

    def text(self, text: str) -> str:
        """``text`` with every secret value masked."""
        for value in self.values:
            text = text.replace(value, MASK)
        return text

    def data(self, data: Any) -> Any:
        """A copy of JSON-like ``data`` with secret keys' values and secret values masked."""
        if isinstance(data, dict):
            return {key: (MASK if isinstance(key, str) and self.secret_name(key)
                          and isinstance(value, (str, int, float)) else self.data(value))
                    for key, value in data.items()}
        if isinstance(data, list):
            if all(isinstance(item, str) for item in data):  # KEY=VALUE lists (compose, docker)
                return [self._assignment(item) for item in data]
            return [self.data(item) for item in data]
        if isinstance(data, str):
            return self.text(data)
        return data

    def _assignment(self, item: str) -> str:
        name, eq, _ = item.partition("=")
        if eq and self.secret_name(name):
            return f"{name}={MASK}"
        return self.text(item)


def redactor_for(spec: Any) -> Redactor:
    """The redactor of a target: the host's environment and its ``[env]``, with its
    ``[env] redact`` names."""
    return Redactor.for_env(os.environ, dict(spec.env), names=getattr(spec, "redact", ()))


__all__ = ["MASK", "SECRET_NAME", "Redactor", "redactor_for"]
