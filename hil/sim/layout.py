"""Where every part of the simulated rig lives: paths, names and addresses.

Plain data.  The state dir (``/var/lib/hil-sim``, env ``HIL_SIM_ROOT``) keeps
what survives a ``down``: keys, image cache, engine data.  The runtime dir
(``/run/hil-sim``) keeps sockets and pid files.  Both locations, the engine
sockets and the SSH alias are a contract with the rest of the project.

Board 0 is the rig's single board (``hil-sim-jetson``); boards 1..N of
``hil sim up --boards N`` (``hil-sim-jetson-1`` ...) get a layout of their own
from :meth:`RigLayout.pool_board`: own namespace, link, addresses, engine,
disk, host key and sshd, beside board 0's and sharing its ssh_config, client
key and image cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

DEFAULT_STATE_DIR = Path("/var/lib/hil-sim")
RUNTIME_DIR = Path("/run/hil-sim")
#: The most pool boards ``hil sim up --boards N`` makes (each takes a /24 of 10.213/16).
MAX_POOL_BOARDS = 16


@dataclass(frozen=True)
class EngineLayout:
    """The files of one Docker engine (dockerd) of the rig."""

    name: str
    socket: Path
    data_root: Path
    exec_root: Path
    pidfile: Path
    config_file: Path
    log: Path

    @property
    def host(self) -> str:
        """The engine's docker host URL (``unix://...``)."""
        return f"unix://{self.socket}"


