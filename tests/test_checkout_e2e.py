"""What of a checkout reaches the board, and where targets are found, end to end on the rig."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import IMAGE_REQUIREMENTS

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent

READS_METADATA = """
from pathlib import Path

def test_reads_its_package_metadata():
    info = Path(__file__).parent / "demo.egg-info" / "PKG-INFO"
    assert "Name: demo" in info.read_text()
"""


def _project(root: Path, spec: Any, ssh_extra: str = "") -> None:
    """The repo's image files and sim-jetson target (remote_dir of the test's own) in ``root``."""
    for rel in ("targets/Dockerfile", *IMAGE_REQUIREMENTS):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((REPO / rel).read_bytes())
    toml = (REPO / "targets" / "sim-jetson.toml").read_text(encoding="utf-8")
    toml = toml.replace('remote_dir = "hil/pytest-hil"',
                        f'remote_dir = "{spec.ssh.remote_dir}"\n{ssh_extra}')
    (root / "targets" / "sim-jetson.toml").write_text(toml, encoding="utf-8")


def _git(root: Path) -> None:
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)


@pytest.mark.parametrize("include", [False, True], ids=["ignored-stays-home", "named-travels"])
def test_a_git_ignored_file_travels_only_when_the_target_names_it(
        pytester: pytest.Pytester, sim_jetson: Any, include: bool) -> None:
    root = pytester.path
    _project(root, sim_jetson, 'include = ["*.egg-info"]' if include else "")
    (root / "test_meta.py").write_text(READS_METADATA, encoding="utf-8")
    (root / "demo.egg-info").mkdir()
    (root / "demo.egg-info" / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: demo\n")
    (root / ".gitignore").write_text("reports/\n*.egg-info/\n", encoding="utf-8")
    _git(root)
    result = pytester.runpytest_subprocess("--target=sim-jetson", "-p", "no:cacheprovider")
    if include:
        result.assert_outcomes(passed=1)
        assert result.ret == 0
    else:  # what git would commit, and no more: the test cannot find the file
        result.assert_outcomes(failed=1)
        assert result.ret == 1
        result.stdout.fnmatch_lines(["*FileNotFoundError*PKG-INFO*"])


def test_a_monorepo_subproject_runs_on_the_target_declared_at_the_top(
        pytester: pytest.Pytester, sim_jetson: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    root = pytester.path
    _project(root, sim_jetson)
    app = root / "packages" / "app"
    app.mkdir(parents=True)
    (app / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (app / "test_app.py").write_text(
        "import os\n\ndef test_runs_in_its_folder():\n"
        "    assert os.path.basename(os.getcwd()) == 'app'\n\n"
        "def test_fails():\n    assert 0\n", encoding="utf-8")
    (root / ".gitignore").write_text("reports/\n", encoding="utf-8")
    _git(root)
    monkeypatch.chdir(app)
    result = pytester.runpytest_subprocess("--target=sim-jetson", "-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["hil target: sim-jetson (ssh*", "FAILED test_app.py::test_fails*"])
    (run_dir,) = (app / "reports" / "runs").iterdir()
    # Waiting for the board's lease, the sync and the image are phases of their own.
    timings = json.loads((run_dir / "timings.json").read_text(encoding="utf-8"))
    assert set(timings) >= {"preflight", "lease", "sync", "image", "container start", "tests"}
    result.stdout.fnmatch_lines(["phases: preflight *s | lease *s | sync *s | image *s | "
                                 "container start *s | tests *s*"])
