"""The simulated board: its user, SSH keys and a real sshd inside the board namespaces.

sshd runs in the board's network namespace and in a private mount namespace
of its own, where ``/etc`` and ``/usr/local/bin`` are overlaid with the Jetson
face and ``/run`` is a private tmpfs holding ``/run/sshd`` and a
``/run/docker.sock`` link to the jetson engine's socket.  Every SSH session
inherits that view, so a plain ``docker`` on the board reaches the jetson
engine, exactly as on a real Jetson, and the rest of the host sees none of it.
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
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
from hil.sim.face import write_face
from hil.sim.layout import RigLayout


class Board:
    """The board's user, keys, ssh_config, known_hosts and its sshd."""

    def __init__(self, layout: RigLayout) -> None:
        self.layout = layout

    # -- one-time setup ---------------------------------------------------

    def prepare(self) -> None:
        """Create the user, the keys, the ssh files and the face (idempotent)."""
        self._ensure_user()
        self._ensure_keys()
        self._write_ssh_files()
        write_face(self.layout.face_dir)

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
        home_ssh = Path(user.pw_dir) / ".ssh"
        home_ssh.mkdir(mode=0o700, exist_ok=True)
        auth = home_ssh / "authorized_keys"
        auth.write_text(lay.client_key.with_suffix(".pub").read_text())
        for path, mode in ((home_ssh, 0o700), (auth, 0o600)):
            os.chown(path, user.pw_uid, user.pw_gid)
            path.chmod(mode)

    def _write_ssh_files(self) -> None:
        lay = self.layout
        host_pub = lay.host_key.with_suffix(".pub").read_text().split()
        lay.known_hosts.write_text(f"{lay.ssh_alias},{lay.board_address} {host_pub[0]} {host_pub[1]}\n")
        lay.ssh_config.write_text(
            f"# Written by `hil sim up`: the simulated Jetson board.\n"
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
        for path in (lay.ssh_config, lay.known_hosts, lay.sshd_config):
            path.chmod(0o644)

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
        return "\n".join(
            [
                "set -e",
                # The Jetson face, seen by sshd and its sessions only (read-only overlays).
                f"mount -n -t overlay hil-sim-etc -o lowerdir={q(str(lay.face_dir / 'etc'))}:/etc /etc",
                "mount -n -t overlay hil-sim-bin -o "
                f"lowerdir={q(str(lay.face_dir / 'bin'))}:/usr/local/bin /usr/local/bin",
                # The board's own /run: sshd's privsep dir, the engine socket, sshd's pid file.
                f"mount -n -t tmpfs -o mode=755,size=64m hil-sim-run {q(str(stage))}",
                f"mkdir -m 755 {q(str(stage / 'sshd'))} {q(str(stage / 'lock'))}",
                f"mkdir -p {q(str(stage / 'hil-sim' / 'jetson'))}",
                f"mkdir -p {q(str(stage / 'hil-sim' / 'sshd'))}",
                f"mount -n --bind {q(str(jetson_dir))} {q(str(stage / 'hil-sim' / 'jetson'))}",
                f"mount -n --bind {q(str(sshd_dir))} {q(str(stage / 'hil-sim' / 'sshd'))}",
                # A link, not a bind: it survives the engine re-creating its socket.
                f"ln -s {q(str(lay.jetson.socket))} {q(str(stage / 'docker.sock'))}",
                f"mount -n --move {q(str(stage))} /run",
                f"exec {q(sshd)} -f {q(str(lay.sshd_config))} -E {q(str(lay.sshd_log))}",
            ]
        )

    def start_sshd(self, timeout: float = 20.0) -> bool:
        """Start the board's sshd unless it runs; wait until it listens. True when started."""
        lay = self.layout
        if self.sshd_pid() is not None:
            wait_until(self.sshd_listening, timeout, "board sshd", error=TargetUnhealthyError)
            return False
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
