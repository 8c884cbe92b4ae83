"""The board's lease: exclusive, tied to the SSH connection, waits then device-busy."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hil.backends.jetson.backend import SshBackend
from hil.errors import DeviceBusyError, ExitCode, TargetUnhealthyError
from hil.progress import Progress
from hil.ssh.lease import Holder, Lease, read_holder


def _backend(spec: Any, root: Path, lease_timeout: float,
             lease_dir: str | None = None) -> tuple[SshBackend, io.StringIO]:
    out = io.StringIO()
    backend = SshBackend(spec, root, Progress(out), lease_timeout=lease_timeout)
    if lease_dir is not None:  # other sessions on the shared rig hold the board's own
        backend.lease_dir = lease_dir
    return backend, out


def test_second_session_waits_then_is_busy_naming_the_first(sim_jetson: Any,
                                                            sim_project: Path,
                                                            lease_dir: str) -> None:
    first, _ = _backend(sim_jetson, sim_project, 30, lease_dir)
    second, second_out = _backend(sim_jetson, sim_project, 2, lease_dir)
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


def test_lease_passes_on_when_the_holder_closes(sim_jetson: Any, sim_project: Path,
                                                lease_dir: str) -> None:
    first, _ = _backend(sim_jetson, sim_project, 30, lease_dir)
    second, _ = _backend(sim_jetson, sim_project, 30, lease_dir)
    try:
        first.acquire_lease()
        assert second.connect() is not None
        held, holder = read_holder(second.connect(), lease_dir)
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
    backend.lease_dir = sys.argv[3]
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
                                                             sim_project: Path,
                                                             lease_dir: str) -> None:
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, _spec_json(sim_jetson), str(sim_project),
         lease_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=repo)
    second, _ = _backend(sim_jetson, sim_project, 30, lease_dir)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "HELD"
        held, holder = read_holder(second.connect(), lease_dir)
        assert held and holder is not None and holder.pid == proc.pid
        os.kill(proc.pid, signal.SIGKILL)  # a crash: no close(), no release
        proc.wait(10)
        start = time.monotonic()
        second.acquire_lease()
        assert time.monotonic() - start < 10
        held, holder = read_holder(second.connect(), lease_dir)
        assert held and holder is not None and holder.pid == os.getpid()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        second.close()


# -- another board user ----------------------------------------------------------------------
#
# The board's other users are not trusted.  These tests act as one of them: a uid with no
# account and none of the session user's groups, inside the board's own mount namespace
# (where its /tmp lives).  Each takes a lease folder of its own, never the shared
# /tmp/pytest-hil other sessions on the rig use.

STRANGER = 1777
BASE_IMAGE = "hil-sim/l4t-base:r36.4.3"


def _on_board(rig: Any, script: str, uid: int = STRANGER) -> subprocess.CompletedProcess[str]:
    """``script`` run by ``uid`` (root: 0) on board 0, in its mount namespace."""
    pid = rig.board.sshd_pid()
    assert pid is not None
    who = [] if uid == 0 else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return subprocess.run(["nsenter", "-t", str(pid), "-m", *who, "sh", "-c", script],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def lease_dir(sim_rig: Any, tmp_path: Path) -> Iterator[str]:
    """A lease folder path of this test's own on board 0 (absent at first), removed after."""
    path = f"/tmp/pytest-hil-test-{tmp_path.name}"
    yield path
    _on_board(sim_rig, f"rm -rf {path} {path}-victim", uid=0)


def _lease(backend: SshBackend, lease_dir: str, timeout: float = 30,
           on_wait: Any = None) -> Lease:
    return Lease(backend.connect(), timeout=timeout, target="sim-jetson", lease_dir=lease_dir,
                 on_wait=on_wait)


def test_the_lease_folder_is_closed_to_other_board_users(sim_rig: Any, sim_jetson: Any,
                                                         sim_project: Path,
                                                         lease_dir: str) -> None:
    backend, _ = _backend(sim_jetson, sim_project, 30)
    try:
        _lease(backend, lease_dir).wait()
        listing = _on_board(sim_rig, f"stat -c '%U %a %n' {lease_dir} {lease_dir}/*", uid=0)
        assert listing.stdout.splitlines() == [f"jetson 700 {lease_dir}",
                                               f"jetson 600 {lease_dir}/lease.holder"]
        # Another user can neither take the lock nor replace what is in the folder.
        tried = _on_board(sim_rig, f"flock -n {lease_dir} true || echo NO-LOCK; "
                                   f"rm -f {lease_dir}/lease.holder || echo NO-RM")
        assert "NO-LOCK" in tried.stdout and "NO-RM" in tried.stdout, tried
    finally:
        backend.close()


