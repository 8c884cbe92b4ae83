"""The jetson target (SshBackend) against the simulated board: connection, preflight,
build, run, faults and fetch.  Every test talks to the real sshd, rsync and engine."""

from __future__ import annotations

import dataclasses
import io
import json
import shlex
import threading
import time
from pathlib import Path
from typing import Any

import paramiko
import pytest

from conftest import IMAGE_REQUIREMENTS
from hil.backends.base import CONTAINER_LABEL, RunPlan
from hil.backends.jetson.backend import SshBackend
from hil.backends.jetson.facts import jetpack_of, l4t_of_image
from hil.errors import (
    AuthRefusedError,
    BuildFailedError,
    ConfigError,
    DiskLowError,
    EngineDownError,
    ExitCode,
    HostKeyError,
    RunLostError,
    RunTimedOutError,
    RuntimeMissingError,
    TargetUnhealthyError,
    UnreachableError,
)
from hil.progress import Progress
from hil.ssh.connection import SshConnection, fingerprint, resolve_endpoint


def _backend(spec: Any, root: Path, **kw: Any) -> tuple[SshBackend, io.StringIO]:
    out = io.StringIO()
    return SshBackend(spec, root, Progress(out), **kw), out


def _plan(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> RunPlan:
    run_id = f"t{time.time_ns() % 10**12}"
    return RunPlan(run_id=run_id, pytest_args=args, subdir="",
                   env={"HIL_TARGET": "sim-jetson", "HIL_TIER": "1", **(env or {})},
                   local_out=tmp_path / "out" / run_id)


def _events(chunks: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in b"".join(chunks).splitlines() if line.strip()]


def _outcomes(events: list[dict[str, Any]]) -> dict[str, str]:
    return {e["report"]["nodeid"].split("::")[-1]: e["report"]["outcome"]
            for e in events if e["ev"] == "logreport" and e["report"]["when"] == "call"}


def _containers(conn: SshConnection, run_id: str) -> list[str]:
    res = conn.run(f"docker ps -aq --filter label={CONTAINER_LABEL}={shlex.quote(run_id)}")
    assert res.ok, res.tail()
    return res.stdout.split()


def _containers_after(conn: SshConnection, run_id: str, within: float = 30.0) -> list[str]:
    """The run's containers once they are gone, or what is left after ``within`` seconds:
    a run that ends normally has its container removed in the background, off the
    session's path."""
    deadline = time.monotonic() + within
    while (left := _containers(conn, run_id)) and time.monotonic() < deadline:
        time.sleep(0.2)  # poll interval
    return left


def _ssh_files(tmp_path: Path, spec: Any, **overrides: str) -> Path:
    """A copy of the rig's ssh_config with some options of the board alias's block replaced.

    The rig's file holds a block per board (the pool's too): only the block of
    ``spec.ssh.host`` changes, so the overrides apply to that alias alone.
    """
    text = Path(spec.ssh.config).read_text(encoding="utf-8")
    lines: list[str] = []
    in_block = False
    for line in text.splitlines():
        words = line.strip().split()
        if words and words[0].lower() in ("host", "match"):
            if in_block:
                lines += [f"    {k} {v}" for k, v in overrides.items()]
            in_block = words[0].lower() == "host" and spec.ssh.host in words[1:]
        elif in_block and words and words[0] in overrides:
            continue
        lines.append(line)
    if in_block:
        lines += [f"    {k} {v}" for k, v in overrides.items()]
    path = tmp_path / "ssh_config"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _with(spec: Any, **changes: Any) -> Any:
    sections = {}
    for name in ("ssh", "docker", "preflight", "timeouts"):
        sub = {k.split("__", 1)[1]: v for k, v in changes.items() if k.startswith(name + "__")}
        if sub:
            sections[name] = dataclasses.replace(getattr(spec, name), **sub)
    top = {k: v for k, v in changes.items() if "__" not in k}
    return dataclasses.replace(spec, **sections, **top)


# -- pure helpers ------------------------------------------------------------------------

@pytest.mark.parametrize(("image", "l4t"), [
    ("nvcr.io/nvidia/l4t-pytorch:r36.4.0-pth2.5-py3", "36.4.0"),
    ("hil-sim/l4t-base:r36.4.3", "36.4.3"),
    ("nvcr.io/nvidia/l4t-base:r35.4.1", "35.4.1"),
    ("python:3.11-slim-bookworm", ""),
    ("registry:5000/r36/img:latest", ""),
])
def test_l4t_version_is_read_from_the_base_image_tag(image: str, l4t: str) -> None:
    assert l4t_of_image(image) == l4t


@pytest.mark.parametrize(("release", "expected"), [
    ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64",
     ("36.4.3", "6.2")),
    ("# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic, EABI: aarch64", ("36.4.0", "6.1")),
    ("# R36 (release), REVISION: 3.0, GCID: 1, BOARD: generic, EABI: aarch64", ("36.3.0", "6.0")),
    ("not a release line", ("", "")),
])
def test_jetpack_is_derived_from_nv_tegra_release(release: str, expected: tuple[str, str]) -> None:
    assert jetpack_of(release) == expected


