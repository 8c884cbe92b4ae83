"""Shared fixtures of pytest-hil's own tests.

Keep this file tidy: one section per area, each fixture with a docstring.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil.sim import Rig

# --- the simulated rig (hil sim) ---------------------------------------------

SIM_REQUIRED_ENV = "HIL_SIM_REQUIRED"
#: The dependencies image's requirement locks (what targets/Dockerfile COPYs).
IMAGE_REQUIREMENTS = ("targets/requirements.txt", "targets/requirements-cpu.txt",
                      "targets/requirements-jetson.txt")
#: Debian packages the tests need beside the rig's own.
TEST_PACKAGES = ("chromium", "git", "ca-certificates")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sim_restart: takes the simulated rig down and up again; runs last")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that restart the rig run after every other test of the session.
    items.sort(key=lambda item: item.get_closest_marker("sim_restart") is not None)


@pytest.fixture(scope="session")
def sim_rig() -> Iterator[Rig]:
    """The simulated rig, brought up if needed; yields :class:`hil.sim.Rig`.

    Installs the rig's missing Debian packages first where it can (root, apt-get).
    Skips where the rig cannot run (not Linux, not root, tools missing) unless
    ``HIL_SIM_REQUIRED=1``, which makes that a failure.  It never takes the
    rig down (``hil sim down`` does), but undoes every fault injected through it.
    """
    rig = Rig()
    # The test command does the whole set-up: on a fresh Debian machine, as root, the
    # rig's packages (and the browser the report tests look through) come from apt.
    install_problem = Rig.install_packages(extra=TEST_PACKAGES)
    reason = rig.unsupported_reason()
    if reason and install_problem:
        reason = f"{reason} ({install_problem})"
    if reason:
        if os.environ.get(SIM_REQUIRED_ENV) == "1":
            pytest.fail(f"{SIM_REQUIRED_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    # A session starts from a healthy, current rig: faults left by a crashed earlier
    # session are undone, and `up` (idempotent) restarts what stopped and refreshes
    # images whose inputs changed (e.g. the host's CA bundle after an apt upgrade).
    rig.ensure_up()
    rig.restore_faults()
    rig.up()
    try:
        yield rig
    finally:
        rig.restore_injected()


# --- reports (hil report, hil nightly) ---------------------------------------

REPORT_TEST_FILE = '''
import os

import pytest


def test_passes():
    assert 1 + 1 == 2


def test_product_regression():
    assert os.environ.get("HIL_DEMO_FAIL") != "1", "product regression: 2 * 2 != 4"


def test_helper_crashes():
    if os.environ.get("HIL_DEMO_FAIL") == "1":
        raise RuntimeError("helper crashed")


@pytest.mark.tier2
def test_needs_gpu():
    pass
'''


def require_tool(ok: bool, reason: str) -> None:
    """Skip with ``reason`` unless ``HIL_SIM_REQUIRED=1``, which makes a missing tool a failure."""
    if not ok:
        if os.environ.get(SIM_REQUIRED_ENV) == "1":
            pytest.fail(f"{SIM_REQUIRED_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def report_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tmp project with three local targets (local-a, local-b and gpu-box, which
    declares tier 2 and so fails with the target-unhealthy code on a CPU host) and
    one test file; Allure is installed once into the checkout's ``.hil/``."""
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\n', encoding="utf-8")
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "local-a.toml").write_text('kind = "local"\ntier = 1\n', encoding="utf-8")
    (targets / "local-b.toml").write_text('kind = "local"\ntier = 1\n', encoding="utf-8")
    (targets / "gpu-box.toml").write_text('kind = "local"\ntier = 2\n', encoding="utf-8")
    (tmp_path / "test_demo.py").write_text(REPORT_TEST_FILE, encoding="utf-8")
    monkeypatch.setenv("HIL_TOOLS_DIR", str(Path(__file__).resolve().parent.parent / ".hil"))
    monkeypatch.delenv("HIL_DEMO_FAIL", raising=False)
    return tmp_path


