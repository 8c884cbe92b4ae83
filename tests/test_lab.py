"""A shared lab on labgrid's coordinator (``[labgrid]`` targets, ``hil lab``, ``hil sim up --labgrid``).

The configuration is checked without a rig; the rest runs real sessions
(pytester subprocesses) against the simulated lab: a real labgrid coordinator
and exporter publishing the rig's pool boards ``hil-sim-jetson-1..3`` as
places tagged ``board=sim-orin``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import IMAGE_REQUIREMENTS
from hil.config import parse_target
from hil.errors import ConfigError, ExitCode
from hil.sim import Rig

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
PLACES = ["hil-sim-jetson-1", "hil-sim-jetson-2", "hil-sim-jetson-3"]
LG = "127.0.0.1:20408"


# -- configuration, without a rig ----------------------------------------------------------

def _lab_target(labgrid: Any, ssh: dict[str, Any] | None = None) -> Any:
    return parse_target({"kind": "ssh", "tier": 1, "labgrid": labgrid,
                         "ssh": {"remote_dir": "hil/x", **(ssh or {})}},
                        "targets/l.toml", default_name="l")


def test_a_labgrid_table_replaces_the_ssh_hosts() -> None:
    spec = _lab_target({"tags": {"board": "orin-nano", "jetpack": "6_2"}, "count": 3, "priority": 5})
    assert spec.labgrid is not None
    assert (spec.labgrid.count, spec.labgrid.priority, dict(spec.labgrid.tags)) == (
        3, 5, {"board": "orin-nano", "jetpack": "6_2"})
    assert spec.timeouts.lab_ttl == 60
    assert _lab_target({"tags": {"board": "x"}, "count": "all"}).labgrid.count == 0
    assert _lab_target({"places": ["orin-07", "orin-11"]}).labgrid.count == 2


@pytest.mark.parametrize(("labgrid", "ssh", "message"), [
    ({"tags": {"board": "x"}, "count": 0}, None, r"'labgrid\.count' must be a positive integer or \"all\""),
    ({"tags": {"board": "x"}, "count": "two"}, None, r"'labgrid\.count' must be"),
    ({"tags": {"board": "x"}, "priority": "high"}, None, r"'labgrid\.priority' must be an integer"),
    ({}, None, r"needs 'tags' \(a table\) or 'places'"),
    ({"tags": {"board": "x"}, "places": ["a"]}, None, "one of them"),
    ({"places": ["a", "a"]}, None, "distinct place names"),
    ({"places": ["a"], "count": 2}, None, r"'labgrid\.count' is 2 but 'labgrid\.places' names 1"),
    ({"tags": {"Board": "x"}}, None, "invalid tag names"),
    ({"tags": {"board": "x"}, "where": 1}, None, r"unknown key 'labgrid\.where'"),
    ({"tags": {"board": "x"}}, {"host": "orin"}, "exclude each other"),
])
def test_a_bad_labgrid_table_is_a_usage_error(labgrid: Any, ssh: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _lab_target(labgrid, ssh)
    assert info.value.exit_code == ExitCode.USAGE_ERROR


def test_labgrid_is_for_ssh_targets_only() -> None:
    with pytest.raises(ConfigError, match="not allowed for kind 'docker'"):
        parse_target({"kind": "docker", "tier": 1, "labgrid": {"tags": {"board": "x"}}},
                     "targets/d.toml", default_name="d")


# -- the simulated lab ---------------------------------------------------------------------

SUITE = """
import os
import time

import pytest


@pytest.mark.parametrize("i", range({count}))
def test_half_second(i):
    time.sleep({seconds})
    assert os.environ["HIL_BOARD"].startswith("hil-sim-jetson-")
