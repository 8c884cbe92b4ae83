"""A newcomer's first commands: ``hil init``, ``hil doctor NAME``, ``hil run -k ... -x``,
and an inventory with one bad file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hil.errors import ExitCode

REPO = Path(__file__).resolve().parent.parent


def hil(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "hil.cli", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=300, check=False,
                          stdin=subprocess.DEVNULL)


def project(root: Path) -> Path:
    """A checkout with a compose harness (file and service) and two suites."""
    (root / "suites").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\n', encoding="utf-8")
    (root / "compose.yml").write_text("services:\n  runner:\n    build: .\n", encoding="utf-8")
    (root / "suites" / "test_a.py").write_text(
        "def test_onnx_loads():\n    pass\n\ndef test_onnx_fails():\n    assert False\n\n"
        "def test_other():\n    pass\n", encoding="utf-8")
    return root


def test_init_writes_a_target_the_doctor_accepts_and_never_overwrites(sim_rig: Any,
                                                                       tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    args = ("init", "orin", "--ssh", sim_rig.ssh_alias, "--ssh-config", str(sim_rig.ssh_config),
            "--compose", "compose.yml", "--service", "runner", "--tier", "1",
            "--remote-dir", f"hil-tests/{tmp_path.name}")
    done = hil(*args, cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    written = root / "targets" / "orin.toml"
    text = written.read_text(encoding="utf-8")
    assert 'host = "hil-sim-jetson"' in text and 'service = "runner"' in text
    assert "dockerfile" not in text  # the compose service builds its own image
    assert "target 'orin' is ready" in done.stdout
    again = hil("doctor", "orin", cwd=root)
    assert again.returncode == 0, again.stdout + again.stderr
    refused = hil(*args, cwd=root)
    assert refused.returncode == ExitCode.USAGE_ERROR
    assert "orin.toml exists: hil init never overwrites a target" in refused.stderr
    assert written.read_text(encoding="utf-8") == text


def test_init_names_a_missing_ssh_alias_and_writes_nothing(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    config = tmp_path / "ssh_config"
    config.write_text("Host orin-lab\n    HostName 192.0.2.7\n", encoding="utf-8")
    done = hil("init", "orin", "--ssh", "orin", "--ssh-config", str(config), "--compose",
               "compose.yml", "--service", "runner", "--tier", "2", cwd=root)
    assert done.returncode == ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert f"no Host 'orin' in {config}" in done.stderr and "orin-lab" in done.stderr
    assert not (root / "targets").exists()


def test_init_refuses_a_service_the_compose_file_lacks(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    done = hil("init", "box", "--docker", "--compose", "compose.yml", "--service", "tests",
               "--tier", "1", cwd=root)
    assert done.returncode == ExitCode.USAGE_ERROR
    assert "compose.yml has no service 'tests'" in done.stderr


def test_doctor_takes_the_target_by_name_or_from_hil_target(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    by_name = hil("doctor", "local", cwd=root)
    assert by_name.returncode == 0 and "target 'local' is ready" in by_name.stdout
    from_env = hil("doctor", cwd=root, env={"HIL_TARGET": "no-such-target"})
    assert from_env.returncode == ExitCode.USAGE_ERROR
    assert "unknown target 'no-such-target'" in from_env.stderr


def test_hil_run_hands_unknown_arguments_to_pytest_in_order(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    done = hil("run", "-k", "onnx", "-x", "-p", "no:cacheprovider", cwd=root)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "1 failed, 1 passed, 1 deselected" in out  # -x: stopped at the first failure


def test_one_bad_target_file_fails_only_its_own_target(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    (root / "targets").mkdir()
    (root / "targets" / "bad.toml").write_text('kind = "ssh\n', encoding="utf-8")
    good = subprocess.run([sys.executable, "-m", "pytest", "--target=local", "-p",
                           "no:cacheprovider", "-k", "other", "suites"], cwd=root,
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert good.returncode == 0, good.stdout + good.stderr
    bad = subprocess.run([sys.executable, "-m", "pytest", "--target=bad", "-p",
                          "no:cacheprovider", "suites"], cwd=root, capture_output=True,
                         text=True, timeout=300, check=False,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert bad.returncode == ExitCode.USAGE_ERROR
    assert "targets/bad.toml: TOML syntax error" in bad.stdout + bad.stderr


def _pytest_target(root: Path, target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", f"--target={target}", "-p",
                           "no:cacheprovider", "suites"], cwd=root, capture_output=True,
                          text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_missing_ssh_alias_is_named_with_its_config_file(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    config = tmp_path / "ssh_config"
    config.write_text("Host lab-orin\n    HostName 192.0.2.7\n", encoding="utf-8")
    (root / "targets").mkdir()
    (root / "targets" / "orin.toml").write_text(
        f'kind = "ssh"\ntier = 1\n[ssh]\nhost = "no-such-board"\nconfig = "{config}"\n'
        'remote_dir = "hil/demo"\n', encoding="utf-8")
    done = _pytest_target(root, "orin")
    out = done.stdout + done.stderr
    assert done.returncode == ExitCode.UNREACHABLE, out[-3000:]
    assert f"no Host 'no-such-board' in {config}" in out and "lab-orin" in out


def test_engine_faults_read_as_words(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    (root / "targets").mkdir()
    (root / "targets" / "tcp.toml").write_text(
        'kind = "docker"\ntier = 1\n[docker]\nengine = "tcp://127.0.0.1:1"\n', encoding="utf-8")
    (root / "targets" / "ctx.toml").write_text(
        'kind = "docker"\ntier = 1\n[docker]\ncontext = "no-such-context"\n', encoding="utf-8")
    tcp = _pytest_target(root, "tcp")
    out = tcp.stdout + tcp.stderr
    assert tcp.returncode == ExitCode.ENGINE_DOWN, out[-3000:]
    assert "tcp://127.0.0.1:1 (the target's docker.engine: Connection refused)" in out
    ctx = _pytest_target(root, "ctx")
    out = ctx.stdout + ctx.stderr
    assert ctx.returncode == ExitCode.USAGE_ERROR, out[-3000:]
    assert "targets/ctx.toml: key 'docker.context' names 'no-such-context', which is not a " \
           "docker context here" in out


def test_auto_leaves_out_what_it_cannot_reach_and_says_so(sim_rig: Any, tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    (root / "targets").mkdir()
    config = tmp_path / "ssh_config"
    config.write_text("Host lab-orin\n    HostName 192.0.2.7\n", encoding="utf-8")
    (root / "targets" / "laptop.toml").write_text(
        'kind = "docker"\ntier = 1\n[docker]\nengine = "unix:///nonexistent/docker.sock"\n',
        encoding="utf-8")
    (root / "targets" / "orin.toml").write_text(
        f'kind = "ssh"\ntier = 2\n[ssh]\nhost = "no-such-board"\nconfig = "{config}"\n'
        'remote_dir = "hil/demo"\n', encoding="utf-8")
    (root / "targets" / "sim.toml").write_text(
        f'kind = "docker"\ntier = 1\n[docker]\nengine = "{sim_rig.colima_host}"\n',
        encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "pytest", "--target=auto", "--hil-plan",
                           "-p", "no:cacheprovider", "suites"], cwd=root, capture_output=True,
                          text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "hil routing: left out laptop: no Docker engine socket here " \
           "(unix:///nonexistent/docker.sock); orin: no Host 'no-such-board'" in out
    assert "routing tier1 -> sim, tier2 -> sim, tier3 -> sim" in out
