"""The simulated lab (``hil sim up --boards N --labgrid``): a real labgrid coordinator and exporter.

Three processes, each started detached with a pid file under the rig's
runtime dir (``lab/*.pid``) and awaited with a deadline:

* ``labgrid-coordinator`` on 127.0.0.1:20408 (its places persist in the
  state dir's ``lab/``);
* a power relay (:mod:`hil.sim.lab_power`) on 127.0.0.1:20409 whose ports
  stop and start a pool board's sshd and Docker engine;
* ``labgrid-exporter`` named ``hil-sim``, publishing for each pool board
  ``hil-sim-jetson-I`` a ``NetworkService`` (its address, user and port) and a
  ``NetworkPowerPort`` on the relay.

Places ``hil-sim-jetson-1..N`` match those resources and are tagged
``board=sim-orin``.  The boards' host keys are in the rig's known_hosts by
address too; ``lab-config`` (beside the rig's ssh_config) gives the identity
and known_hosts for the boards' addresses, which is what a lab target's
``[ssh] config`` names.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from hil.errors import LabError
from hil.lab.coordinator import Coordinator
from hil.sim._proc import NotReadyError, log_tail, pidfile_alive, stop_pidfile, wait_until
from hil.sim.layout import RigLayout

COORDINATOR = "127.0.0.1:20408"
POWER_PORT = 20409
EXPORTER = "hil-sim"
TAGS = {"board": "sim-orin"}


def _tool(name: str) -> str:
    """labgrid's console script installed beside our interpreter (the venv's)."""
    return str(Path(sys.executable).parent / name)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class SimLab:
    """The coordinator, exporter and power relay of the simulated lab; up, down, status."""

    def __init__(self, layout: RigLayout) -> None:
        self.layout = layout
        self.run_dir = layout.runtime_dir / "lab"
        self.state = layout.state_dir / "lab"

    # -- the processes -------------------------------------------------------------------

    def _procs(self) -> dict[str, tuple[list[str], str]]:
        """name -> (command, a word of its cmdline to recognise it by)."""
        return {
            "coordinator": ([_tool("labgrid-coordinator"), "-l", COORDINATOR], "labgrid-coordinator"),
            "power": ([sys.executable, "-m", "hil.sim.lab_power", str(POWER_PORT)], "hil.sim.lab_power"),
            "exporter": ([_tool("labgrid-exporter"), "-c", COORDINATOR, "-n", EXPORTER,
                          "--hostname", "127.0.0.1", str(self.state / "exporter.yaml")],
                         "labgrid-exporter"),
        }

    def pid(self, name: str) -> int | None:
        """The live pid of lab process ``name``, if it runs."""
        return pidfile_alive(self.run_dir / f"{name}.pid", self._procs()[name][1])

    def _start(self, name: str) -> bool:
        if self.pid(name):
            return False
        command, _ = self._procs()[name]
        log = self.layout.log_dir / f"lab-{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(command, cwd=self.state, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=out, start_new_session=True)
        (self.run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        return True

    def _exporter_config(self, boards: int) -> str:
        lines = []
        for i in range(1, boards + 1):
            lay = self.layout.pool_board(i)
            lines += [f"{lay.ssh_alias}:",
                      "  NetworkService:",
                      f"    address: '{lay.board_address}'",
                      f"    username: '{lay.user}'",
                      f"    port: {lay.ssh_port}",
                      "  NetworkPowerPort:",
                      "    model: simplerest",
                      f"    host: 'http://127.0.0.1:{POWER_PORT}/board/{{index}}/{{value}}'",
                      f"    index: {i}"]
        return "\n".join(lines) + "\n"

    def _ssh_config(self, boards: int) -> str:
        """Identity and known_hosts for the boards' addresses (what a NetworkService names)."""
        lay = self.layout
        hosts = " ".join(lay.pool_board(i).board_address for i in range(1, boards + 1))
        return (f"# Written by `hil sim up --labgrid`: the simulated lab's boards, by address.\n"
                f"Host {hosts}\n"
                f"    IdentityFile {lay.client_key}\n    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {lay.known_hosts}\n    GlobalKnownHostsFile /dev/null\n"
                "    StrictHostKeyChecking yes\n    CheckHostIP no\n    PasswordAuthentication no\n"
                "    BatchMode yes\n    ConnectTimeout 10\n    ServerAliveInterval 5\n"
                "    ServerAliveCountMax 3\n")

    @property
    def ssh_config(self) -> Path:
        """The ssh_config a lab target names in ``[ssh] config``."""
        return self.layout.ssh_dir / "lab-config"

    def up(self, boards: int) -> list[str]:
        """Start what is not running, publish boards 1..``boards``, make their places; what started."""
        self.state.mkdir(parents=True, exist_ok=True)
        config = self.state / "exporter.yaml"
        wanted = self._exporter_config(boards)
        if config.exists() and config.read_text() != wanted and self.pid("exporter"):
            self._stop("exporter")  # the pool changed size: publish the new list
        config.write_text(wanted)
        self.ssh_config.write_text(self._ssh_config(boards))
        started = [name for name in ("coordinator", "power") if self._start(name)]
        port = int(COORDINATOR.rsplit(":", 1)[1])
        self._await(lambda: _listening(port), "coordinator", 30)
        self._await(lambda: _listening(POWER_PORT), "power", 30)
        if self._start("exporter"):
            started.append("exporter")
        with Coordinator(COORDINATOR) as lab:
            expected = {(EXPORTER, self.layout.pool_board(i).ssh_alias) for i in range(1, boards + 1)}

            def published() -> bool:
                return expected <= {(p[0], p[1]) for p, _ in lab.resources() if p[2] == "NetworkService"}

            self._await(published, "exporter", 60)
            made = self._make_places(lab, boards)
        return started + ([f"places {', '.join(made)}"] if made else [])

    def _await(self, ready: Any, name: str, timeout: float) -> None:
        try:
            wait_until(ready, timeout, f"the simulated lab's {name}", interval=0.1)
        except NotReadyError as err:
            tail = log_tail(self.layout.log_dir / f"lab-{name}.log")
            raise NotReadyError(f"{err.message}; its log ends:\n{tail}") from err

    def _make_places(self, lab: Coordinator, boards: int) -> list[str]:
        made = []
        places = lab.places()
        for i in range(1, boards + 1):
            name = self.layout.pool_board(i).ssh_alias
            if name not in places:
                lab.call("AddPlace", "AddPlaceRequest", f"add place {name}", name=name)
                lab.call("AddPlaceMatch", "AddPlaceMatchRequest", f"match place {name}",
                         placename=name, pattern=f"{EXPORTER}/{name}/*")
                made.append(name)
            if any(places.get(name) is None or places[name].tags.get(k) != v for k, v in TAGS.items()):
                lab.call("SetPlaceTags", "SetPlaceTagsRequest", f"tag place {name}",
                         placename=name, tags=TAGS)
        return made

    def _stop(self, name: str) -> bool:
        return stop_pidfile(self.run_dir / f"{name}.pid", self._procs()[name][1], f"lab {name}")

    def down(self) -> list[str]:
        """Stop the exporter, relay and coordinator (their places stay in the state dir)."""
        return [f"lab {name}" for name in ("exporter", "power", "coordinator") if self._stop(name)]

    def status(self) -> dict[str, Any]:
        """The lab's processes and places (JSON-ready); ``up`` False when none runs."""
        procs = {name: {"up": self.pid(name) is not None, "pid": self.pid(name)}
                 for name in ("coordinator", "exporter", "power")}
        places: dict[str, Any] = {}
        if procs["coordinator"]["up"]:
            try:
                with Coordinator(COORDINATOR, timeout=5) as lab:
                    places = {name: {"tags": p.tags, "acquired": p.acquired}
                              for name, p in sorted(lab.places().items())}
            except LabError as err:
                places = {"error": err.message}
        return {"up": any(p["up"] for p in procs.values()), "coordinator": COORDINATOR,
                "processes": procs, "places": places}
