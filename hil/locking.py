"""Exclusive locks between processes: an ``flock`` on a lock file.

Stdlib only, and ``fcntl`` (POSIX) is imported where a lock is taken, so this
module imports everywhere and a caller can explain itself where there is no ``flock``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def open_lock_file(path: Path) -> int:
    """``path`` opened to be locked (made, with its folder, if missing); a file descriptor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def try_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` if nobody holds it; False, at once, when another does.

    The lock is held until ``fd`` is closed.
    """
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock on the file ``path`` for the block, waiting as long as it takes."""
    import fcntl

    fd = open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
