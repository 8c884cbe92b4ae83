"""Staging a cached TensorRT ``.engine`` into the TensorRT EP's engine cache folder.

The TensorRT EP looks for its engines by file name in ``trt_engine_cache_path``.
An engine kept elsewhere (shipped with the product, or in the engine cache with
its key sidecar) is staged there under its own name: a symbolic link where the
filesystem allows one, a copy where it does not (FAT-formatted SD cards, some
container mounts).  Either way the name appears atomically, so an EP reading
the folder never sees half a file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StagedEngine:
    """Where an engine was staged, and how (``"symlink"``, ``"copy"`` or ``"in place"``)."""

    source: Path
    target: Path
    how: str


def stage_engine(engine: Path, folder: Path) -> StagedEngine:
    """Make ``engine`` appear as ``folder/<engine name>``: a symlink, else a copy.

    An engine already in ``folder``, or already linked there, is left as it is.
    """
    folder.mkdir(parents=True, exist_ok=True)
    source = engine.resolve()
    target = folder / engine.name
    if target.exists() and target.resolve() == source:
        return StagedEngine(source, target, "in place")
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{engine.name}.", suffix=".staging")
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        try:
            os.symlink(source, tmp)
            how = "symlink"
        except OSError:  # no symlinks on this filesystem (or not allowed to make them)
            shutil.copyfile(source, tmp)
            how = "copy"
        os.replace(tmp, target)
    finally:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
    return StagedEngine(source, target, how)
