"""The simulated board: its user, SSH keys and a real sshd inside the board namespaces.

sshd runs in the board's network namespace and in a private mount namespace
of its own, where ``/etc`` and ``/usr/local/bin`` are overlaid with the Jetson
face and ``/run`` is a private tmpfs holding ``/run/sshd`` and a
``/run/docker.sock`` link to the jetson engine's socket.  Every SSH session
inherits that view, so a plain ``docker`` on the board reaches the jetson
engine, exactly as on a real Jetson, and the rest of the host sees none of it.

A pool board (``hil-sim-jetson-N``) also gets its own hostname (a UTS
namespace), its own ``/etc/hostname`` in the face, and its own home and
``/tmp`` bound over the user's: separate machines share no files, and the
board lease (``/tmp/pytest-hil``) is per board.
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from hil.errors import TargetUnhealthyError
from hil.sim._proc import (
    NotReadyError,
    log_tail,
    pidfile_alive,
    run,
    stop_pidfile,
    wait_until,
    which,
)
from hil.sim.compose_plugin import ComposePlugin
from hil.sim.face import write_face
from hil.sim.layout import RigLayout

#: The overlay's source name in sshd's mountinfo (how a running board shows it has it).
LIBEXEC_OVERLAY = "hil-sim-libexec"


class Board:
    """The board's user, keys, ssh_config, known_hosts and its sshd."""

    def __init__(self, layout: RigLayout) -> None:
        self.layout = layout

    # -- one-time setup ---------------------------------------------------

    def prepare(self) -> None:
        """Create the user, the keys, sshd's config and the face (idempotent).

        The client's files (ssh_config, known_hosts) list every board: see
        :func:`write_client_files`.
        """
        lay = self.layout
        self._ensure_user()
        self._ensure_keys()
        self._write_sshd_config()
        write_face(lay.face_dir, hostname=lay.ssh_alias if lay.index else None)
        ComposePlugin(lay.tools_dir).link_into(lay.face_dir)

    def _ensure_user(self) -> None:
        lay = self.layout
        if run(["getent", "group", lay.docker_group], check=False).exited != 0:
            run(["groupadd", "--system", lay.docker_group], what="creating the docker group")
        try:
            pwd.getpwnam(lay.user)
        except KeyError:
            run(
                [
                    "useradd",
                    "--create-home",
                    "--shell",
                    "/bin/bash",
                    "--groups",
                    lay.docker_group,
                    "--comment",
                    "hil-sim board user",
                    lay.user,
                ],
                what="creating the board user",
            )
        run(["usermod", "--append", "--groups", lay.docker_group, lay.user])
        # A locked password field ("!") makes sshd refuse the account even for keys.
        run(["usermod", "-p", "*", lay.user])

    def _ensure_keys(self) -> None:
        lay = self.layout
        lay.ssh_dir.mkdir(parents=True, exist_ok=True)
        lay.ssh_dir.chmod(0o700)
        for key, comment in (
            (lay.host_key, "hil-sim board host key"),
            (lay.client_key, "hil-sim client"),
        ):
            if not key.exists():
                run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)],
                    what="ssh-keygen",
                )
        user = pwd.getpwnam(lay.user)
        home = Path(user.pw_dir)
        if lay.home_dir is not None and lay.tmp_dir is not None:
            home = lay.home_dir
            home.mkdir(parents=True, exist_ok=True)
            os.chown(home, user.pw_uid, user.pw_gid)
            home.chmod(0o755)
            lay.tmp_dir.mkdir(parents=True, exist_ok=True)
            lay.tmp_dir.chmod(0o1777)
        home_ssh = home / ".ssh"
        home_ssh.mkdir(mode=0o700, exist_ok=True)
        auth = home_ssh / "authorized_keys"
        auth.write_text(lay.client_key.with_suffix(".pub").read_text())
        for path, mode in ((home_ssh, 0o700), (auth, 0o600)):
            os.chown(path, user.pw_uid, user.pw_gid)
            path.chmod(mode)

    def _write_sshd_config(self) -> None:
        lay = self.layout
        lay.sshd_config.write_text(
            f"# Written by `hil sim up`: sshd of the simulated board.\n"
            f"ListenAddress {lay.board_address}:{lay.ssh_port}\n"
            f"HostKey {lay.host_key}\n"
            f"PidFile {lay.sshd_pidfile}\n"
            f"UsePAM no\n"
            f"PasswordAuthentication no\n"
            f"KbdInteractiveAuthentication no\n"
            f"PubkeyAuthentication yes\n"
            f"PermitRootLogin no\n"
            f"AllowUsers {lay.user}\n"
            f"AuthorizedKeysFile .ssh/authorized_keys\n"
            f"MaxStartups 100:30:200\n"
            f"MaxSessions 50\n"
            f"ClientAliveInterval 10\n"
            f"AcceptEnv LANG LC_*\n"
            f"Subsystem sftp internal-sftp\n"
        )
        lay.sshd_config.chmod(0o644)

    def host_key_line(self) -> str:
        """The board's known_hosts line: its alias and address, and its host key."""
        lay = self.layout
        host_pub = lay.host_key.with_suffix(".pub").read_text().split()
        return f"{lay.ssh_alias},{lay.board_address} {host_pub[0]} {host_pub[1]}\n"

    def ssh_config_entry(self) -> str:
        """The board's ``Host`` block of the rig's ssh_config."""
        lay = self.layout
        return (
            f"Host {lay.ssh_alias}\n"
            f"    HostName {lay.board_address}\n"
            f"    Port {lay.ssh_port}\n"
            f"    User {lay.user}\n"
            f"    IdentityFile {lay.client_key}\n"
            f"    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {lay.known_hosts}\n"
            f"    GlobalKnownHostsFile /dev/null\n"
            f"    StrictHostKeyChecking yes\n"
            f"    CheckHostIP no\n"
            f"    PasswordAuthentication no\n"
            f"    BatchMode yes\n"
            f"    ConnectTimeout 10\n"
            f"    ServerAliveInterval 5\n"
            f"    ServerAliveCountMax 3\n"
        )

    # -- sshd -------------------------------------------------------------

    def sshd_pid(self) -> int | None:
        """The pid of the board's sshd, or None."""
        return pidfile_alive(self.layout.sshd_pidfile, "sshd")

    def sshd_listening(self) -> bool:
        """True when sshd listens on the board address (checked inside the namespace)."""
        lay = self.layout
        res = run(["ip", "netns", "exec", lay.netns, "ss", "-Hltn"], check=False)
        return res.ok and f"{lay.board_address}:{lay.ssh_port} " in res.stdout

    def sshd_up(self) -> bool:
        """True when sshd runs and listens."""
        return self.sshd_pid() is not None and self.sshd_listening()

    def _namespace_script(self) -> str:
        lay = self.layout
        stage = lay.board_run_staging
        jetson_dir = lay.jetson.socket.parent
        sshd_dir = lay.sshd_pidfile.parent
        q = shlex.quote
        sshd = which("sshd") or "/usr/sbin/sshd"
        own: list[str] = []
        if lay.home_dir is not None and lay.tmp_dir is not None:
            # A pool board: its own name, home and /tmp (so its own board lease).
            home = pwd.getpwnam(lay.user).pw_dir
            own = [
                f"hostname {q(lay.ssh_alias)}",
                f"mount -n --bind {q(str(lay.home_dir))} {q(home)}",
                f"mount -n --bind {q(str(lay.tmp_dir))} /tmp",
            ]
        return "\n".join(
            [
                "set -e",
                *own,
                # The Jetson face, seen by sshd and its sessions only (read-only overlays).
                f"mount -n -t overlay hil-sim-etc -o lowerdir={q(str(lay.face_dir / 'etc'))}:/etc /etc",
                "mount -n -t overlay hil-sim-bin -o "
                f"lowerdir={q(str(lay.face_dir / 'bin'))}:/usr/local/bin /usr/local/bin",
                # JetPack's Docker CLI plugins (Compose v2), this host's own CLI keeps none.
                *([f"mount -n -t overlay {LIBEXEC_OVERLAY} -o "
                   f"lowerdir={q(str(lay.face_dir / 'libexec'))}:/usr/libexec /usr/libexec"]
                  if (lay.face_dir / "libexec").is_dir() else []),
                # The board's own /run: sshd's privsep dir, the engine socket, sshd's pid file.
                f"mount -n -t tmpfs -o mode=755,size=64m hil-sim-run {q(str(stage))}",
                f"mkdir -m 755 {q(str(stage / 'sshd'))} {q(str(stage / 'lock'))}",
                f"mkdir -p {q(str(stage / 'hil-sim' / jetson_dir.name))}",
                f"mkdir -p {q(str(stage / 'hil-sim' / sshd_dir.name))}",
                f"mount -n --bind {q(str(jetson_dir))} {q(str(stage / 'hil-sim' / jetson_dir.name))}",
                f"mount -n --bind {q(str(sshd_dir))} {q(str(stage / 'hil-sim' / sshd_dir.name))}",
                # A link, not a bind: it survives the engine re-creating its socket.
                f"ln -s {q(str(lay.jetson.socket))} {q(str(stage / 'docker.sock'))}",
                f"mount -n --move {q(str(stage))} /run",
                f"exec {q(sshd)} -f {q(str(lay.sshd_config))} -E {q(str(lay.sshd_log))}",
            ]
        )

    def start_sshd(self, timeout: float = 20.0) -> bool:
        """Start the board's sshd unless it runs; wait until it listens. True when started."""
        lay = self.layout
        if self.sshd_pid() is not None and not self._namespace_stale():
            wait_until(self.sshd_listening, timeout, "board sshd", error=TargetUnhealthyError)
            return False
        if self.sshd_pid() is not None:
            # Started before the face had the Compose plugin: its sessions would miss it.
            self.stop_sshd()
        for directory in (
            lay.board_run_staging,
            lay.sshd_pidfile.parent,
            lay.jetson.socket.parent,
            lay.log_dir,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        lay.sshd_pidfile.unlink(missing_ok=True)
        run(
            [
                "ip",
                "netns",
                "exec",
                lay.netns,
                "unshare",
                "--mount",
                *(["--uts"] if lay.index else []),
                "--propagation",
                "private",
                "sh",
                "-c",
                self._namespace_script(),
            ],
            error=TargetUnhealthyError,
            what="starting the board sshd",
        )
        try:
            wait_until(self.sshd_up, timeout, "board sshd", error=TargetUnhealthyError)
        except TargetUnhealthyError as err:
            err.tail = log_tail(lay.sshd_log)
            raise
        return True

    def _namespace_stale(self) -> bool:
        """True when the running sshd's mount namespace lacks a face overlay it should have."""
        pid = self.sshd_pid()
        if pid is None or not (self.layout.face_dir / "libexec").is_dir():
            return False
        try:
            mounts = Path(f"/proc/{pid}/mountinfo").read_text()
        except OSError:
            return False
        return f" {LIBEXEC_OVERLAY} " not in mounts

    def stop_sshd(self) -> bool:
        """Stop the board's sshd by its pid file. True when one was running.

        Sessions already open keep running, as with ``systemctl stop ssh``.
        """
        try:
            return stop_pidfile(self.layout.sshd_pidfile, "sshd", "board sshd", timeout=10)
        except NotReadyError as err:
            raise TargetUnhealthyError(str(err)) from err

    def ssh_command(self, *remote: str, options: tuple[str, ...] = ()) -> list[str]:
        """The ssh argv that runs ``remote`` on the board through the generated config."""
        lay = self.layout
        return ["ssh", "-F", str(lay.ssh_config), *options, lay.ssh_alias, *remote]

    def ssh(
        self, *remote: str, timeout: float = 60.0, options: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """Run ``remote`` on the board over SSH; the finished process (never raises on exit)."""
        return subprocess.run(
            self.ssh_command(*remote, options=options),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )


def write_client_files(boards: Sequence[Board]) -> None:
    """Write the rig's ssh_config and known_hosts naming ``boards`` (board 0 first).

    Both files are replaced atomically: sessions reading them while ``up`` runs
    see the old list or the new one, never half of either.
    """
    lay = boards[0].layout
    header = "# Written by `hil sim up`: the simulated Jetson board"
    header += "s (hil-sim-jetson, then the pool).\n" if len(boards) > 1 else ".\n"
    for path, text in (
        (lay.known_hosts, "".join(board.host_key_line() for board in boards)),
        (lay.ssh_config, header + "\n".join(board.ssh_config_entry() for board in boards)),
    ):
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(text)
        partial.chmod(0o644)
        partial.replace(path)
