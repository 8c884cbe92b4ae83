"""Shell scripts shipped as package files, and the one place their parameters are quoted.

A script travels as the text of ``sh -c`` (on a board over SSH, or on this
host); its parameters travel as positional arguments and environment
assignments, each quoted with :func:`shlex.quote` here and nowhere else.  The
scripts read them as ``"$1"`` or ``"$NAME"`` and never splice them into code,
so no value needs escaping in a script's text.  ``#include other.sh`` lines
are replaced by that script's text (shared shell functions travel inside the
one ``sh -c``).
"""

from __future__ import annotations

import functools
import re
import shlex
from importlib import resources

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INCLUDE = re.compile(r"(?m)^#include ([a-z0-9-]+)\.sh$")


@functools.cache
def script_text(package: str, folder: str, name: str) -> str:
    """The text of ``<package>/<folder>/<name>.sh``, its ``#include`` lines expanded."""
    text = (resources.files(package) / folder / f"{name}.sh").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda found: script_text(package, folder, found[1]), text)


def script_command(package: str, folder: str, name: str, *args: str, **env: str | None) -> str:
    """``[env K=V ...] sh -c '<script>' hil-<name> ARGS...``: one shell command line.

    ``None`` values are left out of the environment, so a script can tell
    "not given" (``${K+x}`` empty) from an empty string.
    """
    for key in env:
        if not _NAME.fullmatch(key):
            raise ValueError(f"not an environment variable name: {key!r}")
    assigns = [f"{k}={shlex.quote(v)}" for k, v in env.items() if v is not None]
    head = ("env " + " ".join(assigns) + " ") if assigns else ""
    return (head + "sh -c " + shlex.quote(script_text(package, folder, name)) + " " +
            shlex.join([f"hil-{name}", *args]))
