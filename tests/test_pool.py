"""Board pools (``[ssh] hosts``) and shards (``--hil-shard I/N``).

The split logic and the configuration are checked without a rig; the rest
runs real sessions (pytester subprocesses) on the rig's pool boards
``hil-sim-jetson-1..3``, faulting only those (never board 0, which other
sessions use).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import IMAGE_REQUIREMENTS
from hil.config import parse_target
from hil.errors import ConfigError, ExitCode
from hil.sim import Rig
from hil.worker import decode_share, encode_share, share_of, split_shares

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
POOL = ["hil-sim-jetson-1", "hil-sim-jetson-2", "hil-sim-jetson-3"]


# -- configuration and the split, without a rig --------------------------------------------

def _ssh_target(ssh: dict[str, Any]) -> Any:
    return parse_target({"kind": "ssh", "tier": 1, "ssh": {"remote_dir": "hil/x", **ssh}},
                        "targets/p.toml", default_name="p")


def test_hosts_make_a_pool_and_exclude_host() -> None:
    spec = _ssh_target({"hosts": ["orin-01", "orin-02"]})
    assert spec.ssh.boards == ("orin-01", "orin-02")
    assert _ssh_target({"host": "orin-01"}).ssh.boards == ("orin-01",)
    with pytest.raises(ConfigError, match=r"'ssh\.host' and 'ssh\.hosts' exclude each other"):
        _ssh_target({"host": "a", "hosts": ["b"]})
    with pytest.raises(ConfigError, match=r"missing key 'ssh\.host'.*or 'ssh\.hosts'"):
        _ssh_target({})
    with pytest.raises(ConfigError, match="distinct, non-empty"):
        _ssh_target({"hosts": ["a", "a"]})
    with pytest.raises(ConfigError, match="must be an array of strings"):
        _ssh_target({"hosts": "a"})


def test_the_shipped_pool_target_parses() -> None:
    from hil.config import load_inventory

    spec = load_inventory(REPO).get("sim-pool")
    assert spec.ssh.boards == tuple(POOL)


def test_without_durations_the_split_is_file_order_in_runs() -> None:
    ids = [f"t{i}" for i in range(10)]
    assert split_shares(ids, {}, 3) == [ids[0:4], ids[4:7], ids[7:10]]


def test_with_durations_longest_first_onto_the_least_loaded() -> None:
    ids = ["a", "b", "c", "d", "e"]
    durations = {"a": 1.0, "b": 5.0, "c": 3.0, "d": 3.0, "e": 2.0}
    parts = split_shares(ids, durations, 2)
    # b(5) -> 0, c(3) -> 1, d(3) -> 1 (3 < 5), e(2) -> 0 (5 < 6), a(1) -> 1 (7 = 6+1? no: 6 < 7)
    assert parts == [["b", "e"], ["a", "c", "d"]]
    loads = [sum(durations[i] for i in p) for p in parts]
    assert max(loads) - min(loads) <= max(durations.values())


def test_tests_recorded_as_taking_no_time_are_spread_too() -> None:
    ids = [f"t{i}" for i in range(9)]
    parts = split_shares(ids, dict.fromkeys(ids, 0.0), 3)
    assert sorted(len(p) for p in parts) == [3, 3, 3]


def test_nested_parts_cover_every_test_once() -> None:
    ids = [f"t{i}" for i in range(23)]
    durations = {f"t{i}": float(i % 7) + 0.1 for i in range(0, 23, 2)}  # half unknown
    seen = Counter(i for shard in range(3) for board in range(2)
                   for i in share_of(ids, durations, [[shard, 3], [board, 2]]))
    assert seen == Counter(ids)
    levels = [[1, 3], [0, 2]]
    data = decode_share(encode_share(levels, durations))
    assert data == {"levels": levels, "durations": durations}


def test_a_bad_shard_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a():\n    pass\n")
    res = pytester.runpytest_subprocess("--hil-shard", "4/3")
    assert res.ret == ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--hil-shard: expected I/N with 1 <= I <= N*'4/3'*"])


@pytest.mark.parametrize("option", [["--hil-confirm-failures"], ["--hil-hold-on-failure", "5"]])
def test_pool_only_options_name_what_they_need(pytester: pytest.Pytester,
                                               option: list[str]) -> None:
    pytester.makepyfile("def test_a():\n    pass\n")
    res = pytester.runpytest_subprocess(*option)
    assert res.ret == ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"ERROR: {option[0]} works on board pools: target 'local' has no "
                              "?ssh? hosts*"])


def test_local_shards_run_every_test_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_s="import pytest\n\n@pytest.mark.parametrize('i', range(10))\n"
                               "def test_p(i):\n    pass\n")
    seen: Counter[str] = Counter()
    for shard in ("1/3", "2/3", "3/3"):
        res = pytester.runpytest_subprocess("--hil-shard", shard, "-p", "no:cacheprovider",
                                            "--junitxml", f"j{shard[0]}.xml")
        assert res.ret == 0
        seen.update(_cases(pytester.path / f"j{shard[0]}.xml"))
    assert seen == Counter(f"test_p[{i}]" for i in range(10))


# -- on the rig's pool ---------------------------------------------------------------------

SUITE = """
import os
import time