def test_a_lease_folder_made_by_another_user_is_refused(sim_rig: Any, sim_jetson: Any,
                                                        sim_project: Path,
                                                        lease_dir: str) -> None:
    made = _on_board(sim_rig, f"mkdir -m 777 {lease_dir} && : > {lease_dir}/lease.lock")
    assert made.returncode == 0, made.stderr
    backend, _ = _backend(sim_jetson, sim_project, 30)
    try:
        with pytest.raises(TargetUnhealthyError) as info:
            _lease(backend, lease_dir).wait()
        assert f"{lease_dir} belongs to {STRANGER}:{STRANGER} (mode 777)" in str(info.value)
        assert "docs/security.md" in str(info.value)
        with pytest.raises(TargetUnhealthyError):
            read_holder(backend.connect(), lease_dir)
        left = _on_board(sim_rig, f"ls -A {lease_dir}", uid=0)
        assert left.stdout.split() == ["lease.lock"]  # nothing written in it
    finally:
        backend.close()


def test_a_lease_folder_that_is_a_link_is_refused(sim_rig: Any, sim_jetson: Any,
                                                  sim_project: Path, lease_dir: str) -> None:
    # A link to a folder the session user may write: the lease must not write in it.
    victim = f"{lease_dir}-victim"
    assert _on_board(sim_rig, f"mkdir -m 777 {victim}", uid=0).returncode == 0
    assert _on_board(sim_rig, f"ln -s {victim} {lease_dir}").returncode == 0
    backend, _ = _backend(sim_jetson, sim_project, 30)
    try:
        with pytest.raises(TargetUnhealthyError, match="is not a folder"):
            _lease(backend, lease_dir).wait()
        assert _on_board(sim_rig, f"ls -A {victim}", uid=0).stdout == ""
    finally:
        backend.close()


def test_a_planted_holder_link_is_refused_never_written_through(
        sim_rig: Any, sim_jetson: Any, sim_project: Path, lease_dir: str) -> None:
    # The session user's folder, left open by an older pytest-hil; a stranger planted a link
    # to a file of the session user's where the holder line goes.
    victim = f"{lease_dir}-victim"
    backend, _ = _backend(sim_jetson, sim_project, 30)
    try:
        made = backend.connect().run(f"mkdir -m 777 {lease_dir} && echo precious > {victim}")
        assert made.ok, made.stderr
        planted = _on_board(sim_rig, f"ln -s {victim} {lease_dir}/lease.holder")
        assert planted.returncode == 0, planted.stderr
        with pytest.raises(TargetUnhealthyError) as info:
            _lease(backend, lease_dir).wait()
        assert f"{lease_dir}/lease.holder is not a plain file (a link to {victim}" \
            in str(info.value)
        state = _on_board(sim_rig, f"cat {victim}; stat -c '%F %a' {lease_dir} "
                                   f"{lease_dir}/lease.holder", uid=0)
        assert state.stdout.splitlines() == ["precious", "directory 700", "symbolic link 777"]
        # Once the link is gone (the user checked it), the lease works again.
        backend.connect().run(f"rm {lease_dir}/lease.holder")
        lease = _lease(backend, lease_dir)  # kept: a collected channel closes
        lease.wait()
        held, holder = read_holder(backend.connect(), lease_dir)
        assert held and holder is not None and holder.pid == os.getpid()
    finally:
        backend.close()


def test_a_provisioned_folder_is_shared_by_the_engine_group_only(
        sim_rig: Any, sim_jetson: Any, sim_project: Path, lease_dir: str) -> None:
    made = _on_board(sim_rig, f"install -d -m 2770 -o root -g docker {lease_dir}", uid=0)
    assert made.returncode == 0, made.stderr
    backend, _ = _backend(sim_jetson, sim_project, 30)
    try:
        _lease(backend, lease_dir).wait()
        state = _on_board(sim_rig, f"stat -c '%U:%G %a' {lease_dir} {lease_dir}/lease.holder; "
                                   f"flock -n {lease_dir} true || echo NO-LOCK", uid=0)
        assert state.stdout.splitlines()[:2] == ["root:docker 2770", "jetson:docker 640"]
        tried = _on_board(sim_rig, f"flock -n {lease_dir} true || echo NO-LOCK")
        assert "NO-LOCK" in tried.stdout, tried
        # Opened to others, the same folder is refused rather than trusted.
        _on_board(sim_rig, f"chmod 2775 {lease_dir}", uid=0)
        backend.close()
        with pytest.raises(TargetUnhealthyError, match="belongs to root:docker"):
            _lease(backend, lease_dir).wait()
    finally:
        backend.close()


