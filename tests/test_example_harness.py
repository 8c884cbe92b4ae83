"""A team's own compose harness runs unchanged: examples/gps-denied on both simulated targets.

The example is what a team has before pytest-hil: a runner service that builds its own
image (pytest only), a mock service with a healthcheck, its own conftest tier switch and
a script that runs ``docker compose up --exit-code-from``. Each test copies it into a
fresh git checkout and runs it both ways on the same engine (the board's Compose v2
plugin; the colima engine's standalone docker-compose 1.29.2): pytest-hil and the team's
own compose command must agree on every test's outcome and on the exit code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hil.errors import ExitCode
from hil.sim import Rig

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "gps-denied"
#: pytest-hil's target per engine, in the example's own targets/.
TARGETS = {"colima": "sim-colima", "board": "sim-jetson"}
FAILING = '''
def test_jammed_fix_is_trusted():
    from test_navigation import fetch
    assert fetch("/jammed")["satellites"] >= 4
'''


def copy_example(root: Path) -> Path:
    """The example as a fresh git checkout at ``root``."""
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("reports", "__pycache__"))
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    return root


def outcomes(text: str) -> dict[str, str]:
    """``{test id: PASSED|FAILED|SKIPPED...}`` from ``-rA`` lines (skips by their line only)."""
    found: dict[str, str] = {}
    for m in re.finditer(r"(PASSED|FAILED|ERROR) (tests/\S+)", text):
        found[m[2]] = m[1]
    return found


def counts(text: str) -> str:
    """pytest's last summary line, without the time: ``7 passed, 3 skipped``."""
    lines = re.findall(r"=+ ((?:\d+ \w+(?:, )?)+) in [\d.]+s", text)
    assert lines, text[-3000:]
    return str(lines[-1])


def hil_run(root: Path, kind: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``pytest --target=<kind's target> -rA`` in the checkout, with pytest-hil."""
    return subprocess.run([sys.executable, "-m", "pytest", f"--target={TARGETS[kind]}", "-rA",
                           "-p", "no:cacheprovider", *args], cwd=root, capture_output=True,
                          text=True, timeout=900)


def own_run(root: Path, kind: str, rig: Rig, name: str) -> subprocess.CompletedProcess[str]:
    """The team's own way: its script on the board, its compose command on the colima engine."""
    if kind == "board":
        env = {**os.environ, "BOARD": rig.ssh_alias, "SSH_CONFIG": str(rig.ssh_config),
               "REMOTE_DIR": f"hil-tests/{name}"}
        return subprocess.run(["scripts/run-tests-jetson.sh"], cwd=root, env=env,
                              capture_output=True, text=True, timeout=900)
    env = {**os.environ, "DOCKER_HOST": rig.colima_host}
    compose = ["docker-compose", "-p", re.sub(r"[^a-z0-9]", "", name.lower())[-20:] or "own",
               "-f", "docker-compose.test.yml", "--env-file", "targets/colima.env"]
    try:
        return subprocess.run([*compose, "up", "--build", "--abort-on-container-exit",
                               "--exit-code-from", "e2e-runner"], cwd=root, env=env,
                              capture_output=True, text=True, timeout=900)
    finally:
        subprocess.run([*compose, "down", "-v", "--remove-orphans"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_the_teams_harness_gives_its_own_outcomes_through_pytest_hil(
        kind: str, sim_rig: Rig, tmp_path: Path) -> None:
    root = copy_example(tmp_path / "gps-denied")
    hil = hil_run(root, kind)
    out = hil.stdout + hil.stderr
    assert hil.returncode == 0, out[-4000:]
    flavour = r"docker compose 2\.[\d.-]+" if kind == "board" else r"docker-compose 1\.29\.[\d.-]+"
    assert re.search(rf"hil: compose: {flavour} on", out), out[-4000:]
    assert "hil: compose: mock-satellite healthy" in out
    # Its own image: checked for pytest when built, reused while its content hash holds.
    assert re.search(r"hil: compose: (tests run in 'e2e-runner' \(hil-svc-e2e-runner:[0-9a-f]{16}, "
                     r"pytest \d|image hil-svc-e2e-runner:[0-9a-f]{16} of 'e2e-runner' is up "
                     r"to date)", out), out[-4000:]
    own = own_run(root, kind, sim_rig, tmp_path.name)
    own_out = own.stdout + own.stderr
    assert own.returncode == 0, own_out[-4000:]
    assert counts(out) == counts(own_out) == "7 passed, 3 skipped"
    assert outcomes(out) == outcomes(own_out)

    # A failing test: both ways exit 1 with the same outcomes; the runner's image is reused.
    (root / "tests" / "e2e" / "test_jamming.py").write_text(FAILING, encoding="utf-8")
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    hil = hil_run(root, kind)
    out = hil.stdout + hil.stderr
    own = own_run(root, kind, sim_rig, tmp_path.name)
    own_out = own.stdout + own.stderr
    assert (hil.returncode, own.returncode) == (1, 1), out[-3000:] + own_out[-3000:]
    assert counts(out) == counts(own_out) == "1 failed, 7 passed, 3 skipped"
    assert outcomes(out) == outcomes(own_out)
    assert outcomes(out)["tests/e2e/test_jamming.py::test_jammed_fix_is_trusted"] == "FAILED"


def test_a_tests_service_image_without_pytest_is_a_usage_error_naming_the_fix(
        sim_rig: Rig, tmp_path: Path) -> None:
    root = copy_example(tmp_path / "gps-denied")
    dockerfile = root / "tests" / "e2e" / "Dockerfile.jetson"
    text = dockerfile.read_text(encoding="utf-8")
    dockerfile.write_text(re.sub(r"(?m)^RUN .*pytest.*$", "RUN true", text), encoding="utf-8")
    done = hil_run(root, "colima")
    out = done.stdout + done.stderr
    assert done.returncode == ExitCode.USAGE_ERROR, out[-4000:]
    assert "the image of compose service 'e2e-runner'" in out and "cannot run pytest" in out
    assert "install pytest in its image (`RUN python3 -m pip install pytest` in " \
           "tests/e2e/Dockerfile.jetson)" in out, out[-4000:]
    # The image that failed the check is gone: the next run checks again, it does not run.
    again = hil_run(root, "colima")
    assert again.returncode == ExitCode.USAGE_ERROR, (again.stdout + again.stderr)[-4000:]
    assert "cannot run pytest" in again.stdout + again.stderr
