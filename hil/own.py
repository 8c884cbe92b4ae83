"""Folders pytest-hil made, marked so, and the only ones it removes.

A path a user passes (``--alluredir .``, ``hil report -o ~``) may name their
checkout or their home: pytest-hil never empties a folder unless it finds its
own mark in it (a ``.pytest-hil`` file, written when it made the folder), or
the folder holds nothing but what Allure writes (results of a run made before
the mark existed).  Anything else is refused with a :class:`~hil.errors.ConfigError`
naming the folder.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from hil.errors import ConfigError

#: The file that marks a folder as pytest-hil's own.
OWN_MARK = ".pytest-hil"
#: What an Allure results folder holds (allure-pytest, allure-commons, pytest-hil's worker).
_ALLURE_FILE = re.compile(r"[\w.-]+-(result|container|attachment)(\.[\w]+)?|"
                          r"environment\.properties|categories\.json|executor\.json")


def mark_own(folder: Path) -> None:
    """Make ``folder`` (and parents) and mark it as pytest-hil's own."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / OWN_MARK, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    os.close(fd)


def is_own(folder: Path) -> bool:
    """Whether ``folder`` is a real folder (not a link) that pytest-hil may empty."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    mark = folder / OWN_MARK
    if mark.is_file() and not mark.is_symlink():
        return True
    with os.scandir(folder) as entries:
        return all(entry.is_file(follow_symlinks=False) and _ALLURE_FILE.fullmatch(entry.name)
                   for entry in entries)


def check_own(folder: Path, what: str) -> None:
    """ConfigError unless ``folder`` is absent or pytest-hil's own (see :func:`is_own`)."""
    if (folder.exists() or folder.is_symlink()) and not is_own(folder):
        raise ConfigError(
            f"refusing to replace {what} {folder}: pytest-hil did not make it (no {OWN_MARK} "
            f"in it)", hint="name a folder of its own, or remove that one yourself")


def remove_own(folder: Path, what: str) -> None:
    """Remove ``folder`` when it is pytest-hil's own; ConfigError when it is not."""
    check_own(folder, what)
    if folder.is_dir():
        shutil.rmtree(folder)