import pytest


@pytest.mark.parametrize("i", range(12))
def test_many(i):
    time.sleep(0.05)


def test_fails():
    assert 1 + 1 == 3


def test_board_named():
    assert os.environ["HIL_BOARD"] in {boards!r}
"""


@pytest.fixture(scope="module")
def pool_rig(sim_rig: Rig) -> Rig:
    """The rig with (at least) its three pool boards up (left up afterwards)."""
    sim_rig.up(boards=max(3, sim_rig.pool.size()))
    return sim_rig


@pytest.fixture
def project(pytester: pytest.Pytester, pool_rig: Rig) -> pytest.Pytester:
    """A git checkout with the repo's image recipe and targets/sim-pool.toml syncing to a
    folder of its own, and a suite of 14 tests (one fails)."""
    root = pytester.path
    for rel in ("targets/Dockerfile", *IMAGE_REQUIREMENTS):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    toml = (REPO / "targets" / "sim-pool.toml").read_text(encoding="utf-8")
    (root / "targets" / "sim-pool.toml").write_text(
        re.sub(r'(?m)^remote_dir = .*$', f'remote_dir = "hil-tests/{root.name}/project"', toml),
        encoding="utf-8")
    (root / ".gitignore").write_text("reports/\n__pycache__/\n*.xml\n", encoding="utf-8")
    pytester.makepyfile(test_suite=SUITE.format(boards=set(POOL)))
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return pytester


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    subprocess.run(["git", "-C", str(project.path), "add", "-A"], check=True)
    return project.runpytest_subprocess("--target=sim-pool", *args, timeout=600)


def _cases(path: Path) -> Counter[str]:
    return Counter(case.attrib["name"] for case in ET.parse(path).getroot().iter("testcase"))


def _boards(path: Path) -> dict[str, str]:
    """Test name -> the board named by its junit property."""
    out: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        props = {p.attrib["name"]: p.attrib["value"] for p in case.iter("property")}
        out[case.attrib["name"]] = props.get("board", "")
    return out


EXPECTED = Counter([*(f"test_many[{i}]" for i in range(12)), "test_fails", "test_board_named"])


def test_a_pool_spreads_the_suite_and_names_each_board(project: pytest.Pytester) -> None:
    res = run(project, "--junitxml=j.xml")
    assert res.ret == ExitCode.TESTS_FAILED
    res.assert_outcomes(passed=13, failed=1)
    res.stdout.fnmatch_lines(["collected 14 items", "*hil: pool sim-pool*",
                              "FAILED test_suite.py::test_fails on board hil-sim-jetson-*"])
    assert _cases(project.path / "j.xml") == EXPECTED
    boards = _boards(project.path / "j.xml")
    assert set(boards.values()) == set(POOL)  # every board ran a part, every case names one
    import json

    results = [json.loads(p.read_text()) for p in
               (project.path / "reports" / "allure-results").glob("*-result.json")]
    assert len(results) == 14
    for result in results:
        params = {p["name"]: p["value"] for p in result["parameters"]}
        assert params["target"] == "'sim-pool'"
        assert params["board"].strip("'") == boards[result["name"]]


def test_a_board_with_sshd_stopped_is_quarantined_and_the_others_run_its_share(
        project: pytest.Pytester, pool_rig: Rig) -> None:
    with pool_rig.pool[2].sshd_stopped():
        res = run(project, "--junitxml=j.xml")
    res.stdout.fnmatch_lines(["hil: board 'hil-sim-jetson-2' quarantined for this session: "
                              "?unreachable? cannot connect*Connection refused*"])
    assert res.ret == ExitCode.TESTS_FAILED  # as if every test ran: one fails
    res.assert_outcomes(passed=13, failed=1)
    assert _cases(project.path / "j.xml") == EXPECTED  # none lost, none twice
    assert set(_boards(project.path / "j.xml").values()) == {"hil-sim-jetson-1", "hil-sim-jetson-3"}


def test_no_healthy_board_is_the_infrastructure_code(project: pytest.Pytester,
                                                     pool_rig: Rig) -> None:
    with pool_rig.pool[1].sshd_stopped(), pool_rig.pool[2].sshd_stopped(), \
            pool_rig.pool[3].sshd_stopped():
        res = run(project)
    assert res.ret == ExitCode.UNREACHABLE
    res.stdout.fnmatch_lines(["*no healthy board in pool 'sim-pool': hil-sim-jetson-1: "
                              "?unreachable?*hil-sim-jetson-3: ?unreachable?*"])


def test_shards_of_a_pool_together_run_every_test_once(project: pytest.Pytester) -> None:
    run(project, "-p", "no:randomly")  # durations recorded: the shards balance by them
    seen: Counter[str] = Counter()
    for shard in (1, 2, 3):
        res = run(project, f"--hil-shard={shard}/3", f"--junitxml=s{shard}.xml")
        assert res.ret in (ExitCode.OK, ExitCode.TESTS_FAILED)
        part = _cases(project.path / f"s{shard}.xml")
        assert part, f"shard {shard}/3 ran nothing"
        seen.update(part)
        # What a CI shard job uploads: its Allure results.
        shutil.copytree(project.path / "reports" / "allure-results",
                        project.path / "shards" / f"s{shard}" / "allure-results")
    assert seen == EXPECTED
    # hil report merges the shards' folders into one report's input.
    from hil.backends.base import Progress
    from hil.report.html import Stager, load_categories

    stager = Stager(project.path / "stage", Progress(quiet=True))
    for shard in (1, 2, 3):
        stager.add_folder(project.path / "shards" / f"s{shard}" / "allure-results")
    staged = stager.finish(load_categories(REPO), None)
    assert staged.targets["sim-pool"].statuses == {"passed": 13, "failed": 1}


def test_n2_on_each_board_runs_every_test_once(project: pytest.Pytester) -> None:
    res = run(project, "-n", "2", "--junitxml=j.xml")
    assert res.ret == ExitCode.TESTS_FAILED
    res.assert_outcomes(passed=13, failed=1)
    assert _cases(project.path / "j.xml") == EXPECTED


# -- failure attribution -------------------------------------------------------------------

ATTRIBUTION_SUITE = """
import json
import os


