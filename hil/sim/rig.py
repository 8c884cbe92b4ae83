"""The simulated rig as one object: bring it up and down, inspect it, inject faults.

The rig is board 0 (``hil-sim-jetson``) and the Colima engine, plus the pool
of ``up(boards=N)``: boards ``hil-sim-jetson-1`` ... ``-N`` (:mod:`hil.sim.pool`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hil.errors import ExitCode, HilError
from hil.locking import exclusive_lock
from hil.sim._proc import run, which
from hil.sim.board import write_client_files
from hil.sim.compose_plugin import ComposePlugin
from hil.sim.engine import DockerEngine
from hil.sim.faults import BoardFaults
from hil.sim.images import ImageCache, RootfsSpec
from hil.sim.lab import SimLab
from hil.sim.layout import RigLayout
from hil.sim.parts import PartNames
from hil.sim.pool import BoardPool, PoolImages

#: tool -> Debian package that ships it.
REQUIRED_TOOLS: dict[str, str] = {
    "dockerd": "docker.io",
    "docker": "docker.io",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "rsync": "rsync",
    "debootstrap": "debootstrap",
    "ip": "iproute2",
    "tc": "iproute2",
    "ss": "iproute2",
    "iptables": "iptables",
    "unshare": "util-linux",
    "setsid": "util-linux",
    "flock": "util-linux",
    "mount": "mount",
    "mkfs.ext4": "e2fsprogs",
    "useradd": "passwd",
    "tar": "tar",
    # [compose] targets: the colima engine's standalone client (1.29.2); the boards get
    # Compose v2 as a CLI plugin (hil.sim.compose_plugin, fetched with these tools).
    "docker-compose": "docker-compose",
    "apt-get": "apt",
    "dpkg": "dpkg",
}


def _dpkg_installed(package: str) -> bool:
    """Whether dpkg has ``package`` installed (False where there is no dpkg)."""
    if which("dpkg-query") is None:
        return False
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip().endswith(" installed")


class RigUnsupportedError(HilError):
    """The rig cannot run here: not Linux, not root, or tools missing (it says which)."""

    exit_code = ExitCode.USAGE_ERROR
    kind = "sim-unsupported"


def _say(message: str) -> None:
    print(f"hil sim: {message}", file=sys.stderr, flush=True)


class Rig(BoardFaults):
    """The simulated Jetson + Colima rig.

    Real in every part but the GPU: two dockerd engines ("colima" and
    "jetson", the latter with an ``nvidia`` runtime mapped to runc), an
    OpenSSH server in a network namespace behind a veth pair, a ``jetson``
    user, base images made with debootstrap, and the Jetson face.  Every
    method is safe to call in any state; ``up`` and ``down`` are idempotent.
    Its fault methods act on board 0; ``rig.pool[I]`` has the same for pool board I.
    """

    part_names = PartNames(disk="jetson disk", engine="jetson engine", link="board namespace and link",
                           sshd="board sshd", sessions="board sessions")

    def __init__(self, layout: RigLayout | None = None) -> None:
        super().__init__(layout or RigLayout.from_env())
        lay = self.layout
        self.colima = DockerEngine(lay.colima, group=lay.docker_group)
        self.jetson = DockerEngine(lay.jetson, group=lay.docker_group, runtimes=("nvidia",))
        #: Boards ``hil-sim-jetson-1`` ... ``-N`` of ``up(boards=N)``; ``pool[I]`` is board I.
        self.pool = BoardPool(lay)

    @property
    def board_engine(self) -> DockerEngine:
        """Board 0's engine: the "jetson" engine (:attr:`jetson`)."""
        return self.jetson

    # -- the contract's locations -------------------------------------------

    @property
    def state_dir(self) -> Path:
        """The state dir (``/var/lib/hil-sim`` or ``HIL_SIM_ROOT``)."""
        return self.layout.state_dir

    @property
    def colima_host(self) -> str:
        """Docker host URL of the "colima" engine."""
        return self.layout.colima.host

    @property
    def colima_socket(self) -> Path:
        """Socket of the "colima" engine."""
        return self.layout.colima.socket

    @property
    def jetson_socket(self) -> Path:
        """Socket of the "jetson" engine (as seen on the host)."""
        return self.layout.jetson.socket

    @property
    def jetson_data_root(self) -> Path:
        """The jetson engine's data root (on its own small filesystem)."""
        return self.layout.jetson.data_root

    @property
    def ssh_config(self) -> Path:
        """The generated ssh_config holding the board alias."""
        return self.layout.ssh_config

    @property
    def known_hosts(self) -> Path:
        """The known_hosts file pinning the board's host key."""
        return self.layout.known_hosts

    @property
    def host_address(self) -> str:
        """The host's IP address on the board link."""
        return self.layout.host_address

    @property
    def user(self) -> str:
        """The board's login user."""
        return self.layout.user

    @property
    def base_image(self) -> str:
        """The plain Debian image, in both engines."""
        return self.layout.base_image

    @property
    def l4t_image(self) -> str:
        """The L4T stand-in image, in the jetson engine."""
        return self.layout.l4t_image

    # -- support ----------------------------------------------------------

    @staticmethod
    def missing_packages() -> list[str]:
        """The Debian packages whose tools are missing, sorted."""
        return sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if which(tool) is None})

    @classmethod
    def install_packages(cls, extra: tuple[str, ...] = ()) -> str | None:
        """Install the rig's missing Debian packages (and ``extra``) with apt-get.

        Only where that can work (Linux, root, apt-get present); returns why it
        could not, or None once everything is there.  Packages already installed
        cost nothing: apt-get is not called at all.
        """
        missing = sorted(set(cls.missing_packages()) | {p for p in extra if not _dpkg_installed(p)})
        if not missing:
            return None
        if platform.system() != "Linux" or os.geteuid() != 0 or which("apt-get") is None:
            return f"cannot install {' '.join(missing)}: needs root on a Debian-like Linux (apt-get)"
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print(f"hil sim: installing Debian packages: {' '.join(missing)}", file=sys.stderr, flush=True)
        for argv in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
                return f"{' '.join(argv[:2])} failed (exit {done.returncode}): {tail}"
        return None

    @classmethod
    def unsupported_reason(cls) -> str | None:
        """Why the rig cannot run on this machine, or None when it can."""
        needs = "the simulated rig needs Linux, root and the Debian packages " + " ".join(
            sorted(set(REQUIRED_TOOLS.values()))
        )
        if platform.system() != "Linux":
            return f"{needs}; this is {platform.system()}"
        problems = []
        if os.geteuid() != 0:
            problems.append("not running as root")
        missing = cls.missing_packages()
        if missing:
            problems.append(f"missing: apt-get install -y {' '.join(missing)}")
        return f"{needs}; {', '.join(problems)}" if problems else None

    def check_supported(self) -> None:
        """Raise :class:`RigUnsupportedError` when the rig cannot run here."""
        reason = self.unsupported_reason()
        if reason:
            raise RigUnsupportedError(reason)

    @property
    def _marker(self) -> Path:
        return self.layout.runtime_dir / "up"

    # -- up / down --------------------------------------------------------

    def is_up(self) -> bool:
        """True when the rig was brought up and not brought down (faults aside)."""
        return self._marker.exists()

    def _check_owner(self) -> None:
        """Refuse to mix state dirs: the host has one rig (sockets, namespace, addresses)."""
        try:
            owner = self._marker.read_text().strip()
        except OSError:
            return
        if owner and owner != str(self.state_dir):
            raise RigUnsupportedError(
                f"the rig running here uses state dir {owner}, not {self.state_dir}",
                hint=f"run `HIL_SIM_ROOT={owner} hil sim down` first",
            )

    def ensure_up(self) -> Rig:
        """Bring the rig up unless it already is; never disturbs a running rig's faults."""
        if self.is_up():
            self._check_owner()
        else:
            self.up()
        return self

    def up(self, boards: int | None = None) -> bool:
        """Bring every part up (idempotent). True when something was started or made.

        ``boards``: how many pool boards beside board 0 (``hil-sim-jetson-1`` ...);
        boards beyond are taken down.  None keeps the pool the rig has.
        Faults injected with ``set_netem`` or ``limit_engine_disk`` are left in place.
        """
        self.check_supported()
        if boards is not None:
            BoardPool.check_size(boards)
        started = time.monotonic()
        with exclusive_lock(self.layout.lock_file):
            self._check_owner()
            done: list[str] = []
            lay = self.layout
            for directory in (lay.state_dir, lay.runtime_dir, lay.log_dir):
                directory.mkdir(parents=True, exist_ok=True)
            lay.state_dir.chmod(0o755)
            pool_size = self.pool.size() if boards is None else boards
            # The boards' Compose v2 (JetPack's plugin): fetched once, before their faces.
            ComposePlugin(lay.tools_dir).ensure()
            self.board.prepare()
            write_client_files([self.board, *self.pool.prepare(pool_size)])
            if self.colima.start():
                done.append("colima engine")
            cache = ImageCache(lay.image_cache, RootfsSpec.for_host(lay.suite), lay.base_image, lay.l4t_image)
            # A board inside a live session's fault block is that block's to restore.
            with self.fault_lock_if_free() as free:
                if free:
                    done += self._board_up(cache)
                else:
                    _say(f"{lay.ssh_alias}: left as it is (a live session's fault holds it)")
                    if cache.ensure_images_needed(self.colima, l4t=False):
                        cache.ensure_tarball()
                        done += [f"{img} (colima)" for img in cache.ensure_images(self.colima, l4t=False)]
            board0_s = time.monotonic() - started
            pool_done: dict[str, str] = {}
            if pool_size or boards is not None:
                pool_done = self.pool.up(pool_size, PoolImages(cache, self.jetson))
            self._marker.write_text(f"{self.state_dir}\n")
        took = time.monotonic() - started
        if done:
            _say(f"up in {board0_s:.1f} s: started {', '.join(done)}")
        for alias, said in pool_done.items():
            _say(f"{alias}: {said}")
        if pool_size and (pool_done or done):
            _say(f"up in {took:.1f} s with {pool_size} pool board(s) "
                 f"({', '.join(b.ssh_alias for b in self.pool.boards)})")
        if not done and not pool_done:
            _say("rig already up: nothing to do")
        for fault in self.active_faults():
            _say(f"note: fault still active: {fault} (`hil sim restore` clears faults)")
        return bool(done or pool_done)

    def _board_up(self, cache: ImageCache) -> list[str]:
        """Start board 0's parts that are not running and put the images in both engines."""
        done = self.start_parts()
        needs_images = [
            (engine, l4t)
            for engine, l4t in ((self.colima, False), (self.jetson, True))
            if cache.ensure_images_needed(engine, l4t=l4t)
        ]
        if needs_images:
            cache.ensure_tarball()
            for engine, l4t in needs_images:
                done += [f"{img} ({engine.name})" for img in cache.ensure_images(engine, l4t=l4t)]
        self.wait_for_login()
        return done

    def down(self) -> bool:
        """Stop and remove every running part (idempotent). True when something was running.

        Keeps the state dir: keys, the image cache and the engines' data.
        """
        with exclusive_lock(self.layout.lock_file):
            self._check_owner()
            self._marker.unlink(missing_ok=True)
            # the simulated lab's processes first: their pid files are in the runtime dir
            stopped = SimLab(self.layout).down() + self.pool.down() + self.stop_parts(also=[self.colima])
            if self._unmount_leftovers():
                stopped.append("leftover mounts")
            self._clean_runtime_dir()
        _say(f"down: stopped {', '.join(stopped)}" if stopped else "rig already down")
        return bool(stopped)

    def _unmount_leftovers(self) -> bool:
        """Unmount what the daemons left mounted under our dirs (e.g. dockerd's netns file)."""
        roots = (str(self.layout.runtime_dir), str(self.state_dir))
        found = False
        while True:
            with open("/proc/self/mountinfo") as info:
                points = [
                    line.split()[4]
                    for line in info
                    if any(line.split()[4] == r or line.split()[4].startswith(r + "/") for r in roots)
                ]
            if not points:
                return found
            found = True
            for point in sorted(points, key=len, reverse=True):
                run(["umount", "-l", point], check=False)

    def _clean_runtime_dir(self) -> None:
        root = self.layout.runtime_dir
        if not root.exists():
            return
        for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                with contextlib.suppress(OSError):
                    path.rmdir()
            else:
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            root.rmdir()

    # -- status -----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Every part of the rig, up or down, with its details (JSON-ready)."""
        lay = self.layout
        colima_up = self.colima.is_up()
        jetson_up = self.jetson.is_up()
        disk_mounted = self.disk.mounted()
        images: dict[str, dict[str, bool]] = {}
        for engine, names, alive in (
            (self.colima, [lay.base_image], colima_up),
            (self.jetson, [lay.base_image, lay.l4t_image], jetson_up),
        ):
            images[engine.name] = {n: alive and engine.image_exists(n) for n in names}
        parts: dict[str, dict[str, Any]] = {
            "colima_engine": {"up": colima_up, "pid": self.colima.pid(), "host": self.colima_host},
            "jetson_engine": {
                "up": jetson_up,
                "pid": self.jetson.pid(),
                "host": self.jetson_host,
                "runtimes": self.jetson.runtimes_registered() if jetson_up else [],
                "data_root": str(self.jetson_data_root),
            },
            "jetson_disk": {
                "up": disk_mounted,
                "mount": str(lay.jetson_disk_mount),
                "free_mb": self.disk.free_mb() if disk_mounted else None,
                "limited": disk_mounted and self.disk.limited(),
            },
            "namespace": {"up": self.network.namespace_exists(), "name": lay.netns},
            "link": {
                "up": self.network.link_exists() and self.network.link_up(),
                "host_if": lay.host_if,
                "host_address": lay.host_address,
                "board_address": lay.board_address,
                "netem": self.network.netem(),
            },
            "sshd": {
                "up": self.board.sshd_up(),
                "pid": self.board.sshd_pid(),
                "address": f"{lay.board_address}:{lay.ssh_port}",
            },
            "images": {"up": all(all(v.values()) for v in images.values()), **images},
        }
        boards = self.pool.status() if self.is_up() else {}
        faults = self.active_faults() + [f"{alias}: {f}" for alias, b in boards.items() for f in b["faults"]]
        return {
            "up": self.is_up(),
            "healthy": all(p["up"] for p in parts.values())
            and all(b["healthy"] for b in boards.values())
            and not faults,
            "state_dir": str(lay.state_dir),
            "ssh_config": str(lay.ssh_config),
            "ssh_alias": lay.ssh_alias,
            "faults": faults,
            "parts": parts,
            "boards": boards,
        }

    def active_faults(self) -> list[str]:
        """The faults in place now (stopped parts of an up rig, netem, disk limit)."""
        if not self.is_up():
            return []
        return self.part_faults()

    # -- faults -----------------------------------------------------------

    def restore_injected(self) -> None:
        """Undo every fault this Rig object injected and has not restored (pool boards too)."""
        super().restore_injected()
        self.pool.restore_injected()

    def restore_faults(self) -> None:
        """Undo every fault on the rig, whoever injected it.

        A board inside another session's fault block is left to that block
        (a crashed session's lock is gone with it, so its faults are undone).
        """
        if not self._restore_unless_held():
            _say(f"{self.layout.ssh_alias}: fault left in place (a live session's fault holds it)")
        for alias in self.pool.restore_faults():
            _say(f"{alias}: fault left in place (a live session's fault holds it)")
