"""Several boards at once over Fabric (hil.sshconn.open_boards) on the simulated rig."""

from __future__ import annotations

import dataclasses
from typing import Any

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