def test_a():
    pass


def test_b():
    pass


def test_calibration():
    # Each board's calibration file: hil-sim-jetson-2's is wrong.
    with open(f"calib/{os.environ['HIL_BOARD']}.json") as fh:
        assert json.load(fh)["gain"] == 1.0


def test_c():
    pass


def test_flaky():
    assert os.environ["HIL_ATTEMPT"] != "1", "fails on its first attempt only"


def test_product():
    assert 2 + 2 == 5
"""


def test_confirm_failures_labels_board_specific_flaky_and_product(
        project: pytest.Pytester) -> None:
    (project.path / "test_suite.py").unlink()
    project.makepyfile(test_attr=ATTRIBUTION_SUITE)
    calib = project.path / "calib"
    calib.mkdir()
    for board in POOL:
        gain = 0.5 if board == "hil-sim-jetson-2" else 1.0
        (calib / f"{board}.json").write_text(f'{{"gain": {gain}}}\n')
    # No durations recorded: file order, two tests a board (calibration on board 2, the
    # flaky and the product failure on board 3).
    res = run(project, "--hil-confirm-failures", "-p", "no:cacheprovider", "--junitxml=j.xml")
    assert res.ret == ExitCode.TESTS_FAILED  # the first run's outcomes: counts as failed
    res.assert_outcomes(passed=3, failed=3)
    res.stdout.fnmatch_lines([
        "*hil: confirming 3 failure(s)*",
        "failure attribution (--hil-confirm-failures):",
        "  BOARD-SPECIFIC: test_attr.py::test_calibration (failed on hil-sim-jetson-2; re-run "
        "on hil-sim-jetson-2 failed; re-run on hil-sim-jetson-3 passed)",
        "  FLAKY: test_attr.py::test_flaky (failed on hil-sim-jetson-3; re-run on "
        "hil-sim-jetson-3 passed; re-run on hil-sim-jetson-1 passed)",
        "  PRODUCT FAILURE: test_attr.py::test_product (failed on hil-sim-jetson-3; re-run on "
        "hil-sim-jetson-3 failed; re-run on hil-sim-jetson-1 failed)",
    ])
    labels = {}
    for case in ET.parse(project.path / "j.xml").getroot().iter("testcase"):
        props = {p.attrib["name"]: p.attrib["value"] for p in case.iter("property")}
        labels[case.attrib["name"]] = props.get("attribution")
    assert labels == {"test_a": None, "test_b": None, "test_c": None,
                      "test_calibration": "board-specific", "test_flaky": "flaky",
                      "test_product": "product failure"}
    import json

    from hil.report.html import load_categories

    results = {r["name"]: r for r in (json.loads(p.read_text()) for p in
               (project.path / "reports" / "allure-results").glob("*-result.json"))}
    calibration = results["test_calibration"]
    assert calibration["statusDetails"]["message"].startswith(
        "hil attribution: board-specific (failed on hil-sim-jetson-2")
    logs = {a["name"]: a["source"] for a in calibration["attachments"]}
    assert set(logs) >= {"re-run on hil-sim-jetson-2 (pytest.log)",
                         "re-run on hil-sim-jetson-3 (pytest.log)"}
    text = (project.path / "reports" / "allure-results"
            / logs["re-run on hil-sim-jetson-2 (pytest.log)"]).read_text()
    assert "assert 0.5 == 1.0" in text
    # Each label falls in its own Allure category (Allure 3 searches the message).
    categories = {c["name"]: c for c in load_categories(REPO)}
    for name, category in (("test_calibration", "Board-specific failures"),
                           ("test_flaky", "Flaky (passed when re-run)"),
                           ("test_product", "Product failures (confirmed on another board)")):
        assert re.search(categories[category]["messageRegex"],
                         results[name]["statusDetails"]["message"])


# -- hold on failure -----------------------------------------------------------------------

HOLD_LINE = re.compile(r"hil: holding (\S+) on (\S+) for (\d+) s \(lease kept\) for (\S+)")


def _board_state(rig: Rig, board: str, container: str) -> tuple[bool, bool, str]:
    """(hold container running, lease lock taken, lease holder line) on a pool board."""
    index = POOL.index(board) + 1
    res = rig.pool[index].ssh(
        f"docker ps -q --filter name=^{container}$ | grep -q . && echo RUNNING; "
        "flock -n /tmp/pytest-hil true || echo LOCKED; "
        "cat /tmp/pytest-hil/lease.holder", timeout=60)
    assert res.returncode == 0, res.stderr
    return "RUNNING" in res.stdout, "LOCKED" in res.stdout, res.stdout


def _released_within(rig: Rig, board: str, container: str, seconds: float) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while True:
        running, locked, _ = _board_state(rig, board, container)
        if not running and not locked:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)  # poll interval while the board-side holder lets go


def _hold_of(res: pytest.RunResult) -> tuple[str, str, str]:
    text = res.stdout.str()
    found = HOLD_LINE.search(text)
    assert found, text[-3000:]
    rerun = next(line for line in text.splitlines() if line.startswith("  re-run:"))
    return found[1], found[2], rerun.split(":", 1)[1].strip()


def test_hold_on_failure_keeps_container_and_lease_until_hil_release(
        project: pytest.Pytester, pool_rig: Rig) -> None:
    res = run(project, "--hil-hold-on-failure", "600")
    assert res.ret == ExitCode.TESTS_FAILED
    container, board, rerun = _hold_of(res)
    res.stdout.fnmatch_lines(["  shell:   ssh -F * -t docker exec -it -w /src hil-hold-* sh",
                              "  release: hil release --target sim-pool"])
    running, locked, holder = _board_state(pool_rig, board, container)
    assert running and locked, holder  # the session ended; both outlive it
    assert '"hold": "test_suite.py::test_fails"' in holder
    # The printed re-run command runs the failed test in that container (no tty here).
    again = subprocess.run(rerun.replace(" -t ", " ").replace(" -it ", " -i "), shell=True,
                           capture_output=True, text=True, timeout=120, check=False)
    assert "1 failed" in again.stdout, again.stdout + again.stderr
    released = subprocess.run(
        [sys.executable, "-m", "hil.cli", "release", "--target", "sim-pool"],
        cwd=project.path, capture_output=True, text=True, timeout=120, check=False)
    assert released.returncode == 0, released.stderr
    assert f"hil release: board {board}: released 1" in released.stdout
    assert _released_within(pool_rig, board, container, 30)


def test_hold_on_failure_ends_by_itself_after_its_ttl(project: pytest.Pytester,
                                                      pool_rig: Rig) -> None:
    res = run(project, "--hil-hold-on-failure", "3")
    container, board, _ = _hold_of(res)
    assert _released_within(pool_rig, board, container, 60)


def test_exitfirst_stops_every_board(project: pytest.Pytester) -> None:
    project.makepyfile(test_suite="""