def test_ssh_config_alias_is_resolved(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.write_text("Host board\n  HostName 192.0.2.7\n  User nv\n  Port 2222\n"
                   "  IdentityFile ~/keys/id_board\n  ProxyJump bastion\n"
                   "  UserKnownHostsFile ~/kh\n  ServerAliveInterval 2\n", encoding="utf-8")
    ep = resolve_endpoint("board", config_file=str(cfg))
    assert (ep.hostname, ep.user, ep.port, ep.proxy_jump) == ("192.0.2.7", "nv", 2222, "bastion")
    assert ep.identity_files == (str(Path("~/keys/id_board").expanduser()),)
    assert ep.known_hosts == (str(Path("~/kh").expanduser()),)
    assert ep.key_name == "[192.0.2.7]:2222" and ep.alive_interval == 2.0
    assert resolve_endpoint("root@board:22", config_file=str(cfg)).user == "root"


# -- connection faults -------------------------------------------------------------------

def _board_key(sim_rig: Any) -> paramiko.PKey:
    line = Path(sim_rig.known_hosts).read_text(encoding="utf-8").split()
    return paramiko.PKey.from_type_string(line[1], __import__("base64").b64decode(line[2]))


def test_unknown_host_is_refused_with_its_fingerprint(sim_rig: Any, sim_jetson: Any,
                                                     sim_project: Path, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("", encoding="utf-8")
    cfg = _ssh_files(tmp_path, sim_jetson, UserKnownHostsFile=str(empty))
    backend, _ = _backend(_with(sim_jetson, ssh__config=str(cfg)), sim_project)
    with pytest.raises(HostKeyError) as info:
        backend.preflight()
    err = info.value
    assert err.exit_code == ExitCode.HOST_KEY_REJECTED
    assert "unknown" in str(err) and fingerprint(_board_key(sim_rig)) in str(err)
    assert f"ssh-keyscan -t ed25519 {sim_rig.board_address} >> {empty}" in str(err)
    assert empty.read_text(encoding="utf-8") == ""  # never added silently


def test_changed_host_key_is_refused_loudly(sim_rig: Any, sim_jetson: Any, sim_project: Path,
                                            tmp_path: Path) -> None:
    fake = tmp_path / "fake_key"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(fake)], check=True)
    pub = (tmp_path / "fake_key.pub").read_text(encoding="utf-8").split()
    known = tmp_path / "known_hosts"
    known.write_text(f"{sim_rig.board_address} {pub[0]} {pub[1]}\n", encoding="utf-8")
    cfg = _ssh_files(tmp_path, sim_jetson, UserKnownHostsFile=str(known))
    backend, _ = _backend(_with(sim_jetson, ssh__config=str(cfg)), sim_project)
    with pytest.raises(HostKeyError) as info:
        backend.preflight()
    text = str(info.value)
    assert "HAS CHANGED" in text
    assert fingerprint(_board_key(sim_rig)) in text
    assert "ssh-keygen -R" in text
    assert info.value.exit_code == ExitCode.HOST_KEY_REJECTED


def test_wrong_key_is_auth_refused(sim_jetson: Any, sim_project: Path, tmp_path: Path) -> None:
    import subprocess

    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cfg = _ssh_files(tmp_path, sim_jetson, IdentityFile=str(key))
    backend, _ = _backend(_with(sim_jetson, ssh__config=str(cfg)), sim_project)
    with pytest.raises(AuthRefusedError) as info:
        backend.preflight()
    assert info.value.exit_code == ExitCode.AUTH_REFUSED
    assert str(key) in str(info.value) and "user 'jetson'" in str(info.value)


