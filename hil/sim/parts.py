"""The parts of one simulated board: disk, engine, namespace and link, sshd.

The rig's single board (:class:`hil.sim.Rig`) and each pool board
(:class:`hil.sim.pool.PoolBoard`) are made of the same parts, started and
stopped in the same order; this base does that for both.  Only the words
differ: board 0's messages say ``jetson disk``, a pool board's ``disk``
(:class:`PartNames`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from hil.errors import TargetUnhealthyError
from hil.sim._proc import wait_until
from hil.sim.board import Board
from hil.sim.disk import EngineDisk
from hil.sim.engine import DockerEngine
from hil.sim.layout import RigLayout
from hil.sim.network import BoardNetwork


@dataclass(frozen=True)
class PartNames:
    """What a board's ``up``, ``down`` and fault messages call its parts."""

    disk: str = "disk"
    engine: str = "engine"
    link: str = "namespace and link"
    sshd: str = "sshd"
    sessions: str = "sessions"


class BoardParts:
    """A board's disk, engine, namespace and link, and sshd: start them, stop them, say what is off."""

    #: The words the messages use for the parts.
    part_names: ClassVar[PartNames] = PartNames()

    def __init__(self, layout: RigLayout) -> None:
        self.layout = layout
        self.board = Board(layout)
        self.network = BoardNetwork(layout)
        self.disk = EngineDisk(
            layout.jetson_disk_image, layout.jetson_disk_mount, layout.disk_balloon, layout.jetson_disk_gb
        )

    @property
    def board_engine(self) -> DockerEngine:
        """The board's Docker engine (its dockerd, with the ``nvidia`` runtime); made by the subclass."""
        raise NotImplementedError

    @property
    def ssh_alias(self) -> str:
        """The board's host alias in the rig's ssh_config."""
        return self.layout.ssh_alias

    @property
    def board_address(self) -> str:
        """The board's IP address (board end of the veth)."""
        return self.layout.board_address

    @property
    def jetson_host(self) -> str:
        """Docker host URL of the board's engine (as seen on the host)."""
        return self.layout.jetson.host

    def ssh(
        self, *remote: str, timeout: float = 60.0, options: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """Run ``remote`` on the board over SSH with the rig's ssh_config (never raises on exit).

        ``options`` go before the host alias, e.g. ``("-o", "ConnectTimeout=2")``.
        """
        return self.board.ssh(*remote, timeout=timeout, options=options)

    def ssh_works(self) -> bool:
        """True when a login on the board runs ``true``."""
        return self.ssh("true", timeout=15, options=("-o", "ConnectTimeout=5")).returncode == 0

    def start_parts(self) -> list[str]:
        """Start the parts that are not running (idempotent); returns the names of those started."""
        names = self.part_names
        done: list[str] = []
        if not self.disk.mounted():
            self.disk.ensure_mounted()
            done.append(names.disk)
        if self.board_engine.start():
            done.append(names.engine)
        if not (self.network.namespace_exists() and self.network.link_up()):
            self.network.create()
            done.append(names.link)
        if self.board.start_sshd():
            done.append(names.sshd)
        return done

    def wait_for_login(self) -> None:
        """Wait until a login on the board works; :class:`TargetUnhealthyError` after 30 s."""
        wait_until(self.ssh_works, 30, f"ssh login to {self.ssh_alias}", error=TargetUnhealthyError)

    def stop_parts(self, also: Sequence[DockerEngine] = ()) -> list[str]:
        """Stop and remove every part (idempotent); returns the names of those stopped.

        The engines ``also`` stop right after the board's (named ``<name> engine``).
        Keeps the disk file.
        """
        names = self.part_names
        stopped: list[str] = []
        self.network.clear_netem()
        if self.disk.mounted():
            self.disk.restore()
        if self.board.stop_sshd():
            stopped.append(names.sshd)
        if self.network.namespace_exists() and self.network.kill_processes():
            stopped.append(names.sessions)
        if self.board_engine.stop():
            stopped.append(names.engine)
        stopped += [f"{engine.name} engine" for engine in also if engine.stop()]
        if self.disk.mounted():
            self.disk.unmount()
            stopped.append(names.disk)
        if self.network.namespace_exists() or self.network.link_exists():
            self.network.remove()
            stopped.append(names.link)
        return stopped

    def part_faults(self) -> list[str]:
        """What is off among the parts now: a stopped sshd or engine, a cut link, netem, a limited disk."""
        faults = []
        if not self.board.sshd_up():
            faults.append("sshd stopped")
        if self.network.link_exists() and not self.network.link_up():
            faults.append("link cut")
        netem = self.network.netem()
        if netem:
            faults.append(f"netem delay {netem['delay_ms']} ms loss {netem['loss_pct']} %")
        if self.board_engine.pid() is None:
            faults.append(f"{self.part_names.engine} stopped")
        if self.disk.mounted() and self.disk.limited():
            faults.append(f"{self.part_names.disk} limited")
        return faults