def test_a_hold_receives_the_lease_and_a_waiting_session_is_told_whose(
        sim_rig: Any, sim_jetson: Any, sim_project: Path, lease_dir: str) -> None:
    name = f"hil-hold-test-{os.getpid()}"
    first, _ = _backend(sim_jetson, sim_project, 30)
    second, _ = _backend(sim_jetson, sim_project, 30)
    seen: list[Holder] = []
    try:
        conn = first.connect()
        lease = _lease(first, lease_dir)
        lease.wait()
        waiting = _lease(second, lease_dir, timeout=4, on_wait=seen.append).start()
        started = conn.run(f"docker run -d --rm --name {name} {BASE_IMAGE} sleep 600")
        assert started.ok, started.stderr
        lease.keep(name, 600, replace(Holder.me("sim-jetson"), hold="t.py::test_x"))
        first.close()  # the session is gone: the keeper holds the lease, never let go
        with pytest.raises(DeviceBusyError, match=r"\(hold: t\.py::test_x\)"):
            waiting.wait()  # it waited across the handover and never got the lease
        with pytest.raises(DeviceBusyError):
            _lease(second, lease_dir, timeout=1, on_wait=seen.append).wait()
        assert seen[-1].describe().endswith(" (hold: t.py::test_x)")
        held, holder = read_holder(second.connect(), lease_dir)
        assert held and holder is not None and holder.hold == "t.py::test_x"
        # The container goes: its keeper lets go of the lease.
        second.connect().run(f"docker rm -f {name}")
        _lease(second, lease_dir, timeout=30).wait()
    finally:
        second.connect().run(f"docker rm -f {name}")
        second.close()
        first.close()


# -- hil release -----------------------------------------------------------------------------

#: The local user `hil release` runs as in these tests: holds of other sessions on the
#: shared rig (all root@this-host) are never theirs.
RELEASER = f"hil-test-{os.getpid()}"


def _release(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hil.cli", "release", *args], cwd=project,
                          capture_output=True, text=True, timeout=180, check=False,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent),
                               "LOGNAME": RELEASER, "USER": RELEASER})


def test_hil_release_frees_only_your_holds_unless_all(sim_jetson: Any,
                                                      sim_project: Path) -> None:
    from hil.session.hold import HOLD_LABEL, OWNER_LABEL

    backend, _ = _backend(sim_jetson, sim_project, 30)
    mine, theirs = f"hil-hold-mine-{os.getpid()}", f"hil-hold-theirs-{os.getpid()}"
    try:
        conn = backend.connect()
        me = replace(Holder.me(), user=RELEASER).owner
        for name, owner in ((mine, me), (theirs, "alice@laptop")):
            started = conn.run(f"docker run -d --rm --name {name} --label {HOLD_LABEL}=t "
                               f"--label {OWNER_LABEL}={owner} {BASE_IMAGE} sleep 600")
            assert started.ok, started.stderr
        res = _release(sim_project, "--target", "sim-jetson")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "hil release: board hil-sim-jetson: released 1 (1 of other holders left;" \
            in res.stdout
        left = conn.run(f"docker ps -a --format '{{{{.Names}}}}' --filter label={HOLD_LABEL}")
        assert theirs in left.stdout.split() and mine not in left.stdout.split()
        res = _release(sim_project, "--target", "sim-jetson", "--all")
        assert "released " in res.stdout and res.returncode == 0
        left = conn.run(f"docker ps -a --format '{{{{.Names}}}}' --filter label={HOLD_LABEL}")
        assert theirs not in left.stdout.split()
    finally:
        backend.connect().run(f"docker rm -f {mine} {theirs}")
        backend.close()


def test_hil_release_tries_every_board_and_names_the_missing_ones(sim_rig: Any,
                                                                  sim_project: Path) -> None:
    toml = (sim_project / "targets" / "sim-jetson.toml").read_text(encoding="utf-8")
    (sim_project / "targets" / "gone-pool.toml").write_text(
        toml.replace('name = "sim-jetson"', 'name = "gone-pool"').replace(
            'host = "hil-sim-jetson"',
            'hosts = ["hil-sim-gone-1", "hil-sim-jetson", "hil-sim-gone-2"]'), encoding="utf-8")
    res = _release(sim_project, "--target", "gone-pool")
    assert res.returncode == ExitCode.UNREACHABLE, res.stdout + res.stderr
    assert "hil release: board hil-sim-jetson: released" in res.stdout
    assert ("2 of 3 boards of 'gone-pool' not reached, their holds are left: "
            "hil-sim-gone-1, hil-sim-gone-2") in res.stdout
    assert "target 'hil-sim-gone" not in res.stdout + res.stderr