def test_closed_port_is_unreachable(sim_jetson: Any, sim_project: Path) -> None:
    backend, _ = _backend(_with(sim_jetson, ssh__port=2), sim_project)
    with pytest.raises(UnreachableError) as info:
        backend.preflight()
    assert info.value.exit_code == ExitCode.UNREACHABLE
    assert "refused" in str(info.value).lower()


def test_stopped_sshd_is_unreachable(sim_rig: Any, sim_jetson: Any, sim_project: Path) -> None:
    backend, _ = _backend(sim_jetson, sim_project)
    with sim_rig.sshd_stopped(), pytest.raises(UnreachableError):
        backend.preflight()


def test_proxy_jump_is_honoured(sim_rig: Any, sim_jetson: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "ssh_config"
    cfg.write_text(Path(sim_jetson.ssh.config).read_text(encoding="utf-8")
                   + f"\nHost via-jump\n    HostName {sim_rig.board_address}\n"
                   "    ProxyJump hil-sim-jetson\n"
                   f"    User {sim_rig.user}\n    IdentityFile {sim_rig.state_dir}/ssh/id_ed25519\n"
                   f"    UserKnownHostsFile {sim_rig.known_hosts}\n", encoding="utf-8")
    conn = SshConnection(resolve_endpoint("via-jump", config_file=str(cfg))).open()
    try:
        res = conn.run("echo $SSH_CONNECTION")
        # The second hop came from the board itself, not from this host.
        assert res.ok and res.stdout.split()[0] == sim_rig.board_address
    finally:
        conn.close()


# -- preflight ---------------------------------------------------------------------------

def test_preflight_reports_the_board(sim_jetson: Any, sim_project: Path, tmp_path: Path) -> None:
    first, _ = _backend(sim_jetson, sim_project)
    try:
        tag = first.prepare(_plan(tmp_path))  # the image and the worker on the board
    finally:
        first.close()
    backend, _ = _backend(sim_jetson, sim_project)
    try:
        report = backend.preflight()
    finally:
        backend.close()
    assert report.ok
    facts = report.facts
    assert (facts["l4t"], facts["jetpack"]) == ("36.4.3", "6.2")
    assert "nvidia" in facts["runtimes"].split(",")
    assert facts["board.hostname"] and facts["docker.version"]
    assert int(facts["docker.free_mb"]) > 0
    gpu = next(c for c in report.checks if c.name == "gpu")
    # The worker's probe ran inside the dependencies image (no GPU on the rig).
    assert f"inside {tag}" in gpu.detail, gpu.detail
    assert "onnxruntime providers that load: CPUExecutionProvider" in gpu.detail
    assert "declared capabilities hold" in gpu.detail
    assert report.facts["cuda"] == "not usable"


@pytest.mark.parametrize(("changes", "error", "code", "words"), [
    ({"docker__runtime": "nvidia-gone"}, RuntimeMissingError, ExitCode.NVIDIA_RUNTIME_MISSING,
     "no 'nvidia-gone' runtime"),
    ({"preflight__min_free_mb": 10**9}, DiskLowError, ExitCode.DISK_LOW, "MB free"),
    ({"docker__build_args": {"BASE_IMAGE": "nvcr.io/nvidia/l4t-base:r35.4.1"}},
     TargetUnhealthyError, ExitCode.TARGET_UNHEALTHY, "L4T 36.4.3 but the base image"),
    ({"ssh__remote_dir": "~"}, ConfigError, ExitCode.USAGE_ERROR, "home folder itself"),
])
def test_preflight_failure_raises_its_own_error(sim_jetson: Any, sim_project: Path,
                                                changes: dict[str, Any], error: type,
                                                code: ExitCode, words: str) -> None:
    backend, _ = _backend(_with(sim_jetson, **changes), sim_project)
    try:
        with pytest.raises(error) as info:
            backend.preflight()
    finally:
        backend.close()
    assert info.value.exit_code == code
    assert words in str(info.value)
    assert "preflight of target" in info.value.tail  # the whole table comes along


def test_tier2_without_cuda_in_the_present_image_is_unhealthy_at_preflight(
        sim_jetson: Any, sim_project: Path, tmp_path: Path) -> None:
    first, _ = _backend(sim_jetson, sim_project)
    try:
        tag = first.prepare(_plan(tmp_path))  # the image and the worker on the board
    finally:
        first.close()
    backend, _ = _backend(_with(sim_jetson, tier=2), sim_project)
    try:
        with pytest.raises(TargetUnhealthyError) as info:
            backend.preflight()
    finally:
        backend.close()
    assert info.value.exit_code == ExitCode.TARGET_UNHEALTHY
    # The probe's own words: torch and the onnxruntime providers inside the image.
    assert f"declares tier 2 (CUDA GPU) but torch is not installed inside {tag}" in str(info.value)
    assert "onnxruntime providers that load: CPUExecutionProvider" in str(info.value)
    assert "preflight of target" in info.value.tail


def test_tier2_without_cuda_is_unhealthy_right_after_the_build(sim_jetson: Any,
                                                                 sim_project: Path,
                                                                 tmp_path: Path) -> None:
    # A Dockerfile of its own: the image is absent, so preflight cannot probe it.
    dockerfile = sim_project / "targets" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text(encoding="utf-8") +
                          f"LABEL io.pytest-hil.test={tmp_path.name}-{time.time_ns()}\n",
                          encoding="utf-8")
    backend, _ = _backend(_with(sim_jetson, tier=2), sim_project)
    tag = ""
    try:
        report = backend.inspect()
        assert "runs after the build" in next(c for c in report.checks if c.name == "gpu").detail
        assert backend.recipe is not None
        tag = backend.recipe.tag
        with pytest.raises(TargetUnhealthyError) as info:
            backend.prepare(_plan(tmp_path))
        assert backend.build_log  # built in this session, then probed
    finally:
        if tag:
            backend.connect().run(f"docker rmi -f {shlex.quote(tag)}")
        backend.close()
    assert info.value.exit_code == ExitCode.TARGET_UNHEALTHY
    assert f"torch is not installed inside {tag}" in str(info.value)
    assert "FAIL gpu" in info.value.tail  # the table carries the probe's row