import time

import pytest


@pytest.mark.parametrize("i", range(30))
def test_slow(i):
    time.sleep(0.3)
    assert i != 11
""")
    res = run(project, "-x", "-p", "no:cacheprovider")  # file order: [11] is board 2's second
    assert res.ret == ExitCode.TESTS_FAILED  # pytest's -x code, no infrastructure fault
    outcomes = res.parseoutcomes()
    assert outcomes["failed"] == 1 and outcomes["passed"] < 29
    res.stdout.fnmatch_lines(["*stopping after 1 failures*"])
    res.stdout.no_fnmatch_line("*infrastructure fault*")


def test_a_crashing_test_on_a_board_fails_as_crashed_and_the_board_resumes(
        project: pytest.Pytester) -> None:
    project.makepyfile(test_suite="""
import os


def test_a1():
    pass


def test_a2():
    pass


def test_b_crashes():
    os._exit(3)


def test_b_after():
    pass


def test_c1():
    pass


def test_c2():
    pass
""")
    res = run(project, "-p", "no:cacheprovider", "--junitxml=j.xml")  # file order: 2 a board
    assert res.ret == ExitCode.TESTS_FAILED
    res.assert_outcomes(passed=5, failed=1)
    res.stdout.fnmatch_lines(["*hil: [[]hil-sim-jetson-2[]] test_suite.py::test_b_crashes crashed "
                              "(exit code 3); resuming with the 1 test(s) after it*",
                              "*crashed: exit code 3*"])
    assert _cases(project.path / "j.xml") == Counter(
        ["test_a1", "test_a2", "test_b_crashes", "test_b_after", "test_c1", "test_c2"])


def test_the_plan_names_the_board_each_test_then_runs_on(project: pytest.Pytester) -> None:
    plan = run(project, "--hil-plan", "-p", "no:cacheprovider")
    planned = dict(re.findall(r"RUN  test_suite\.py::(\S+) -> sim-pool on (\S+) ",
                              plan.stdout.str()))
    assert set(planned) == set(EXPECTED)
    run(project, "-p", "no:cacheprovider", "--junitxml=j.xml")
    assert _boards(project.path / "j.xml") == planned


def test_a_board_lost_mid_run_has_its_unfinished_tests_run_on_another(
        project: pytest.Pytester, pool_rig: Rig) -> None:
    import threading
    import time

    project.makepyfile(test_suite="""
