"""The jetson engine's disk: a loop-mounted ext4 whose free space can be squeezed.

The engine's data root lives on a sparse ext4 file, so the rig can make the
engine see a nearly full disk without touching the host's: a "balloon" file,
allocated with ``fallocate`` (instant, no data written), eats all but the
requested free space; ``df`` of the data root then reports exactly that and
writes by the engine really fail with ENOSPC.  Deleting the balloon restores it.
"""

from __future__ import annotations

import os
from pathlib import Path

from hil.errors import ConfigError, DiskLowError
from hil.sim._proc import NotReadyError, run, wait_until
from hil.sim.engine import df_free_mb


def mount_points() -> list[str]:
    """Every mount point in our mount namespace (``/proc/self/mountinfo`` field 5)."""
    with open("/proc/self/mountinfo") as info:
        return [line.split()[4] for line in info]


def is_mountpoint(path: Path) -> bool:
    """True when ``path`` is a mount point in our mount namespace."""
    return str(path.resolve()) in mount_points()


def unmount_tree(path: Path, what: str, timeout: float = 10.0) -> None:
    """Unmount ``path`` and everything mounted below it, deepest first.

    A daemon killed mid-run can leave its own mounts inside (dockerd bind-mounts
    its data root onto itself), which make a plain ``umount`` fail with "target is
    busy"; processes that still hold files there get ``timeout`` seconds to go
    before the tree is detached lazily, so the mount is gone from the namespace
    either way and the kernel frees it when its last user exits.
    """
    root = str(path.resolve())

    def below() -> list[str]:
        return sorted((p for p in mount_points() if p == root or p.startswith(root + "/")), key=len)

    def unmounted() -> bool:
        for point in reversed(below()):
            run(["umount", point], check=False)
        return not below()

    try:
        wait_until(unmounted, timeout, f"{what} (target busy)")
    except NotReadyError:
        run(["umount", "-l", root], what=what)


class EngineDisk:
    """Creates, mounts, unmounts and squeezes the jetson engine's filesystem."""

    def __init__(self, image: Path, mount: Path, balloon: Path, size_gb: int) -> None:
        self.image = image
        self.mount = mount
        self.balloon = balloon
        self.size_gb = size_gb

    def mounted(self) -> bool:
        """True when the filesystem is mounted."""
        return is_mountpoint(self.mount)

    def ensure_mounted(self) -> None:
        """Create the sparse ext4 file if missing and mount it (idempotent)."""
        if self.mounted():
            return
        self.image.parent.mkdir(parents=True, exist_ok=True)
        self.mount.mkdir(parents=True, exist_ok=True)
        if not self.image.exists():
            partial = self.image.with_suffix(".partial")
            with partial.open("wb") as fh:
                fh.truncate(self.size_gb * 1024**3)
            run(
                ["mkfs.ext4", "-q", "-m", "0", "-L", "hil-sim-jetson", str(partial)],
                what="mkfs.ext4 of the jetson engine disk",
            )
            partial.replace(self.image)
        run(
            ["mount", "-o", "loop", str(self.image), str(self.mount)],
            what="mounting the jetson engine disk",
        )

    def unmount(self) -> None:
        """Unmount the filesystem (the loop device goes with it); idempotent."""
        if self.mounted():
            unmount_tree(self.mount, what="unmounting the jetson engine disk")

    def free_mb(self) -> int:
        """Free space on the filesystem in MiB, as ``df`` reports it."""
        return df_free_mb(self.mount)

    def limited(self) -> bool:
        """True while the balloon is in place."""
        return self.balloon.exists()

    def limit(self, free_mb: int) -> int:
        """Leave only ``free_mb`` MiB free; returns the free space now reported."""
        if free_mb < 0:
            raise ConfigError(f"free space must be >= 0 MiB, not {free_mb}")
        self.restore()
        os.sync()
        eat = (self.free_mb() - free_mb) * 1024 * 1024
        if eat > 0:
            fd = os.open(self.balloon, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, eat)
            except OSError as exc:
                self.balloon.unlink(missing_ok=True)
                raise DiskLowError(f"could not fill the jetson engine disk: {exc}") from exc
            finally:
                os.close(fd)
        return self.free_mb()

    def restore(self) -> None:
        """Remove the balloon: the engine sees its whole disk again."""
        self.balloon.unlink(missing_ok=True)
