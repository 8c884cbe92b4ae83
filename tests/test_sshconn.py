"""Several boards at once over Fabric (hil.sshconn.open_boards) on the simulated rig."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hil.errors import ExitCode
from hil.ssh.connection import SshConnection, open_boards, resolve_endpoint


def test_open_boards_runs_on_every_board_that_opened_and_names_the_rest(sim_jetson: Any) -> None:
    ep = resolve_endpoint(sim_jetson.ssh.host, config_file=sim_jetson.ssh.config)
    # Two sessions' worth of connections to the one board, and a board whose port is shut.
    group, failed = open_boards({"a": ep, "b": ep, "dead": dataclasses.replace(ep, port=2)})
    try:
        assert set(failed) == {"dead"}
        assert failed["dead"].exit_code == ExitCode.UNREACHABLE
        assert "refused" in str(failed["dead"]).lower()
        results = group.run("echo $USER; exit 3")
        assert sorted(c.target for c in results) == ["a", "b"]
        assert all(isinstance(c, SshConnection) and c.alive for c in results)
        assert {r.exited for r in results.values()} == {3}
        assert {r.stdout for r in results.values()} == {f"{ep.user}\n"}
    finally:
        group.close()
    assert not any(c.alive for c in group)


@pytest.mark.parametrize("forward", ["yes", "/tmp/some-agent.sock"])
def test_agent_forwarding_is_off_whatever_ssh_config_says(sim_jetson: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          forward: str) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n    ForwardAgent {forward}\n\n"
                      + Path(sim_jetson.ssh.config).read_text(encoding="utf-8"), encoding="utf-8")
    agent = subprocess.run(["ssh-agent", "-s", "-a", str(tmp_path / "agent.sock")],
                           capture_output=True, text=True, check=True)
    pid = int(agent.stdout.split("SSH_AGENT_PID=")[1].split(";")[0])
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
    try:
        conn = SshConnection(resolve_endpoint(sim_jetson.ssh.host, config_file=str(config)))
        try:
            res = conn.open().run('echo "agent=[${SSH_AUTH_SOCK:-}]"')
        finally:
            conn.close()
        assert res.stdout.strip() == "agent=[]"
    finally:
        os.kill(pid, signal.SIGTERM)
