"""The shell scripts the board runs: ``.sh`` files of this package, and the one place
their parameters are quoted.

A script travels as the text of ``sh -c``; its parameters travel as
positional arguments and environment assignments, each quoted with
:func:`shlex.quote` here and nowhere else.  The scripts read them as ``"$1"``
or ``"$NAME"`` and never splice them into code, so no value needs escaping in
the script's text.
"""

from __future__ import annotations

import functools
import re
import shlex
from importlib import resources

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_INCLUDE = re.compile(r"(?m)^#include ([a-z0-9-]+)\.sh$")


@functools.cache
def script_text(name: str) -> str:
    """The text of ``scripts/<name>.sh``, each ``#include other.sh`` line replaced by the
    text of that script (shared shell functions travel inside the one ``sh -c``)."""
    text = (resources.files(__package__) / "scripts" / f"{name}.sh").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda found: script_text(found[1]), text)


def board_command(name: str, *args: str, **env: str | None) -> str:
    """``[env K=V ...] sh -c '<script>' hil-<name> ARGS...`` for the board's login shell.

    ``None`` values are left out of the environment, so a script can tell
    "not given" (``${K+x}`` empty) from an empty string.
    """
    for key in env:
        if not _NAME.fullmatch(key):
            raise ValueError(f"not an environment variable name: {key!r}")
    assigns = [f"{k}={shlex.quote(v)}" for k, v in env.items() if v is not None]
    head = ("env " + " ".join(assigns) + " ") if assigns else ""
    return (head + "sh -c " + shlex.quote(script_text(name)) + " " +
            shlex.join([f"hil-{name}", *args]))