"""


@pytest.fixture(scope="module")
def sim_lab(sim_rig: Rig) -> Iterator[Rig]:
    """The rig with its three pool boards and the simulated lab up (left up afterwards)."""
    from hil.sim.lab import SimLab

    sim_rig.up(boards=max(3, sim_rig.pool.size()))
    SimLab(sim_rig.layout).up(sim_rig.pool.size())
    yield sim_rig


def _places() -> dict[str, Any]:
    from hil.lab.coordinator import Coordinator

    with Coordinator(LG) as lab:
        return lab.places()


def _project(pytester: pytest.Pytester, *, count: int = 3, ttl: int = 60, tests: int = 36,
             seconds: float = 0.5) -> pytest.Pytester:
    root = pytester.path
    for rel in ("targets/Dockerfile", *IMAGE_REQUIREMENTS):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    toml = (REPO / "targets" / "sim-lab.toml").read_text(encoding="utf-8")
    toml = re.sub(r'(?m)^remote_dir = .*$', f'remote_dir = "hil-tests/{root.name}/project"', toml)
    toml = re.sub(r"(?m)^count = .*$", f"count = {count}", toml)
    toml = re.sub(r"(?m)^lab_ttl = .*$", f"lab_ttl = {ttl}", toml)
    (root / "targets" / "sim-lab.toml").write_text(toml, encoding="utf-8")
    (root / ".gitignore").write_text("reports/\n__pycache__/\n*.xml\n", encoding="utf-8")
    pytester.makepyfile(test_suite=SUITE.format(count=tests, seconds=seconds))
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    return pytester


def _boards(path: Path) -> Counter[str]:
    """How many test cases each board ran (by the junit property)."""
    out: Counter[str] = Counter()
    for case in ET.parse(path).getroot().iter("testcase"):
        props = {p.attrib["name"]: p.attrib["value"] for p in case.iter("property")}
        out[props.get("board", "")] += 1
    return out


def test_a_lab_run_spreads_the_suite_over_three_places_and_frees_them(
        pytester: pytest.Pytester, sim_lab: Rig) -> None:
    project = _project(pytester)
    res = project.runpytest_subprocess("--target=sim-lab", "--junitxml=j.xml", timeout=600)
    res.assert_outcomes(passed=36)
    assert res.ret == ExitCode.OK
    res.stdout.fnmatch_lines(["*hil: lab: acquired hil-sim-jetson-*", "*hil: lab: released *"])
    cases = Counter(c.attrib["name"] for c in ET.parse(project.path / "j.xml").getroot().iter("testcase"))
    assert cases == Counter(f"test_half_second[{i}]" for i in range(36))  # every test once
    assert set(_boards(project.path / "j.xml")) <= set(PLACES)
    assert {name: p.acquired for name, p in _places().items() if name in PLACES} == dict.fromkeys(
        PLACES)


def test_a_place_someone_holds_is_neither_used_nor_released(
        pytester: pytest.Pytester, sim_lab: Rig) -> None:
    env = {**os.environ, "LG_COORDINATOR": LG, "LG_HOSTNAME": "bench", "LG_USERNAME": "alice"}
    client = [str(Path(sys.executable).parent / "labgrid-client"), "-p", PLACES[0]]
    subprocess.run([*client, "acquire"], env=env, check=True, timeout=60, capture_output=True)
    try:
        project = _project(pytester, count=2, tests=8, seconds=0.1)
        res = project.runpytest_subprocess("--target=sim-lab", "--junitxml=j.xml", timeout=600)
        res.assert_outcomes(passed=8)
        assert set(_boards(project.path / "j.xml")) == set(PLACES[1:])
        assert _places()[PLACES[0]].acquired == "bench/alice"
        # hil lab status shows the holder; release --stale leaves a person's place alone
        status = subprocess.run([sys.executable, "-m", "hil.cli", "lab", "status", "--json",
                                 "--coordinator", LG], capture_output=True, text=True, timeout=60)
        assert json.loads(status.stdout)["places"][PLACES[0]]["holder"] == "bench/alice"
        subprocess.run([sys.executable, "-m", "hil.cli", "lab", "release", "--stale", "--ttl", "0.1",
                        "--coordinator", LG], check=True, capture_output=True, timeout=60)
        assert _places()[PLACES[0]].acquired == "bench/alice"
    finally:
        subprocess.run([*client, "release"], env=env, check=False, timeout=60, capture_output=True)


def test_a_killed_session_leaves_its_places_for_at_most_the_ttl(
        pytester: pytest.Pytester, sim_lab: Rig) -> None:
    ttl = 5
    project = _project(pytester, count=3, ttl=ttl, tests=6, seconds=30)
    out = project.path / "out.txt"
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "--target=sim-lab", "-p", "pytester"],
                                cwd=project.path, stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 300
        while "hil: lab: acquired" not in out.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    killed = time.monotonic()
    assert all(_places()[p].acquired for p in PLACES)  # left behind by the dead session
    # a later session frees them once their heartbeat is older than the TTL, then runs on them
    later = _project(pytester, count=3, ttl=ttl, tests=3, seconds=0.1)
    res = later.runpytest_subprocess("--target=sim-lab", timeout=600)
    res.assert_outcomes(passed=3)
    res.stdout.fnmatch_lines(["*hil: lab: freed *(their session stopped beating)*"])
    print(f"places back and run {time.monotonic() - killed:.1f} s after the SIGKILL")
    assert all(_places()[p].acquired is None for p in PLACES)


def test_a_second_session_waits_in_the_queue_then_runs(
        pytester: pytest.Pytester, sim_lab: Rig, tmp_path_factory: pytest.TempPathFactory) -> None:
    first = _project(pytester, count=3, tests=3, seconds=4)
    out = first.path / "first.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "--target=sim-lab"], cwd=first.path,
                                stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while "hil: lab: acquired" not in out.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        second = tmp_path_factory.mktemp("second")  # outside the first one's checkout
        shutil.copytree(first.path / "targets", second / "targets")
        shutil.copy(first.path / "test_suite.py", second / "test_suite.py")
        res = pytester.run(sys.executable, "-m", "pytest", "--target=sim-lab", "--rootdir", str(second),
                           str(second), timeout=600)
        assert proc.wait(timeout=300) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    res.stdout.fnmatch_lines(["*hil: lab: waiting for 3 place(s) tagged board=sim-orin: 0 of 3 allocated*",
                              "*hil: lab: acquired hil-sim-jetson-*", "*3 passed*"])
    assert res.ret == 0


def test_a_terminated_session_releases_its_places_at_once(pytester: pytest.Pytester, sim_lab: Rig) -> None:
    project = _project(pytester, count=3, tests=3, seconds=30)
    out = project.path / "out.txt"
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "--target=sim-lab"], cwd=project.path,
                                stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 300
        # Running on every healthy board (one may be quarantined on a loaded rig).
        while "hil: running on " not in out.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.read_text(errors="replace")
    released = re.search(r"hil: lab: released (.+)", text)
    assert released is not None, text
    # Released in the order they were acquired, which the coordinator decides.
    assert sorted(released.group(1).strip().split(", ")) == PLACES, text
    assert all(_places()[p].acquired is None for p in PLACES)


def test_a_place_s_power_port_cycles_its_board(sim_lab: Rig) -> None:
    """labgrid's own ``power cycle`` on a place: the board's sshd and engine go and come back."""
    env = {**os.environ, "LG_COORDINATOR": LG, "LG_HOSTNAME": "bench", "LG_USERNAME": "bob"}
    client = [str(Path(sys.executable).parent / "labgrid-client"), "-p", PLACES[2]]
    board = sim_lab.pool[3]
    subprocess.run([*client, "acquire"], env=env, check=True, timeout=60, capture_output=True)
    try:
        pid = board.engine.pid()
        done = subprocess.run([*client, "power", "cycle"], env=env, timeout=120, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
        assert board.engine.pid() not in (None, pid)  # a new engine: it was really stopped
        assert board.board.sshd_up() and board.ssh_works()
        got = subprocess.run([*client, "power", "get"], env=env, timeout=60, capture_output=True,
                             text=True)
        assert "is on" in got.stdout
    finally:
        subprocess.run([*client, "release"], env=env, check=False, timeout=60, capture_output=True)