@dataclass(frozen=True)
class RigLayout:
    """Every path, name and address of the rig; derived from the state dir."""

    state_dir: Path
    runtime_dir: Path = RUNTIME_DIR

    netns: str = "hil-sim"
    host_if: str = "hilsim-host"
    board_if: str = "hilsim-board"
    host_address: str = "10.213.0.1"
    board_address: str = "10.213.0.2"
    prefix_len: int = 24

    user: str = "jetson"
    docker_group: str = "docker"
    ssh_alias: str = "hil-sim-jetson"
    ssh_port: int = 22

    suite: str = "bookworm"
    base_image: str = "hil-sim/base:bookworm"
    l4t_image: str = "hil-sim/l4t-base:r36.4.3"

    #: Size of the sparse ext4 file holding the jetson engine's data root.
    jetson_disk_gb: int = 24
    netem_queue: int = 4213
    #: 0 for the rig's single board; 1..N for the boards of the pool.
    index: int = 0

    @classmethod
    def from_env(cls) -> RigLayout:
        """The layout for ``HIL_SIM_ROOT`` (default ``/var/lib/hil-sim``)."""
        return cls(state_dir=Path(os.environ.get("HIL_SIM_ROOT") or DEFAULT_STATE_DIR))

    def pool_board(self, index: int) -> RigLayout:
        """The layout of pool board ``index`` (1..MAX_POOL_BOARDS): ``hil-sim-jetson-INDEX``."""
        if not 1 <= index <= MAX_POOL_BOARDS:
            raise ValueError(f"pool board index must be 1..{MAX_POOL_BOARDS}, not {index}")
        base = replace(self, index=0)
        return replace(
            base,
            index=index,
            netns=f"{base.netns}-{index}",
            host_if=f"hilsim{index}-host",
            board_if=f"hilsim{index}-board",
            host_address=f"10.213.{index}.1",
            board_address=f"10.213.{index}.2",
            ssh_alias=f"{base.ssh_alias}-{index}",
            netem_queue=base.netem_queue + index,
        )

    def _own(self, board0: str, pool: str) -> str:
        """``board0`` on the rig's single board, else ``pool`` (``{i}``: its index, ``{name}``: its name)."""
        return board0 if self.index == 0 else pool.format(i=self.index, name=f"jetson-{self.index}")

    @property
    def board_name(self) -> str:
        """The board's engine name and state folder: "jetson", "jetson-1", ..."""
        return self._own("jetson", "{name}")

    @property
    def board_dir(self) -> Path:
        """The board's own state folder: disk file, mount point, face, private /run, home."""
        return self.state_dir / self.board_name

    def _engine(self, name: str, data_root: Path) -> EngineLayout:
        return EngineLayout(
            name=name,
            socket=self.runtime_dir / name / "docker.sock",
            data_root=data_root,
            exec_root=self.runtime_dir / "exec" / name,
            pidfile=self.runtime_dir / "pids" / f"dockerd-{name}.pid",
            config_file=self.state_dir / name / "daemon.json",
            log=self.log_dir / f"dockerd-{name}.log",
        )

    @property
    def colima(self) -> EngineLayout:
        """The "colima" engine: the laptop's local engine."""
        return self._engine("colima", self.state_dir / "colima" / "data")

    @property
    def jetson(self) -> EngineLayout:
        """The "jetson" engine: the board's engine, data root on a loop-mounted ext4."""
        return self._engine(self.board_name, self.jetson_disk_mount / "docker")

    @property
    def jetson_disk_image(self) -> Path:
        """The sparse file holding the jetson engine's filesystem."""
        return self.board_dir / "disk.ext4"

    @property
    def jetson_disk_mount(self) -> Path:
        """Where the jetson engine's filesystem is mounted."""
        return self.board_dir / "disk"

    @property
    def disk_balloon(self) -> Path:
        """The file that eats free space when the engine's disk is limited."""
        return self.jetson_disk_mount / "hil-sim-balloon"

    @property
    def log_dir(self) -> Path:
        """Logs of the daemons (dockerd, sshd, netem)."""
        return self.state_dir / "log"

    @property
    def image_cache(self) -> Path:
        """Root filesystem tarballs keyed by the hash of the debootstrap inputs."""
        return self.state_dir / "images"

    @property
    def tools_dir(self) -> Path:
        """Tools the rig fetched once (the board's Compose v2 plugin)."""
        return self.state_dir / "tools"

    @property
    def ssh_dir(self) -> Path:
        """Keys, ssh_config and known_hosts for reaching the board."""
        return self.state_dir / "ssh"

    @property
    def ssh_config(self) -> Path:
        """The ssh_config file defining the ``hil-sim-jetson`` alias."""
        return self.ssh_dir / "config"

    @property
    def known_hosts(self) -> Path:
        """The known_hosts file pinning the board's host key."""
        return self.ssh_dir / "known_hosts"

    @property
    def client_key(self) -> Path:
        """The private key the client logs in with."""
        return self.ssh_dir / "id_ed25519"

    @property
    def host_key(self) -> Path:
        """The board sshd's private host key (one per board)."""
        return self.ssh_dir / self._own("ssh_host_ed25519_key", "ssh_host_ed25519_key_{name}")

    @property
    def sshd_config(self) -> Path:
        """The board sshd's private configuration."""
        return self.ssh_dir / self._own("sshd_config", "sshd_config_{name}")

    @property
    def sshd_pidfile(self) -> Path:
        """The board sshd's pid file (written by sshd inside the namespace)."""
        return self.runtime_dir / self._own("sshd", "sshd-{i}") / "sshd.pid"

    @property
    def sshd_log(self) -> Path:
        """The board sshd's log."""
        return self.log_dir / self._own("sshd.log", "sshd-{i}.log")

    @property
    def face_dir(self) -> Path:
        """The Jetson face: files overlaid on /etc, /usr/local/bin and /usr/libexec on the board."""
        return self.state_dir / "face" if self.index == 0 else self.board_dir / "face"

    @property
    def board_run_staging(self) -> Path:
        """Mount point used to prepare the board's private /run before moving it."""
        return self.state_dir / "board-run" if self.index == 0 else self.board_dir / "run"

    @property
    def netem_pidfile(self) -> Path:
        """Pid file of the netfilter-queue delay/loss daemon."""
        return self.runtime_dir / "pids" / self._own("netem.pid", "netem-{i}.pid")

    @property
    def netem_state(self) -> Path:
        """What delay/loss the board's link has now (JSON), while it has some."""
        return self.runtime_dir / self._own("netem.json", "netem-{i}.json")

    @property
    def home_dir(self) -> Path | None:
        """A pool board's own home for the board user (None: board 0 uses the user's real one).

        Pool boards share the user but not its files: each sees its own home and
        ``/tmp`` (where the board lease lives), as separate machines would.
        """
        return None if self.index == 0 else self.board_dir / "home"

    @property
    def tmp_dir(self) -> Path | None:
        """A pool board's own ``/tmp`` (None: board 0 uses the host's)."""
        return None if self.index == 0 else self.board_dir / "tmp"

    @property
    def fault_lock_file(self) -> Path:
        """The host-wide lock one board's fault blocks hold (board 0's: ``/run/hil-sim.faults.lock``)."""
        suffix = self._own(".faults.lock", ".faults-{i}.lock")
        return self.runtime_dir.with_name(self.runtime_dir.name + suffix)

    @property
    def pool_size_file(self) -> Path:
        """How many pool boards the last ``up --boards N`` asked for (gone after ``down``)."""
        return self.runtime_dir / "pool-size"

    @property
    def lock_file(self) -> Path:
        """Serializes ``up`` and ``down`` between processes, whatever their state dir.

        Outside the runtime dir (``down`` removes that) but beside it: the
        sockets, namespace and addresses it guards are the host's, not a state dir's.
        """
        return self.runtime_dir.with_name(self.runtime_dir.name + ".lock")