def test_swap_required_but_absent_is_unhealthy(sim_jetson: Any, sim_project: Path) -> None:
    backend, _ = _backend(_with(sim_jetson, preflight__require_swap=True), sim_project)
    try:
        report = backend.inspect()
        swap = int(report.facts["swap_mb"])
        if swap:
            assert report.ok
        else:
            with pytest.raises(TargetUnhealthyError, match="no swap"):
                backend.preflight()
    finally:
        backend.close()


def test_remote_dir_through_a_symlink_out_of_home_is_refused(sim_jetson: Any,
                                                              sim_project: Path) -> None:
    base = sim_jetson.ssh.remote_dir.rsplit("/", 1)[0]
    backend, _ = _backend(_with(sim_jetson, ssh__remote_dir=f"{base}/escape/p"), sim_project)
    conn = backend.connect()
    conn.run(f"mkdir -p {shlex.quote(base)} && ln -sfn /var {shlex.quote(base)}/escape")
    try:
        with pytest.raises(ConfigError, match="outside the home folder"):
            backend.preflight()
    finally:
        conn.run(f"rm -rf {shlex.quote(base)}")
        backend.close()


def test_stopped_engine_is_engine_down(sim_rig: Any, sim_jetson: Any, sim_project: Path) -> None:
    backend, _ = _backend(sim_jetson, sim_project)
    try:
        with sim_rig.jetson_engine_stopped(), pytest.raises(EngineDownError) as info:
            backend.preflight()
    finally:
        backend.close()
    assert info.value.exit_code == ExitCode.ENGINE_DOWN
    # The engine's own words, not the empty fields of docker info's --format.
    assert "Cannot connect to the Docker daemon" in info.value.tail
    assert "|" not in info.value.tail


# -- build, run, fetch -------------------------------------------------------------------