@pytest.fixture
def rig_report_project(sim_rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git project with the repo's sim-colima and sim-jetson targets (the jetson one
    syncing to a folder of its own; sim-colima sets HIL_DEMO_FAIL=1 in the container) and
    the report test file; Allure is installed once into the checkout's ``.hil/``."""
    import re
    import subprocess

    root = tmp_path / "project"
    repo = Path(__file__).resolve().parent.parent
    for rel in ("targets/Dockerfile", *IMAGE_REQUIREMENTS):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / rel, root / rel)
    colima = (repo / "targets" / "sim-colima.toml").read_text(encoding="utf-8")
    (root / "targets" / "sim-colima.toml").write_text(
        colima.replace("\n[env]\n", '\n[env]\nHIL_DEMO_FAIL = "1"\n', 1), encoding="utf-8")
    jetson = SIM_JETSON_TOML.read_text(encoding="utf-8")
    (root / "targets" / "sim-jetson.toml").write_text(
        re.sub(r'(?m)^remote_dir = .*$', f'remote_dir = "hil-tests/{tmp_path.name}/project"',
               jetson), encoding="utf-8")
    (root / "test_demo.py").write_text(REPORT_TEST_FILE, encoding="utf-8")
    (root / ".gitignore").write_text("reports/\n__pycache__/\n", encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    monkeypatch.setenv("HIL_TOOLS_DIR", str(repo / ".hil"))
    monkeypatch.delenv("HIL_DEMO_FAIL", raising=False)
    return root


@pytest.fixture
def node_for_allure3() -> None:
    """Skips (or fails under HIL_SIM_REQUIRED=1) without Node.js 20+ and npm."""
    from hil.report.allure3 import NODE_MIN_MAJOR, node_major

    major = node_major()
    require_tool(major is not None and major >= NODE_MIN_MAJOR and shutil.which("npm") is not None,
                 f"Allure 3 needs Node.js {NODE_MIN_MAJOR}+ and npm (found node {major})")


# --- the jetson target over SSH (hil.backends.jetson.backend) on the simulated rig --------

SIM_JETSON_TOML = Path(__file__).resolve().parent.parent / "targets" / "sim-jetson.toml"

SIM_PROJECT_FILES = {
    "tests/test_fast.py": (
        "def test_passes():\n    assert True\n\n\n"
        "def test_fails():\n    assert 1 + 1 == 3\n"
    ),
    "tests/test_slow.py": (
        "import os\nimport time\n\n\n"
        "def test_slow():\n    time.sleep(float(os.environ.get('HIL_SLOW', '0')))\n"
    ),
}


@pytest.fixture
def sim_project(tmp_path: Path) -> Path:
    """A tiny git checkout with the repo's Dockerfile and requirements (same image tag as
    the repo's own sim-jetson runs, so the image is built once), a passing, a failing and
    a slow test, and a copy of ``targets/sim-jetson.toml``."""
    import subprocess

    root = tmp_path / "project"
    repo = Path(__file__).resolve().parent.parent
    for rel in ("targets/Dockerfile", *IMAGE_REQUIREMENTS, "targets/sim-jetson.toml"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / rel, root / rel)
    for rel, text in SIM_PROJECT_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / ".gitignore").write_text("reports/\n__pycache__/\n", encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    return root


@pytest.fixture
def sim_jetson(sim_rig: Rig, tmp_path: Path) -> Any:
    """The sim-jetson TargetSpec with a remote_dir of its own (``hil-tests/<tmp name>``),
    so tests never sync over the folder the repo's own runs use."""
    import dataclasses

    from hil.config import parse_target

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    spec = parse_target(tomllib.loads(SIM_JETSON_TOML.read_text(encoding="utf-8")),
                        "targets/sim-jetson.toml", default_name="sim-jetson")
    ssh = dataclasses.replace(spec.ssh, remote_dir=f"hil-tests/{tmp_path.name}/project")
    return dataclasses.replace(spec, ssh=ssh)
