"""Fault parity: one fault, the same exit code and the same kept results on every kind of run.

Every container session is one controller over its members (a target, a pool's
boards, routed targets), so a fault must end alike on sim-colima (docker),
sim-jetson (ssh), a pool of one board, a pool of three and a routed run
(``--target sim-colima,board1``, board1 an ssh target on a pool board: the tier-1
tests below all go to the docker member, the ssh member runs none).  Each cell is one real ``pytest --target``
run on the rig; the kept results are the junit file's outcomes.

Cells, chosen to stay affordable (the end classifier itself is a table in
test_ending.py, for every end on any member):

* crash (a test kills the interpreter; the run resumes after it): every column;
* dies before pytest starts (a conftest that ends the process): every column;
* crash past the resume limit, ``-x``, ``--maxfail`` across a resume: the columns
  whose member runs the whole suite (in a pool of three the boards run at once,
  so where a stop lands depends on timing; ``test_pool.py`` covers ``-x`` there);
* SIGTERM (as Ctrl-C): sim-colima and the routed run (its docker member must stop);
* OOM kill: the docker and ssh targets with a memory limit (test_docker_target.py
  for docker, the classifier's table for both);
* link lost: ssh targets (test_ssh_backend.py; a pool moves a lost board's tests,
  test_pool.py).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import IMAGE_REQUIREMENTS
from hil.sim import Rig

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent

#: column -> the --target value
COLUMNS = {"sim-colima": "sim-colima", "sim-jetson": "sim-jetson", "pool-of-1": "pool1",
           "pool-of-3": "sim-pool", "routed": "sim-colima,board1"}

CRASH = """
import os

def test_1_crash():
    os._exit(3)

def test_2():
    pass

def test_3():
    pass

def test_4():
    pass

def test_5():
    pass

def test_6():
    pass
"""

FAILS = """
import os

def test_1_crash():
    os._exit(3)

def test_2_fails():
    assert 0

def test_3_fails():
    assert 0

def test_4():
    pass
"""

XFIRST = """
def test_1():
    pass

def test_2_fails():
    assert 0

def test_3():
    pass

def test_4():
    pass
"""

DIES = """
import os

if os.path.isdir("/hil/out"):  # in the container only: before pytest's session starts
    os._exit(7)
