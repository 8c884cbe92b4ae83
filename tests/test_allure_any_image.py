"""Allure results from an image without allure-pytest: one per test, written on the host."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from hil.sim import Rig

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent

DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY targets/requirements.txt /opt/req.txt
RUN python3 -m venv /opt/v && /opt/v/bin/pip install -q --disable-pip-version-check -r /opt/req.txt
ENV PATH=/opt/v/bin:$PATH
"""

TESTS = """
import pytest

def test_passes():
    pass

def test_fails():
    print("the value was 41")
    assert 41 == 42

@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert n

def test_skips():
    pytest.skip("not today")

def test_no_allure_here():
    import importlib.util
    assert importlib.util.find_spec("allure_pytest") is None
"""


def docker_toml(rig: Rig, tmp_path: Path) -> str:
    return textwrap.dedent(f"""\
        kind = "docker"
        tier = 1
        [docker]
        engine = "{rig.colima_host}"
        dockerfile = "targets/Dockerfile"
        build_args = {{ BASE_IMAGE = "{rig.base_image}" }}
        hash_files = ["targets/requirements.txt"]
        build_network = "host"
        network = "none"
        """)


def ssh_toml(rig: Rig, tmp_path: Path) -> str:
    # The repo's sim-jetson, syncing to a folder of this test's own.
    text = (REPO / "targets" / "sim-jetson.toml").read_text()
    return text.replace('name = "sim-jetson"\n', "").replace(
        'remote_dir = "hil/pytest-hil"', f'remote_dir = "hil-tests/{tmp_path.name}/project"')


@pytest.fixture(params=[docker_toml, ssh_toml], ids=["colima", "jetson"])
def project(request: pytest.FixtureRequest, pytester: pytest.Pytester,
            sim_rig: Rig) -> pytest.Pytester:
    """A project whose target 'plain' builds an image with pytest alone, on the rig's
    colima engine or its simulated Jetson."""
    (pytester.path / "targets").mkdir()
    (pytester.path / "targets" / "Dockerfile").write_text(DOCKERFILE)
    (pytester.path / "targets" / "requirements.txt").write_text("pytest\n")
    (pytester.path / "targets" / "plain.toml").write_text(request.param(sim_rig, pytester.path))
    (pytester.path / "pyproject.toml").write_text('[project]\nname = "demo"\n')
    (pytester.path / ".gitignore").write_text("reports/\n__pycache__/\n")
    pytester.makepyfile(test_demo=TESTS)
    subprocess.run(["git", "init", "-q", str(pytester.path)], check=True)
    subprocess.run(["git", "-C", str(pytester.path), "add", "-A"], check=True)
    return pytester


def results(folder: Path) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in
            (json.loads(p.read_text()) for p in folder.glob("*-result.json"))}


def test_an_image_without_allure_pytest_still_gives_one_result_per_test(
        project: pytest.Pytester) -> None:
    run = project.runpytest_subprocess("--target=plain", "-p", "no:cacheprovider", timeout=600)
    assert run.ret == 1, run.stdout.str()[-3000:]
    run.assert_outcomes(passed=4, failed=1, skipped=1)
    out = run.stdout.str()
    assert out.count("no allure-pytest in the image of 'plain'") == 1
    assert "steps, attachments of the tests' own" in out
    folder = project.path / "reports" / "allure-results"
    found = results(folder)
    assert sorted(found) == ["test_fails", "test_no_allure_here", "test_param[1]",
                             "test_param[2]", "test_passes", "test_skips"]
    assert {n: r["status"] for n, r in found.items()} == {
        "test_fails": "failed", "test_no_allure_here": "passed", "test_param[1]": "passed",
        "test_param[2]": "passed", "test_passes": "passed", "test_skips": "skipped"}
    failed = found["test_fails"]
    assert failed["statusDetails"]["message"] == "assert 41 == 42"
    assert "assert 41 == 42" in failed["statusDetails"]["trace"]
    [stdout] = [a for a in failed["attachments"] if a["name"] == "stdout"]
    assert (folder / stdout["source"]).read_text() == "the value was 41\n"
    assert all({"name": "target", "value": "'plain'"} in r["parameters"] for r in found.values())
    assert {"name": "id", "value": "2"} in found["test_param[2]"]["parameters"]
    assert found["test_skips"]["statusDetails"]["message"] == "Skipped: not today"
    assert all(r["stop"] >= r["start"] > 0 for r in found.values())
