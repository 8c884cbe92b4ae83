"""One Docker engine (dockerd from Debian's docker.io) of the simulated rig."""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from hil.errors import EngineDownError
from hil.result import Result
from hil.sim._proc import (
    NotReadyError,
    log_tail,
    pidfile_alive,
    run,
    spawn_detached,
    stop_pidfile,
    wait_until,
    which,
)
from hil.sim.layout import EngineLayout


class DockerEngine:
    """Starts, stops and talks to one dockerd with its own socket, data and exec roots."""

    def __init__(
        self,
        layout: EngineLayout,
        *,
        group: str,
        runtimes: Sequence[str] = (),
        config: Mapping[str, object] | None = None,
        binds: Sequence[tuple[Path, Path]] = (),
    ) -> None:
        self.layout = layout
        #: (source, target) bind mounts that this dockerd alone sees (a pool board's own home
        #: and /tmp, as its sshd does): the paths sessions hand the engine are the board's.
        self.binds = tuple(binds)
        self.group = group
        #: Extra runtime names, each mapped to runc (``--add-runtime NAME=runc``).
        self.runtimes = tuple(runtimes)
        #: What the engine's private daemon.json holds (empty by default).
        self.config = dict(config or {})

    @property
    def name(self) -> str:
        """The engine's name ("colima" or "jetson")."""
        return self.layout.name

    def pid(self) -> int | None:
        """The pid of the running dockerd, or None."""
        return pidfile_alive(self.layout.pidfile, "dockerd")

    def answers(self) -> bool:
        """True when the engine's API answers on its socket."""
        if not self.layout.socket.exists():
            return False
        return self.docker(["version", "--format", "{{.Server.Version}}"], check=False, timeout=10).ok

    def is_up(self) -> bool:
        """True when dockerd runs and answers."""
        return self.pid() is not None and self.answers()

    def command(self) -> list[str]:
        """The dockerd command line of this engine."""
        lay = self.layout
        argv = [
            which("dockerd") or "dockerd",
            "--host",
            lay.host,
            "--data-root",
            str(lay.data_root),
            "--exec-root",
            str(lay.exec_root),
            "--pidfile",
            str(lay.pidfile),
            "--config-file",
            str(lay.config_file),
            "--group",
            self.group,
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            "--bridge=none",
            "--userland-proxy=false",
        ]
        for runtime in self.runtimes:
            argv += ["--add-runtime", f"{runtime}=runc"]
        if not self.binds:
            return argv
        # A mount namespace of its own (slave: the host's later mounts, e.g. its disk, still
        # reach it; its container mounts stay in it); exec keeps dockerd's pid.
        q = shlex.quote
        script = "; ".join([*(f"mount -n --bind {q(str(a))} {q(str(b))}" for a, b in self.binds),
                            "exec " + " ".join(q(a) for a in argv)])
        return ["unshare", "--mount", "--propagation", "slave", "sh", "-ec", script]

    def lacks_binds(self) -> bool:
        """Whether a running dockerd that should have binds shares the host's mounts.

        Such an engine (started by an older rig) resolves the paths a session
        hands it in the host's home, not the board's: it is restarted.
        """
        pid = self.pid()
        if not self.binds or pid is None:
            return False
        try:
            return os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
        except OSError:
            return False

    def start(self, timeout: float = 60.0) -> bool:
        """Start dockerd unless it runs; wait until it answers. True when started now."""
        if self.lacks_binds():
            self.stop()
        if self.pid() is not None:
            wait_until(self.answers, timeout, f"{self.name} engine API", error=EngineDownError)
            return False
        lay = self.layout
        for directory in (lay.data_root, lay.exec_root, lay.socket.parent, lay.pidfile.parent):
            directory.mkdir(parents=True, exist_ok=True)
        lay.config_file.parent.mkdir(parents=True, exist_ok=True)
        # A private daemon.json keeps the host's /etc/docker/daemon.json out of the rig.
        lay.config_file.write_text(json.dumps(self.config) + "\n")
        lay.pidfile.unlink(missing_ok=True)
        spawn_detached(self.command(), lay.log)
        try:
            wait_until(
                lambda: self.pid() is not None and self.answers(),
                timeout,
                f"{self.name} engine (dockerd on {lay.socket})",
                error=EngineDownError,
            )
        except EngineDownError as err:
            err.tail = log_tail(lay.log)
            raise
        return True

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop dockerd by its pid file. True when one was running."""
        try:
            return stop_pidfile(self.layout.pidfile, "dockerd", f"{self.name} dockerd", timeout)
        except NotReadyError as err:
            raise EngineDownError(str(err)) from err

    def docker(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 300.0,
    ) -> Result:
        """Run the docker CLI against this engine."""
        return run(
            ["docker", *args],
            check=check,
            input=input,
            timeout=timeout,
            env={"DOCKER_HOST": self.layout.host, "DOCKER_BUILDKIT": "0"},
            unset=("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"),
            error=EngineDownError,
            what=f"docker {args[0]} on the {self.name} engine",
        )

    def image_exists(self, ref: str) -> bool:
        """True when the engine holds image ``ref``."""
        return self.docker(["image", "inspect", ref], check=False, timeout=30).ok

    def image_label(self, ref: str, label: str) -> str | None:
        """The value of ``label`` on image ``ref`` (None when absent or no image)."""
        res = self.docker(
            ["image", "inspect", "--format", "{{json .Config.Labels}}", ref],
            check=False,
            timeout=30,
        )
        if not res.ok:
            return None
        labels = json.loads(res.stdout.strip() or "null") or {}
        value = labels.get(label)
        return str(value) if value is not None else None

    def runtimes_registered(self) -> list[str]:
        """The runtime names the engine registers (e.g. ``["nvidia", "runc"]``)."""
        res = self.docker(["info", "--format", "{{json .Runtimes}}"], check=False, timeout=30)
        if not res.ok:
            return []
        return sorted(json.loads(res.stdout.strip() or "{}"))


def df_free_mb(path: Path) -> int:
    """Free space (for unprivileged users, as ``df`` shows it) at ``path``, in MiB."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // (1024 * 1024)


def own_identity_config(key_path: Path) -> dict[str, object]:
    """daemon.json keys that give an engine an ID of its own (``docker info``'s ``ID``).

    dockerd before 23 derives its ID from ``/etc/docker/key.json``, shared by
    every engine of the host unless ``deprecated-key-path`` names another;
    from 23 on the ID lives in the data root and needs nothing.
    """
    done = run(["dockerd", "--version"], check=False)
    found = re.search(r"version (\d+)\.", done.stdout)
    if found is None or int(found.group(1)) >= 23:
        return {}
    return {"deprecated-key-path": str(key_path)}