"""

P, F = "passed", "failure"
ALL = list(COLUMNS)
SINGLE = ["sim-colima", "sim-jetson", "pool-of-1", "routed"]

#: fault -> (suite, conftest, args, columns, exit code, kept outcomes)
FAULTS: dict[str, tuple[str, str, tuple[str, ...], list[str], int, dict[str, str]]] = {
    "crash": (CRASH, "", (), ALL, 1, {"test_1_crash": F, **{f"test_{i}": P for i in range(2, 7)}}),
    "dies-before-pytest": (CRASH, DIES, (), ALL, 16, {}),
    "crash-past-limit": (CRASH, "", ("--hil-max-resumes=0",), SINGLE, 19, {"test_1_crash": F}),
    "maxfail-across-resume": (FAILS, "", ("--maxfail=2",), SINGLE, 1,
                              {"test_1_crash": F, "test_2_fails": F}),
    "exitfirst": (XFIRST, "", ("-x",), SINGLE, 1, {"test_1": P, "test_2_fails": F}),
}
CELLS = [(fault, column) for fault, row in FAULTS.items() for column in row[3]]


@pytest.fixture(scope="module")
def rig(sim_rig: Rig) -> Rig:
    """The rig with its three pool boards up."""
    sim_rig.up(boards=max(3, sim_rig.pool.size()))
    return sim_rig


@pytest.fixture
def project(pytester: pytest.Pytester, rig: Rig) -> pytest.Pytester:
    """A git checkout with sim-colima, sim-jetson, the pool of three and a pool of one,
    the ssh ones syncing to folders of their own."""
    root = pytester.path
    for rel in ("targets/Dockerfile", *IMAGE_REQUIREMENTS, "targets/sim-colima.toml"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    remote = f'remote_dir = "hil-tests/{root.name}/project"'
    for name in ("sim-jetson", "sim-pool"):
        toml = (REPO / "targets" / f"{name}.toml").read_text(encoding="utf-8")
        (root / "targets" / f"{name}.toml").write_text(
            re.sub(r"(?m)^remote_dir = .*$", remote, toml), encoding="utf-8")
    board1 = re.sub(r"(?m)^host = .*$", 'host = "hil-sim-jetson-1"',
                    (root / "targets" / "sim-jetson.toml").read_text(encoding="utf-8"))
    (root / "targets" / "board1.toml").write_text(
        re.sub(r"(?m)^name = .*$", 'name = "board1"', board1), encoding="utf-8")
    pool = (root / "targets" / "sim-pool.toml").read_text(encoding="utf-8")
    pool = re.sub(r"(?m)^hosts = .*$", 'hosts = ["hil-sim-jetson-1"]', pool)
    (root / "targets" / "pool1.toml").write_text(re.sub(r'(?m)^name = .*$', 'name = "pool1"', pool),
                                                 encoding="utf-8")
    (root / ".gitignore").write_text("reports/\n__pycache__/\n*.xml\n", encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return pytester


def outcomes(path: Path) -> dict[str, str]:
    """Test name -> its outcome in a junit file (failure, skipped, error or passed)."""
    if not path.is_file():
        return {}
    cases: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        if "name" not in case.attrib:  # junit's record of an interrupted session, not a test
            continue
        kinds = [child.tag for child in case if child.tag in ("failure", "skipped", "error")]
        cases[case.attrib["name"]] = kinds[0] if kinds else P
    return cases


@pytest.mark.parametrize(("fault", "column"), CELLS, ids=[f"{f}-{c}" for f, c in CELLS])
def test_a_fault_ends_alike_on_every_kind_of_run(project: pytest.Pytester, fault: str,
                                                 column: str) -> None:
    suite, conftest, args, _, code, kept = FAULTS[fault]
    project.makepyfile(test_parity=suite)
    if conftest:
        project.makeconftest(conftest)
    subprocess.run(["git", "-C", str(project.path), "add", "-A"], check=True)
    res = project.runpytest_subprocess(f"--target={COLUMNS[column]}", "-p", "no:cacheprovider",
                                       "--junitxml=j.xml", *args, timeout=600)
    print(f"PARITY {fault} {column} exit {res.ret}")
    assert res.ret == code, res.stdout.str()[-4000:]
    assert outcomes(project.path / "j.xml") == kept
    res.stdout.no_fnmatch_line("*INTERNALERROR*")


SLEEPS = """
import time

def test_1():
    pass

def test_2_sleeps():
    time.sleep(300)
"""


@pytest.mark.parametrize("column", ["sim-colima", "routed"])
def test_sigterm_stops_every_member_and_keeps_what_ran(project: pytest.Pytester,
                                                       column: str) -> None:
    project.makepyfile(test_parity=SLEEPS)
    subprocess.run(["git", "-C", str(project.path), "add", "-A"], check=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", f"--target={COLUMNS[column]}", "-p", "no:cacheprovider",
         "--junitxml=j.xml"], cwd=project.path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        # The sleeping test has started once the worker's record (the mounted run folder of
        # the docker member) names it.
        deadline = time.monotonic() + 300
        while not any(b"test_2_sleeps" in p.read_bytes() and b'"logstart"' in p.read_bytes()
                      for p in (project.path / "reports").glob("runs/**/events.jsonl")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)  # poll interval for the record, not a readiness wait
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"PARITY sigterm {column} exit {proc.returncode}")
    assert proc.returncode == 2, out.decode()[-4000:]
    assert outcomes(project.path / "j.xml") == {"test_1": P}