def test_run_streams_reports_and_fetches_results(sim_jetson: Any, sim_project: Path,
                                                 tmp_path: Path) -> None:
    backend, out = _backend(sim_jetson, sim_project)
    plan = _plan(tmp_path, "tests/test_fast.py")
    chunks: list[bytes] = []
    try:
        backend.preflight()
        image = backend.prepare(plan)
        end = backend.run(plan, image, chunks.append, lambda b: None)
        backend.fetch(plan)
        leftover = _containers_after(backend.connect(), plan.run_id)
    finally:
        backend.close()
    assert end.exit_code == 1 and not end.oom_killed
    events = _events(chunks)
    assert events[0]["ev"] == "hello"
    assert _outcomes(events) == {"test_passes": "passed", "test_fails": "failed"}
    assert (plan.local_out / "events.jsonl").is_file()
    assert "test_fails" in (plan.local_out / "pytest.log").read_text(encoding="utf-8")
    samples = [json.loads(x) for x in (plan.local_out / "telemetry.jsonl").read_text(
        encoding="utf-8").splitlines()]
    assert samples and all("t" in s for s in samples)
    assert "ram_used_mb" in samples[0]
    assert leftover == []
    assert "synced to sim-jetson" in out.getvalue()


def test_present_image_is_not_rebuilt(sim_jetson: Any, sim_project: Path, tmp_path: Path) -> None:
    first, _ = _backend(sim_jetson, sim_project)
    try:
        tag = first.prepare(_plan(tmp_path))
    finally:
        first.close()
    second, out = _backend(sim_jetson, sim_project)
    plan = _plan(tmp_path / "second")
    try:
        assert second.prepare(plan) == tag
    finally:
        second.close()
    assert second.build_log == [] and "build" not in second.timings
    assert not (plan.local_out / "build.log").exists()
    assert "up to date on the board" in out.getvalue()
    # Waiting for the lease, the sync and the image are steps of their own.
    assert {"lease", "sync", "image"} <= set(second.timings)


def test_broken_dockerfile_fails_the_build_with_its_last_lines(sim_jetson: Any,
                                                               sim_project: Path,
                                                               tmp_path: Path) -> None:
    (sim_project / "targets" / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
        f"RUN echo 'broken-step: no such package {time.time_ns()}' && exit 3\n",
        encoding="utf-8")
    backend, _ = _backend(sim_jetson, sim_project)
    plan = _plan(tmp_path)
    try:
        with pytest.raises(BuildFailedError) as info:
            backend.prepare(plan)
    finally:
        backend.close()
    err = info.value
    assert err.exit_code == ExitCode.IMAGE_BUILD_FAILED
    assert "broken-step: no such package" in err.tail
    assert err.exited not in (0, None)
    assert any("broken-step" in line for line in backend.build_log)
    # The whole log is in the run folder, as on a docker target.
    assert "broken-step: no such package" in (plan.local_out / "build.log").read_text(
        encoding="utf-8")


def test_run_past_its_timeout_is_killed_and_removed(sim_jetson: Any, sim_project: Path,
                                                    tmp_path: Path) -> None:
    spec = _with(sim_jetson, timeouts__run=6.0)
    backend, _ = _backend(spec, sim_project)
    plan = _plan(tmp_path, "tests/test_slow.py", env={"HIL_SLOW": "120"})
    try:
        image = backend.prepare(plan)
        start = time.monotonic()
        with pytest.raises(RunTimedOutError) as info:
            backend.run(plan, image, lambda b: None, lambda b: None)
        assert time.monotonic() - start < 30
        assert info.value.exit_code == ExitCode.RUN_TIMED_OUT
        assert _containers(backend.connect(), plan.run_id) == []
    finally:
        backend.close()


