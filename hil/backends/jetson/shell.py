"""The shell scripts the board runs: ``.sh`` files of this package, and the one place
their parameters are quoted.

A script travels as the text of ``sh -c``; its parameters travel as
positional arguments and environment assignments, each quoted with
:func:`shlex.quote` here and nowhere else.  The scripts read them as ``"$1"``
or ``"$NAME"`` and never splice them into code, so no value needs escaping in
the script's text.
"""

from __future__ import annotations

from hil.backends import scripts


def script_text(name: str) -> str:
    """The text of ``scripts/<name>.sh``, each ``#include other.sh`` line replaced by the
    text of that script (shared shell functions travel inside the one ``sh -c``)."""
    return scripts.script_text(__package__ or "hil.backends.jetson", "scripts", name)


def board_command(name: str, *args: str, **env: str | None) -> str:
    """``[env K=V ...] sh -c '<script>' hil-<name> ARGS...`` for the board's login shell.

    ``None`` values are left out of the environment, so a script can tell
    "not given" (``${K+x}`` empty) from an empty string.
    """
    return scripts.script_command(__package__ or "hil.backends.jetson", "scripts", name,
                                  *args, **env)
