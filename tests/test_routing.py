"""Tier routing: ``--target a,b`` / ``--target auto``, each test to the cheapest target serving
its tier, the targets at once in one session.

The rig's boards serve tier 1 only (no GPU; a board declaring tier 2 fails its preflight GPU
probe with exit 16), so on the rig tier-2 tests are routed to the ssh target and skipped there
with its reason: the skip comes from that target's container, which shows where they went.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import IMAGE_REQUIREMENTS
from hil.config import Inventory, parse_target
from hil.errors import ConfigError, ExitCode
from hil.session.routing import resolve
from hil.sim import Rig

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent


def KEEP(spec: object) -> str:
    """``auto`` keeps every target (these inventories name no real engine or board)."""
    return ""


def _inventory(tmp_path: Path, **tiers: tuple[str, int]) -> Inventory:
    targets = {}
    for name, (kind, tier) in tiers.items():
        table: dict[str, object] = {"kind": kind, "tier": tier}
        if kind == "ssh":
            table["ssh"] = {"host": name, "remote_dir": "x"}
        targets[name] = parse_target(table, f"{name}.toml", default_name=name)
    return Inventory(targets=targets, root=tmp_path)


def test_each_tier_goes_to_the_cheapest_target_serving_it(tmp_path: Path) -> None:
    inv = _inventory(tmp_path, box=("docker", 1), orin=("ssh", 2), cheap_gpu=("docker", 2))
    routing = resolve("orin,box", inv)
    assert dict(routing.route) == {1: "box", 2: "orin", 3: "orin"}
    assert [t.name for t in routing.targets] == ["orin", "box"]
    assert dict(resolve("orin,cheap_gpu,box", inv).route)[2] == "cheap_gpu"  # docker is cheaper
    # auto: every docker and ssh target; tier 1 -> the first cheapest
    assert dict(resolve("auto", inv, KEEP).route) == {1: "box", 2: "cheap_gpu", 3: "orin"}


def test_a_tier_nobody_serves_goes_to_the_most_capable_ssh_target(tmp_path: Path) -> None:
    inv = _inventory(tmp_path, box=("docker", 1), board=("ssh", 1))
    assert dict(resolve("box,board", inv).route) == {1: "box", 2: "board", 3: "board"}


def test_routing_in_pyproject_fixes_a_tier(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.hil.routing]\ntier1 = "board"\n', encoding="utf-8")
    inv = _inventory(tmp_path, box=("docker", 1), board=("ssh", 1))
    assert dict(resolve("auto", inv, KEEP).route) == {1: "board", 2: "board", 3: "board"}
    (tmp_path / "pyproject.toml").write_text('[tool.hil.routing]\ngpu = "board"\n')
    with pytest.raises(ConfigError, match=r"tool\.hil\.routing\.gpu' must be one of tier1"):
        resolve("auto", inv, KEEP)


def test_bad_target_lists_are_usage_errors(tmp_path: Path) -> None:
    inv = _inventory(tmp_path, box=("docker", 1), board=("ssh", 1))
    with pytest.raises(ConfigError, match="two or more distinct targets"):
        resolve("box,box", inv)
    with pytest.raises(ConfigError, match="unknown target 'nope'"):
        resolve("box,nope", inv)


# -- on the rig ----------------------------------------------------------------------------

MIXED = """
import os

import pytest


@pytest.mark.parametrize("i", range(3))
def test_cpu(i):
    assert os.environ["HIL_TARGET"] == "sim-colima"


@pytest.mark.tier2
def test_gpu():
    pass


@pytest.mark.tier1
def test_marked_cpu():
    assert os.environ["HIL_TARGET"] == "sim-colima"
"""


@pytest.fixture
def project(pytester: pytest.Pytester, sim_rig: Rig) -> pytest.Pytester:
    """sim-colima (docker) and board1 (ssh: pool board hil-sim-jetson-1, tier 1), a mixed suite."""
    sim_rig.up(boards=max(3, sim_rig.pool.size()))
    root = pytester.path
    for rel in ("targets/Dockerfile", *IMAGE_REQUIREMENTS, "targets/sim-colima.toml"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    toml = (REPO / "targets" / "sim-jetson.toml").read_text(encoding="utf-8")
    toml = re.sub(r'(?m)^remote_dir = .*$', f'remote_dir = "hil-tests/{root.name}/project"', toml)
    toml = re.sub(r'(?m)^host = .*$', 'host = "hil-sim-jetson-1"', toml)
    toml = re.sub(r'(?m)^name = .*$', 'name = "board1"', toml)
    (root / "targets" / "board1.toml").write_text(toml, encoding="utf-8")
    (root / ".gitignore").write_text("reports/\n__pycache__/\n*.xml\n", encoding="utf-8")
    pytester.makepyfile(test_mixed=MIXED)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return pytester


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    subprocess.run(["git", "-C", str(project.path), "add", "-A"], check=True)
    return project.runpytest_subprocess(*args, timeout=600)


def test_a_mixed_suite_is_routed_and_both_targets_run_at_once(project: pytest.Pytester) -> None:
    plan = run(project, "--target=sim-colima,board1", "--hil-plan")
    plan.stdout.fnmatch_lines([
        "hil plan: routing tier1 -> sim-colima, tier2 -> board1, tier3 -> board1",
        "  RUN  test_mixed.py::test_cpu?0? -> sim-colima (tier1)",
        "  SKIP test_mixed.py::test_gpu: tier2 (CUDA GPU) test; target 'board1' serves tier 1",
    ])
    res = run(project, "--target=sim-colima,board1", "-rs", "--junitxml=j.xml")
    assert res.ret == ExitCode.OK
    res.assert_outcomes(passed=4, skipped=1)
    res.stdout.fnmatch_lines(["hil: running on 2 target(s): sim-colima, board1",
                              "*tier2 (CUDA GPU) test; target 'board1' serves tier 1*"])
    where = {}
    for case in ET.parse(project.path / "j.xml").getroot().iter("testcase"):
        props = {p.attrib["name"]: p.attrib["value"] for p in case.iter("property")}
        where[case.attrib["name"]] = props.get("target")
    assert where == {"test_cpu[0]": "sim-colima", "test_cpu[1]": "sim-colima",
                     "test_cpu[2]": "sim-colima", "test_marked_cpu": "sim-colima",
                     "test_gpu": "board1"}


def test_auto_follows_the_routing_of_pyproject(project: pytest.Pytester) -> None:
    (project.path / "pyproject.toml").write_text(
        '[tool.hil.routing]\ntier1 = "board1"\n', encoding="utf-8")
    res = run(project, "--target=auto", "--junitxml=j.xml")
    # Every test now goes to board1, where HIL_TARGET is board1: the cpu tests say so.
    assert res.ret == ExitCode.TESTS_FAILED
    res.assert_outcomes(failed=4, skipped=1)
    res.stdout.fnmatch_lines(["*assert 'board1' == 'sim-colima'*"])
