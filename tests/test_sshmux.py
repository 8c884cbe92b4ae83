"""The connection keeper (hil.sshmux) against the simulated board: reuse, faithful
channels, host-key checks across sessions, idle exit.  (A client killed while it
holds the lease: tests/test_lease.py, whose sessions go through a keeper.)"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hil.errors import HostKeyError
from hil.sim import wait_until
from hil.sshmux import MuxConnection


def _open(rig: Any, config: Path | None = None, persist: float = 60.0) -> MuxConnection:
    return MuxConnection.open(host=rig.ssh_alias, config_file=str(config or rig.ssh_config),
                              persist=persist, target="sim-jetson")


def _config_with_known_hosts(rig: Any, tmp_path: Path, known_hosts: str) -> Path:
    """A copy of the rig's ssh_config whose known_hosts file is ``tmp_path/known_hosts``."""
    kh = tmp_path / "known_hosts"
    kh.write_text(known_hosts, encoding="utf-8")
    lines = [ln for ln in Path(rig.ssh_config).read_text(encoding="utf-8").splitlines()
             if not ln.strip().lower().startswith("userknownhostsfile")]
    lines.append(f"    UserKnownHostsFile {kh}")
    cfg = tmp_path / "ssh_config"
    cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return cfg


def _rig_known_hosts(rig: Any) -> str:
    for line in Path(rig.ssh_config).read_text(encoding="utf-8").splitlines():
        if line.strip().lower().startswith("userknownhostsfile"):
            return Path(line.split(None, 1)[1].strip()).read_text(encoding="utf-8")
    raise AssertionError("the rig's ssh_config names no known_hosts file")


def test_second_session_reuses_the_keeper_and_its_connection(sim_rig: Any) -> None:
    first = _open(sim_rig)
    second = _open(sim_rig)
    try:
        assert second.keeper_pid == first.keeper_pid
        assert second.connected_at == first.connected_at
        assert not second.started_keeper
        assert second.endpoint.user == sim_rig.user
        assert second.host_key.startswith("ssh-ed25519 SHA256:")
        assert second.run("echo $USER").stdout == f"{sim_rig.user}\n"
    finally:
        first.close()
        second.close()


def test_channels_carry_stdin_stdout_stderr_and_exit_status(sim_rig: Any) -> None:
    conn = _open(sim_rig)
    try:
        blob = os.urandom(3 << 20)  # several frames each way
        res = conn.run("sha256sum; echo oops >&2; exit 3", stdin=blob)
        assert res.exited == 3
        assert res.stdout.split()[0] == hashlib.sha256(blob).hexdigest()
        assert res.stderr == "oops\n"
        big = conn.run("head -c 5000000 /dev/zero")
        assert big.ok and len(big.stdout) == 5_000_000
        killed = conn.run("kill -9 $$")
        assert killed.exited == -1  # closed by a signal, no exit status
    finally:
        conn.close()


def test_changed_known_hosts_is_checked_again_by_a_fresh_keeper(sim_rig: Any,
                                                               tmp_path: Path) -> None:
    good = _rig_known_hosts(sim_rig)
    cfg = _config_with_known_hosts(sim_rig, tmp_path, good)
    conn = _open(sim_rig, cfg)
    old_pid = conn.keeper_pid
    conn.close()
    # The board's key is now "different" from what known_hosts holds.
    host, _keytype, _key = good.split()[:3]
    (tmp_path / "known_hosts").write_text(
        f"{host} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
        encoding="utf-8")
    with pytest.raises(HostKeyError) as info:
        _open(sim_rig, cfg)
    assert "HAS CHANGED" in str(info.value)
    assert "ssh-keygen -R" in info.value.hint
    (tmp_path / "known_hosts").write_text(good, encoding="utf-8")
    fresh = _open(sim_rig, cfg)
    try:
        assert fresh.started_keeper and fresh.keeper_pid != old_pid
    finally:
        fresh.close()


def test_unknown_host_is_refused_through_the_keeper(sim_rig: Any, tmp_path: Path) -> None:
    cfg = _config_with_known_hosts(sim_rig, tmp_path, "")
    with pytest.raises(HostKeyError) as info:
        _open(sim_rig, cfg)
    assert "is unknown" in str(info.value) and "ssh-keyscan" in info.value.hint


def test_keeper_exits_when_idle_for_persist_seconds(sim_rig: Any, tmp_path: Path) -> None:
    cfg = _config_with_known_hosts(sim_rig, tmp_path, _rig_known_hosts(sim_rig))
    conn = _open(sim_rig, cfg, persist=1)
    assert conn.started_keeper
    path, pid = conn.path, conn.keeper_pid
    assert conn.run("true").ok
    conn.close()
    wait_until(lambda: not path.exists(), 20, "the idle keeper to exit")
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10, "the keeper process to end")


def test_hil_disconnect_stops_the_keepers(sim_rig: Any, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "control"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("HIL_SSH_CONTROL_DIR", str(folder))
    conn = _open(sim_rig)
    pid = conn.keeper_pid
    conn.close()
    res = subprocess.run([sys.executable, "-m", "hil.cli", "disconnect"], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "hil: closed 1 kept SSH connection(s)"
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10, "the stopped keeper to end")
    again = subprocess.run([sys.executable, "-m", "hil.cli", "disconnect"], capture_output=True,
                           text=True, check=False)
    assert again.stdout.strip() == "hil: no kept SSH connections"
