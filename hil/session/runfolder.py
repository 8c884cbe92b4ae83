"""The run folder (``reports/runs/<run-id>/``): ids, atomic writes, publishing results."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` in one go: no buffered file object for thousands of small files."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def link_or_copy(source: Path, dest: Path) -> None:
    """Hard-link ``source`` to ``dest`` (fast for thousands of results), else copy it."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def set_aside(folder: Path) -> list[Path]:
    """Rename ``folder`` to a hidden sibling; returns the set-aside folders to remove later.

    Those of earlier sessions that ended before removing theirs are included.
    """
    aside = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        folder.rename(aside)
    except OSError:  # a mount point, say: remove it in place
        shutil.rmtree(folder)
    return sorted(folder.parent.glob(f".{folder.name}.old-*"))


def publish_results(fetched: Path, dest: Path, stale: list[Path]) -> None:
    """Link a run's Allure results into ``dest``, then remove the set-aside old results."""
    try:
        entries = list(os.scandir(fetched))
    except OSError:
        entries = []
    for entry in entries:
        if entry.is_file():
            link_or_copy(Path(entry.path), dest / entry.name)
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)


def new_run_id(target: str) -> str:
    """``20261122-103012.345-colima-1a2b``: sorts in start order, unique, names the target.

    Milliseconds: two runs a second apart (quick ones) still sort in the order they ran.
    """
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{stamp}.{int(now * 1000) % 1000:03d}-{target}-{uuid.uuid4().hex[:4]}"
