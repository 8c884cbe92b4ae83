"""The board's lease: exclusive, tied to the SSH connection, waits then device-busy."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from hil.backends.jetson.backend import SshBackend
from hil.errors import DeviceBusyError, ExitCode
from hil.progress import Progress
from hil.ssh.lease import Holder, read_holder


def _backend(spec: Any, root: Path, lease_timeout: float) -> tuple[SshBackend, io.StringIO]:
    out = io.StringIO()
    return SshBackend(spec, root, Progress(out), lease_timeout=lease_timeout), out


def test_second_session_waits_then_is_busy_naming_the_first(sim_jetson: Any,
                                                            sim_project: Path) -> None:
    first, _ = _backend(sim_jetson, sim_project, 30)
    second, second_out = _backend(sim_jetson, sim_project, 2)
    try:
        first.acquire_lease()
        start = time.monotonic()
        with pytest.raises(DeviceBusyError) as info:
            second.acquire_lease()
        waited = time.monotonic() - start
        err = info.value
        assert err.exit_code == ExitCode.DEVICE_BUSY
        me = Holder.me()
        assert f"{me.user}@{me.host} (pid {os.getpid()})" in str(err)
        assert " since " in str(err)
        assert 2.0 <= waited < 15
        assert "is leased by" in second_out.getvalue()
        assert f"pid {os.getpid()}" in second_out.getvalue()
    finally:
        second.close()
        first.close()


def test_lease_passes_on_when_the_holder_closes(sim_jetson: Any, sim_project: Path) -> None:
    first, _ = _backend(sim_jetson, sim_project, 30)
    second, _ = _backend(sim_jetson, sim_project, 30)
    try:
        first.acquire_lease()
        assert second.connect() is not None
        held, holder = read_holder(second.connect())
        assert held and holder is not None and holder.pid == os.getpid()
        first.close()
        second.acquire_lease()
        assert second.lease is not None and second.lease.held
    finally:
        second.close()
        first.close()


HOLDER_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from hil.progress import Progress
    from hil.backends.jetson.backend import SshBackend
    from hil.config import parse_target
    import json
    spec = parse_target(json.loads(sys.argv[1]), "test", default_name="sim-jetson")
    backend = SshBackend(spec, Path(sys.argv[2]), Progress(quiet=True), lease_timeout=30)
    backend.acquire_lease()
    print("HELD", flush=True)
    sys.stdin.read()  # until killed
""")


def _spec_json(spec: Any) -> str:
    import json

    return json.dumps({
        "kind": "ssh", "tier": spec.tier,
        "ssh": {"host": spec.ssh.host, "config": spec.ssh.config, "remote_dir": spec.ssh.remote_dir},
        "docker": {"runtime": spec.docker.runtime, "build_args": dict(spec.docker.build_args),
                   "hash_files": list(spec.docker.hash_files)},
    })


def test_lease_is_released_when_the_holding_client_is_killed(sim_jetson: Any,
                                                             sim_project: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, _spec_json(sim_jetson), str(sim_project)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=repo)
    second, _ = _backend(sim_jetson, sim_project, 30)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "HELD"
        held, holder = read_holder(second.connect())
        assert held and holder is not None and holder.pid == proc.pid
        os.kill(proc.pid, signal.SIGKILL)  # a crash: no close(), no release
        proc.wait(10)
        start = time.monotonic()
        second.acquire_lease()
        assert time.monotonic() - start < 10
        held, holder = read_holder(second.connect())
        assert held and holder is not None and holder.pid == os.getpid()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        second.close()
