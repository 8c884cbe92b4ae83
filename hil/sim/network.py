"""The board's network: a namespace, a veth pair, and faults on that link.

Delay and loss use ``tc netem`` on both ends of the veth where the kernel has
it.  Where it does not (``sch_netem`` is not built into our CI kernels), the
same faults are made by iptables NFQUEUE rules that queue the veth's packets, both
directions, to :mod:`hil.sim.nfqueue`, which holds or drops them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from hil.errors import ConfigError, HilError, RigError
from hil.result import Result
from hil.sim._proc import pid_alive, pidfile_alive, run, spawn_detached, stop_pidfile, wait_until
from hil.sim.layout import RigLayout

_RULE_COMMENT = "hil-sim-netem"


class BoardNetwork:
    """Creates and removes the namespace and veth pair; cuts, restores and degrades the link."""

    def __init__(self, layout: RigLayout) -> None:
        self.layout = layout

    # -- state ------------------------------------------------------------

    def namespace_exists(self) -> bool:
        """True when the board's network namespace exists."""
        return Path("/run/netns", self.layout.netns).exists()

    def link_exists(self) -> bool:
        """True when the host end of the veth exists."""
        return Path("/sys/class/net", self.layout.host_if).exists()

    def link_up(self) -> bool:
        """True when the host end of the veth is administratively up."""
        res = run(["ip", "-j", "link", "show", "dev", self.layout.host_if], check=False)
        if not res.ok:
            return False
        info = json.loads(res.stdout or "[]")
        return bool(info) and "UP" in info[0].get("flags", [])

    def netem(self) -> dict[str, float | str]:
        """The delay/loss now applied: ``{"delay_ms", "loss_pct", "via"}`` or ``{}``."""
        state = self._netem_state_file()
        if not state.exists():
            return {}
        data: dict[str, float | str] = json.loads(state.read_text())
        return data

    # -- up / down --------------------------------------------------------

    def create(self) -> None:
        """Create the namespace and the addressed veth pair (idempotent)."""
        lay = self.layout
        if not self.namespace_exists():
            run(["ip", "netns", "add", lay.netns], what="creating the board namespace")
        ns = ["ip", "-n", lay.netns]
        run([*ns, "link", "set", "lo", "up"])
        if not self.link_exists():
            run(
                [
                    "ip",
                    "link",
                    "add",
                    lay.host_if,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    lay.board_if,
                    "netns",
                    lay.netns,
                ],
                what="creating the veth pair",
            )
            run(["ip", "addr", "add", f"{lay.host_address}/{lay.prefix_len}", "dev", lay.host_if])
            run([*ns, "addr", "add", f"{lay.board_address}/{lay.prefix_len}", "dev", lay.board_if])
        run([*ns, "link", "set", lay.board_if, "up"])
        run(["ip", "link", "set", lay.host_if, "up"])

    def kill_processes(self) -> bool:
        """Stop what still runs in the namespace (open SSH sessions), by pid. True when any ran."""
        res = run(["ip", "netns", "pids", self.layout.netns], check=False)
        pids = [int(p) for p in res.stdout.split() if p.isdigit()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            try:
                wait_until(lambda: not any(pid_alive(p) for p in pids), 5, "board sessions to exit")
                break
            except HilError:
                continue
        return bool(pids)

    def remove(self) -> None:
        """Remove the faults, the veth pair and the namespace (idempotent)."""
        self.clear_netem()
        if self.link_exists():
            run(["ip", "link", "del", self.layout.host_if], what="removing the veth pair")
        if self.namespace_exists():
            run(["ip", "netns", "del", self.layout.netns], what="removing the board namespace")

    # -- faults -----------------------------------------------------------

    def cut(self) -> None:
        """Take the host end of the veth down: packets to the board go nowhere."""
        run(["ip", "link", "set", self.layout.host_if, "down"], what="cutting the link")

    def restore(self) -> None:
        """Bring the host end of the veth back up."""
        run(["ip", "link", "set", self.layout.host_if, "up"], what="restoring the link")
        wait_until(self.link_up, 10, "the board link")

    def set_netem(self, delay_ms: float = 0, loss_pct: float = 0) -> str:
        """Delay every packet ``delay_ms`` each way and drop ``loss_pct`` percent.

        Returns how it is done: "tc-netem" or "nfqueue".
        """
        if delay_ms < 0 or not 0 <= loss_pct <= 100:
            raise ConfigError(f"bad netem values: delay {delay_ms} ms, loss {loss_pct} %")
        self.clear_netem()
        if delay_ms == 0 and loss_pct == 0:
            return "none"
        try:
            via = "tc-netem" if self._try_tc(delay_ms, loss_pct) else "nfqueue"
            if via == "nfqueue":
                self._start_nfqueue(delay_ms, loss_pct)
        except BaseException:
            self.clear_netem()
            raise
        state = {"delay_ms": delay_ms, "loss_pct": loss_pct, "via": via}
        self._netem_state_file().write_text(json.dumps(state) + "\n")
        return via

    def clear_netem(self) -> None:
        """Remove any delay and loss (idempotent)."""
        lay = self.layout
        if self.link_exists():
            run(["tc", "qdisc", "del", "dev", lay.host_if, "root"], check=False)
        if self.namespace_exists():
            self._board_qdisc("del", check=False)
        for rule in self._iptables_rules():
            # -D removes one copy per call; repeat until none is left.
            while run(["iptables", "-w", "-t", "mangle", "-D", *rule], check=False).ok:
                pass
        stop_pidfile(lay.netem_pidfile, "hil.sim.nfqueue", "netem daemon", timeout=5)
        self._netem_state_file().unlink(missing_ok=True)

    def netem_daemon_running(self) -> bool:
        """True when the nfqueue delay daemon runs."""
        return pidfile_alive(self.layout.netem_pidfile, "hil.sim.nfqueue") is not None

    # -- helpers ----------------------------------------------------------

    def _netem_state_file(self) -> Path:
        return self.layout.netem_state

    def _iptables_rules(self) -> list[list[str]]:
        # NFQUEUE via xtables: kernels without nft's queue expression still have it.
        lay = self.layout
        target = [
            "-m",
            "comment",
            "--comment",
            _RULE_COMMENT,
            "-j",
            "NFQUEUE",
            "--queue-num",
            str(lay.netem_queue),
            "--queue-bypass",
        ]
        return [["PREROUTING", "-i", lay.host_if, *target], ["POSTROUTING", "-o", lay.host_if, *target]]

    def _board_qdisc(self, action: str, *spec: str, **kwargs: Any) -> Result:
        """``tc qdisc ACTION`` on the board end of the link, inside its namespace."""
        lay = self.layout
        return run(["ip", "netns", "exec", lay.netns, "tc", "qdisc", action, "dev", lay.board_if,
                    "root", *spec], **kwargs)

    def _try_tc(self, delay_ms: float, loss_pct: float) -> bool:
        lay = self.layout
        spec = ["netem", "delay", f"{delay_ms}ms", "loss", f"{loss_pct}%"]
        res = run(["tc", "qdisc", "replace", "dev", lay.host_if, "root", *spec], check=False)
        if not res.ok:
            if "unknown" in res.stderr.lower():
                return False
            raise RigError("tc netem failed", command=res.command, exited=res.exited,
                           tail=res.tail())
        self._board_qdisc(
            "replace", *spec,
            what="tc netem on the board end",
        )
        return True

    def _start_nfqueue(self, delay_ms: float, loss_pct: float) -> None:
        lay = self.layout
        lay.netem_pidfile.parent.mkdir(parents=True, exist_ok=True)
        lay.netem_pidfile.unlink(missing_ok=True)
        package_parent = str(Path(__file__).resolve().parents[2])
        spawn_detached(
            [
                sys.executable,
                "-m",
                "hil.sim.nfqueue",
                "--queue",
                str(lay.netem_queue),
                "--delay-ms",
                str(delay_ms),
                "--loss-pct",
                str(loss_pct),
                "--pidfile",
                str(lay.netem_pidfile),
            ],
            lay.log_dir / "netem.log",
            env={"PYTHONPATH": package_parent},
        )
        wait_until(self.netem_daemon_running, 10, "the netem (nfqueue) daemon")
        for rule in self._iptables_rules():
            run(["iptables", "-w", "-t", "mangle", "-A", *rule], what="installing the netem iptables rules")