def test_link_cut_mid_run_is_run_lost_and_fetch_keeps_finished_results(
        sim_rig: Any, sim_jetson: Any, sim_project: Path, tmp_path: Path) -> None:
    backend, _ = _backend(sim_jetson, sim_project)
    plan = _plan(tmp_path, "tests/test_fast.py::test_passes", "tests/test_slow.py",
                 env={"HIL_SLOW": "90"})
    chunks: list[bytes] = []
    cut = threading.Event()

    def on_stdout(data: bytes) -> None:
        chunks.append(data)
        # Cut once test_slow has started: decode whole lines, since one chunk may also
        # carry collection_finish (which names test_slow) before test_passes has run.
        started = any(e["ev"] == "logstart" and "test_slow" in e["nodeid"]
                      for e in _events([b"".join(chunks).rpartition(b"\n")[0]]))
        if started and not cut.is_set():
            cut.set()
            sim_rig.cut_link()

    try:
        image = backend.prepare(plan)
        start = time.monotonic()
        try:
            with pytest.raises(RunLostError) as info:
                backend.run(plan, image, on_stdout, lambda b: None)
        finally:
            if cut.is_set():
                sim_rig.restore_link()
        assert cut.is_set()
        assert time.monotonic() - start < 60
        assert info.value.exit_code == ExitCode.RUN_LOST
        assert "connection to the board lost" in str(info.value)
        backend.stop()
        backend.fetch(plan)
        assert _containers_after(backend.connect(), plan.run_id) == []
    finally:
        backend.close()
    assert _outcomes(_events(chunks)) == {"test_passes": "passed"}
    log = (plan.local_out / "pytest.log").read_text(encoding="utf-8")
    assert "test_fast.py ." in log or "test_fast.py::test_passes PASSED" in log


# -- end to end: pytest --target=sim-jetson ------------------------------------------------

def _e2e_project(pytester: pytest.Pytester, spec: Any, env: str = "", memory: str = "") -> Path:
    import subprocess

    root = pytester.path
    repo = Path(__file__).resolve().parent.parent
    for rel in ("targets/Dockerfile", *IMAGE_REQUIREMENTS):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((repo / rel).read_bytes())
    toml = (repo / "targets" / "sim-jetson.toml").read_text(encoding="utf-8")
    toml = toml.replace('remote_dir = "hil/pytest-hil"', f'remote_dir = "{spec.ssh.remote_dir}"')
    toml = toml.replace("[env]\n", f"[env]\n{env}")
    toml = toml.replace('memory = ""', f'memory = "{memory}"')
    (root / "targets" / "sim-jetson.toml").write_text(toml, encoding="utf-8")
    (root / "tests").mkdir()
    (root / "tests" / "test_fast.py").write_text(
        "def test_passes():\n    assert True\n\n\ndef test_fails():\n    assert 1 + 1 == 3\n",
        encoding="utf-8")
    (root / "tests" / "test_slow.py").write_text(
        "import os\nimport time\n\n\ndef test_slow():\n"
        "    open(os.path.join(os.environ['HIL_OUT'], 'slow-started'), 'w').close()\n"
        "    time.sleep(float(os.environ.get('HIL_SLOW', '0')))\n", encoding="utf-8")
    (root / "tests" / "test_hog.py").write_text(
        "def test_hog():\n    blocks = []\n    for _ in range(64):\n"
        "        blocks.append(bytearray(16 * 1024 * 1024))\n", encoding="utf-8")
    (root / ".gitignore").write_text("reports/\n", encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    return root


def test_e2e_session_outcomes_and_exit_codes(pytester: pytest.Pytester, sim_jetson: Any) -> None:
    _e2e_project(pytester, sim_jetson)
    green = pytester.runpytest_subprocess("--target=sim-jetson", "tests/test_fast.py::test_passes")
    assert green.ret == 0, green.stdout.str()
    green.assert_outcomes(passed=1)
    red = pytester.runpytest_subprocess("--target=sim-jetson", "tests/test_fast.py", "-rf")
    assert red.ret == 1, red.stdout.str()
    red.assert_outcomes(passed=1, failed=1)
    red.stdout.fnmatch_lines(["*FAILED tests/test_fast.py::test_fails*assert*"])
    runs = sorted((pytester.path / "reports" / "runs").iterdir())
    assert (runs[-1] / "telemetry.jsonl").stat().st_size > 0
    assert json.loads((runs[-1] / "preflight.json").read_text(encoding="utf-8"))["ok"] is True


def test_e2e_link_cut_exits_run_lost_naming_the_test(pytester: pytest.Pytester, sim_rig: Any,
                                                     sim_jetson: Any) -> None:
    import subprocess
    import sys

    # Events held in the worker for 10 s: none of the tests' events cross the link before
    # the cut, so the test names and results come from the worker's record, fetched after
    # the link is back (with the default 20 ms, a cut right after a test starts is the same).
    root = _e2e_project(pytester, sim_jetson,
                        env='HIL_SLOW = "120"\nHIL_EVENT_INTERVAL_MS = "10000"\n')
    conn = SshConnection(resolve_endpoint(sim_jetson.ssh.host,
                                          config_file=sim_jetson.ssh.config)).open()
    outs = "$HOME/" + shlex.quote(sim_jetson.ssh.remote_dir.rsplit("/", 1)[0]) + "/.hil-out"
    # Markers of earlier runs would end the wait below before this run's slow test starts.
    assert conn.run(f"rm -f {outs}/*/slow-started").ok
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--target=sim-jetson", "-p", "no:cacheprovider",
         "tests/test_fast.py::test_passes", "tests/test_slow.py"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reconnecting = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "reconnecting to sim-jetson" in line:
                reconnecting.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    cut = False
    try:
        deadline = time.monotonic() + 120
        while not conn.run(f"ls {outs}/*/slow-started").ok:
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)  # poll interval
        conn.close()
        sim_rig.cut_link()
        cut = True
        assert reconnecting.wait(90), "".join(lines)
        sim_rig.restore_link()
        cut = False
        code = proc.wait(120)
    finally:
        if cut:
            sim_rig.restore_link()
        if proc.poll() is None:
            proc.kill()
        conn.close()
    reader.join(10)
    text = "".join(lines)
    assert code == int(ExitCode.RUN_LOST), text
    assert "connection to the board lost while running tests/test_slow.py::test_slow" in text
    assert "test_fast.py ." in text
    run = sorted((root / "reports" / "runs").iterdir())[-1]
    assert (run / "slow-started").exists()  # fetched after the link came back
    assert "test_fast.py" in (run / "pytest.log").read_text(encoding="utf-8")
    check = SshConnection(resolve_endpoint(sim_jetson.ssh.host,
                                           config_file=sim_jetson.ssh.config)).open()
    try:
        assert _containers_after(check, run.name) == []
    finally:
        check.close()