import os
import time


def test_a1():
    pass


def test_a2():
    pass


def test_b_hangs_on_board_2():
    if os.environ["HIL_BOARD"] == "hil-sim-jetson-2":
        time.sleep(300)  # until the operator kills the board's container


def test_b_after():
    pass


def test_c1():
    pass


def test_c2():
    pass
""")
    board2 = pool_rig.pool[2]
    killed: list[str] = []

    def kill_board_2_run() -> None:
        # The hanging test's container on board 2, killed as `docker kill` (or an OOM) would.
        # Once the worker has recorded the hanging test's start on the board.
        # Only this session's record: an earlier session of the same test left its own.
        record = (f"$(find ~/hil-tests/{project.path.name}/.hil-out -name events.jsonl "
                  f"-newermt @{int(started)} 2>/dev/null)")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            res = board2.ssh(f"grep -hs test_b_hangs_on_board_2 {record} </dev/null | "
                             "grep -q logstart && "
                             "docker ps -q --filter label=io.pytest-hil.run", timeout=30)
            if res.stdout.split():
                board2.ssh(f"docker kill {res.stdout.split()[0]}", timeout=30)
                killed.append(res.stdout.split()[0])
                return
            time.sleep(0.3)  # poll interval until the board's container exists

    started = time.time() - 1
    killer = threading.Thread(target=kill_board_2_run)
    killer.start()
    res = run(project, "-p", "no:cacheprovider", "--junitxml=j.xml")  # file order: 2 a board
    killer.join()
    assert killed
    res.stdout.fnmatch_lines(["*hil: board 'hil-sim-jetson-2' lost mid-run (run-lost); its 2 "
                              "unfinished test(s) run on 'hil-sim-jetson-*'"])
    assert res.ret == ExitCode.OK  # as if every test ran: all of them passed
    res.assert_outcomes(passed=6)
    assert _cases(project.path / "j.xml") == Counter(
        ["test_a1", "test_a2", "test_b_hangs_on_board_2", "test_b_after", "test_c1", "test_c2"])
    assert _boards(project.path / "j.xml")["test_b_after"] != "hil-sim-jetson-2"
