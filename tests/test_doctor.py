"""``hil doctor``: a target's preflight as a table or JSON, with the session's exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _doctor(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hil.cli", "doctor", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)


def test_doctor_sim_jetson_json_lists_every_check(sim_rig: Any, sim_jetson: Any,
                                                  sim_project: Path, tmp_path: Path) -> None:
    import io

    from hil.backends.base import RunPlan
    from hil.backends.jetson.backend import SshBackend
    from hil.progress import Progress

    # The dependencies image (the repo's tag) and the worker on the board, as after a session.
    first = SshBackend(sim_jetson, sim_project, Progress(io.StringIO()))
    try:
        tag = first.prepare(RunPlan(run_id="doctor", pytest_args=(), subdir="", env={},
                                    local_out=tmp_path / "out"))
    finally:
        first.close()
    res = _doctor("--target", "sim-jetson", "--json", "--rootdir", str(REPO))
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(res.stdout)
    names = {c["name"] for c in data["checks"]}
    assert {"ssh", "remote dir", "engine", "runtime", "disk", "l4t", "gpu", "lease"} <= names
    assert data["ok"] is True and data["exit_code"] == 0
    assert data["facts"]["jetpack"] == "6.2"
    gpu = next(c for c in data["checks"] if c["name"] == "gpu")
    assert "cached" not in gpu["detail"]  # doctor always probes afresh
    # The probe's own result, from inside the dependencies image (the rig has no GPU).
    assert f"torch is not installed inside {tag}" in gpu["detail"]
    assert "onnxruntime providers that load: CPUExecutionProvider" in gpu["detail"]
    assert data["facts"]["cuda"] == "not usable"


def test_doctor_table_shows_every_failure_and_exits_with_the_first(sim_rig: Any,
                                                                    tmp_path: Path) -> None:
    text = (REPO / "targets" / "sim-jetson.toml").read_text(encoding="utf-8")
    text = text.replace('runtime = "nvidia"', 'runtime = "nvidia-gone"')
    text = text.replace("min_free_mb = 1024", "min_free_mb = 1000000000")
    (tmp_path / "sim-jetson.toml").write_text(text, encoding="utf-8")
    res = _doctor("--target", "sim-jetson", "--rootdir", str(REPO), "--hil-targets",
                  str(tmp_path))
    assert res.returncode == 14, res.stdout + res.stderr  # NVIDIA_RUNTIME_MISSING comes first
    lines = res.stdout.splitlines()
    assert any(line.strip().startswith("FAIL runtime") for line in lines)
    assert any(line.strip().startswith("FAIL disk") for line in lines)
    assert "not ready (exit 14: NVIDIA_RUNTIME_MISSING)" in res.stdout


def test_doctor_docker_target_delegates_to_its_backend(sim_rig: Any) -> None:
    res = _doctor("--target", "sim-colima", "--json", "--rootdir", str(REPO))
    data = json.loads(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert any(c["name"] == "engine" and c["ok"] for c in data["checks"])


def test_doctor_unreachable_board_exits_unreachable(sim_rig: Any, tmp_path: Path) -> None:
    text = (REPO / "targets" / "sim-jetson.toml").read_text(encoding="utf-8")
    (tmp_path / "sim-jetson.toml").write_text(text.replace("port = 0", "port = 2"),
                                              encoding="utf-8")
    res = _doctor("--target", "sim-jetson", "--rootdir", str(REPO), "--hil-targets",
                  str(tmp_path))
    assert res.returncode == 10
    assert "FAIL unreachable" in res.stdout


def test_doctor_local_target() -> None:
    res = _doctor("--target", "local", "--json", "--rootdir", str(REPO))
    assert res.returncode == 0
    assert json.loads(res.stdout)["checks"][0]["name"] == "tier"


def test_doctor_of_a_pool_checks_every_board(sim_rig: Any, tmp_path: Path) -> None:
    text = (REPO / "targets" / "sim-pool.toml").read_text(encoding="utf-8")
    boards = ["hil-sim-jetson-1", "hil-sim-jetson-3"]
    pool = text.replace('"hil-sim-jetson-2", ', "").replace('"hil-sim-jetson-3"]',
                                                             '"hil-sim-jetson-3", "hil-sim-nowhere"]')
    assert f"hosts = {json.dumps([*boards, 'hil-sim-nowhere'])}" in pool
    (tmp_path / "sim-pool.toml").write_text(pool, encoding="utf-8")
    res = _doctor("--target", "sim-pool", "--json", "--rootdir", str(REPO), "--hil-targets",
                  str(tmp_path))
    assert "Traceback" not in res.stderr, res.stderr
    data = json.loads(res.stdout)
    found = {b["target"]: b for b in data["boards"]}
    assert list(found) == [*boards, "hil-sim-nowhere"]
    for name in boards:
        assert any(c["name"] == "ssh" and c["ok"] for c in found[name]["checks"]), found[name]
        assert any(c["name"] == "engine" and c["ok"] for c in found[name]["checks"])
    assert found["hil-sim-nowhere"]["exit_code"] == 10  # UNREACHABLE
    # A pool session runs on the healthy boards: the pool is ready when one board is.
    assert res.returncode == data["exit_code"] == (0 if any(
        b["exit_code"] == 0 for b in data["boards"]) else found[boards[0]]["exit_code"])


def test_doctor_of_a_pool_with_no_board_ready_exits_with_the_first_code(sim_rig: Any,
                                                                        tmp_path: Path) -> None:
    text = (REPO / "targets" / "sim-pool.toml").read_text(encoding="utf-8")
    (tmp_path / "sim-pool.toml").write_text(text.replace("port = 0", "port = 2"),
                                            encoding="utf-8")
    res = _doctor("--target", "sim-pool", "--rootdir", str(REPO), "--hil-targets", str(tmp_path))
    assert res.returncode == 10, res.stdout + res.stderr
    assert res.stdout.count("FAIL unreachable") == 3
    assert "pool 'sim-pool' is not ready: no board is (exit 10: UNREACHABLE)" in res.stdout