def _last_run_id(root: Path) -> str:
    return sorted((root / "reports" / "runs").iterdir())[-1].name


def test_e2e_interrupt_kills_the_board_run_and_keeps_partial_results(
        pytester: pytest.Pytester, sim_jetson: Any) -> None:
    import signal
    import subprocess
    import sys

    root = _e2e_project(pytester, sim_jetson, env='HIL_SLOW = "120"\n')
    conn = SshConnection(resolve_endpoint(sim_jetson.ssh.host,
                                          config_file=sim_jetson.ssh.config)).open()
    outs = "$HOME/" + shlex.quote(sim_jetson.ssh.remote_dir.rsplit("/", 1)[0]) + "/.hil-out"
    try:
        assert conn.run(f"rm -f {outs}/*/slow-started").ok
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "--target=sim-jetson", "-p", "no:cacheprovider",
             "tests/test_fast.py::test_passes", "tests/test_slow.py"],
            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 120
            while not conn.run(f"ls {outs}/*/slow-started").ok:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)  # poll interval
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 2, out
        assert "Interrupted" in out or "KeyboardInterrupt" in out, out
        # The board's process group was killed and the container removed.
        assert _containers(conn, _last_run_id(root)) == []
        run_dir = root / "reports" / "runs" / _last_run_id(root)
        events = (run_dir / "events.jsonl").read_text(encoding="utf-8")
        assert "tests/test_fast.py::test_passes" in events
    finally:
        conn.close()


def test_e2e_out_of_memory_on_the_board_is_run_lost_naming_the_test(
        pytester: pytest.Pytester, sim_jetson: Any) -> None:
    root = _e2e_project(pytester, sim_jetson, memory="48m")
    result = pytester.runpytest_subprocess("--target=sim-jetson", "tests/test_fast.py::test_passes",
                                           "tests/test_hog.py")
    assert result.ret == ExitCode.RUN_LOST, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines([
        "*infrastructure fault [[]run-lost[]] (exit 19): target 'sim-jetson': the test container "
        "was OOM-killed (memory limit 48m) while running tests/test_hog.py::test_hog"])
    result.stdout.fnmatch_lines(["*1 passed*"])
    conn = SshConnection(resolve_endpoint(sim_jetson.ssh.host,
                                          config_file=sim_jetson.ssh.config)).open()
    try:
        assert _containers_after(conn, _last_run_id(root)) == [], \
            "the OOM-killed container was not removed"
    finally:
        conn.close()
