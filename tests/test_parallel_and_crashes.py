"""-n on container targets, container-side start-up errors, and tests that crash the interpreter.

The end-to-end tests run real containers on the rig's colima engine and its
simulated Jetson, each for both targets; the first tests check the event logic
that xdist's interleaving and the crash report rest on, without a rig.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from conftest import IMAGE_REQUIREMENTS
from hil.backends.base import describe_exit
from hil.session.args import remote_args
from hil.session.events import EventFeeder
from hil.worker import EventStream, decode_resume, encode_resume
from hil.worker.protocol import PROTOCOL

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
TARGETS = ["sim-colima", "sim-jetson"]


# -- the event logic, without a rig --------------------------------------------------------

def _report(nodeid: str, when: str, outcome: str = "passed", **extra: Any) -> pytest.TestReport:
    """A passed phase as xdist's controller hands it on: with the workers' extra attributes."""
    location = (nodeid.split("::")[0], 1, nodeid.split("::")[1])
    report = pytest.TestReport(nodeid, location, {nodeid: 1}, outcome, extra.pop("longrepr", None),
                               when, [], 0.5, 10.0, 10.5, [], **{"$report_type": "TestReport"})
    report.worker_id = "gw0"  # type: ignore[attr-defined]
    report.item_index = 0  # type: ignore[attr-defined]
    report.testrun_uid = "abc"  # type: ignore[attr-defined]
    report.node = object()  # type: ignore[attr-defined]  # xdist's WorkerController
    return report


def test_interleaved_tests_of_xdist_workers_each_travel_compact(
        pytester: pytest.Pytester) -> None:
    config = pytester.parseconfigure("-p", "no:cacheprovider", "-p", "no:labgrid")
    channel = io.StringIO()
    stream = EventStream(channel, compact=True)
    stream.pytest_configure(config)
    stream.workers = 2  # what hello says under -n 2
    a, b = "test_a.py::test_a", "test_b.py::test_b"
    stream.pytest_runtest_logstart(a, (a.split("::")[0], 1, "test_a"))
    stream.pytest_runtest_logstart(b, (b.split("::")[0], 1, "test_b"))
    stream.pytest_runtest_logreport(_report(a, "setup"))
    stream.pytest_runtest_logreport(_report(b, "setup"))
    stream.pytest_runtest_logreport(_report(b, "call", "failed", longrepr="assert 0"))
    stream.pytest_runtest_logreport(_report(a, "call"))
    stream.pytest_runtest_logreport(_report(a, "teardown"))
    stream.pytest_runtest_logfinish(a, (a.split("::")[0], 1, "test_a"))
    stream.pytest_runtest_logreport(_report(b, "teardown"))
    stream.pytest_runtest_logfinish(b, (b.split("::")[0], 1, "test_b"))
    stream.flush()
    events = [json.loads(line) for line in [*filter(None, channel.getvalue().splitlines())]]
    kinds = [(e["ev"], e.get("nodeid") or e.get("report", {}).get("nodeid")) for e in events[1:]]
    # test_a's three passed phases in one finish event despite test_b's reports between them;
    # test_b's passed set-up goes out in full before its failed call, in order.
    assert kinds == [("logstart", a), ("logstart", b), ("logreport", b), ("logreport", b),
                     ("finish", a), ("finish", b)]
    assert [p[0] for p in events[-2]["passed"]] == ["setup", "call", "teardown"]
    sent = [e["report"] for e in events if e["ev"] == "logreport"]
    assert all(not {"node", "worker_id", "item_index", "testrun_uid"} & set(r) for r in sent)


def test_the_running_tests_under_xdist_are_those_started_and_not_finished(
        pytester: pytest.Pytester) -> None:
    config = pytester.parseconfigure("-p", "no:cacheprovider", "-p", "no:labgrid")
    session = pytest.Session.from_config(config)
    session.items = []  # as Controller.pytest_collection leaves it (pytest 7 has none)
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        terminal._session = session  # as its pytest_sessionstart sets it
    feeder = EventFeeder(config, session)
    ids = ["t.py::test_0", "t.py::test_1", "t.py::test_2"]
    feeder.handle({"ev": "hello", "protocol": PROTOCOL, "workers": 2})
    feeder.handle({"ev": "collection_finish", "nodeids": ids})
    assert feeder.running is None  # no collection-order guess: workers take tests as they go
    for nodeid in ids[1:]:
        feeder.handle({"ev": "logstart", "nodeid": nodeid, "location": ["t.py", 0, "t"]})
    assert feeder.running == "t.py::test_1, t.py::test_2"
    feeder.handle({"ev": "logfinish", "nodeid": ids[1], "location": ["t.py", 0, "t"]})
    assert feeder.running == "t.py::test_2"


def test_the_resume_payload_and_exit_descriptions() -> None:
    ids = [f"tests/test_{i}.py::test_x[{i}-a b]" for i in range(2000)]
    payload = encode_resume(ids, "t.py::test_crash", "exit code 3", 41)
    assert len(payload) < 20_000  # travels as an environment variable on a docker command line
    assert decode_resume(payload) == {"ids": ids, "after": "t.py::test_crash",
                                      "how": "exit code 3", "n": 41}
    assert [describe_exit(c) for c in (3, 0, 139, 134, 255)] == [
        "exit code 3", "exit code 0", "signal SIGSEGV", "signal SIGABRT", "exit code 255"]
    root = Path("/p")
    assert remote_args(["-n", "4", "--dist=loadfile", "--hil-max-resumes", "2", "--maxprocesses",
                        "3"], root, root) == ["-n", "4", "--dist=loadfile", "--maxprocesses", "3"]


# -- end to end on the rig -----------------------------------------------------------------

@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def project(pytester: pytest.Pytester, sim_rig: Any) -> pytest.Pytester:
    """A git checkout with the repo's image recipe, sim-colima, sim-jetson (syncing to a
    folder of its own) and 'cpu', a local target serving tier 1 on any host."""
    root = pytester.path
    for rel in ("targets/Dockerfile", *IMAGE_REQUIREMENTS, "targets/sim-colima.toml"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    jetson = (REPO / "targets" / "sim-jetson.toml").read_text(encoding="utf-8")
    (root / "targets" / "sim-jetson.toml").write_text(
        re.sub(r'(?m)^remote_dir = .*$', f'remote_dir = "hil-tests/{root.name}/project"', jetson),
        encoding="utf-8")
    (root / "targets" / "cpu.toml").write_text('kind = "local"\ntier = 1\n', encoding="utf-8")
    (root / ".gitignore").write_text("reports/\n__pycache__/\n*.xml\n", encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    pytester.makeconftest("")
    return pytester


def run(project: pytest.Pytester, target: str, *args: str) -> pytest.RunResult:
    """``pytest --target=TARGET ARGS`` in a subprocess, the checkout's files all tracked."""
    subprocess.run(["git", "-C", str(project.path), "add", "-A"], check=True)
    return project.runpytest_subprocess(f"--target={target}", *args, timeout=600)


def last_run(project: pytest.Pytester) -> Path:
    return sorted((project.path / "reports" / "runs").iterdir())[-1]


def junit_cases(path: Path) -> dict[str, str]:
    """Test name -> its outcome in a junit file (failure, skipped, error or passed)."""
    cases: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "skipped", "error")]
        cases[case.attrib["name"]] = kinds[0] if kinds else "passed"
    return cases


def allure_results(project: pytest.Pytester) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in
            (project.path / "reports" / "allure-results").glob("*-result.json")]


MIXED = """
import time
import pytest

@pytest.mark.parametrize("i", range(8))
def test_many(i):
    time.sleep(0.05)

def test_fails():
    assert 1 == 2

def test_prints():
    print("hello from a worker")

@pytest.mark.tier2
def test_gpu():
    pass

@pytest.mark.xfail(reason="known bug")
def test_known():
    assert 0

def test_skips():
    pytest.skip("not today")
"""


def test_n2_gives_the_outcomes_and_exit_code_of_n2_run_locally(
        project: pytest.Pytester, target: str) -> None:
    project.makepyfile(test_mixed=MIXED)
    local = project.runpytest_subprocess("--target=cpu", "-n", "2", "-p", "no:cacheprovider",
                                         "--junitxml=local.xml", timeout=600)
    remote = run(project, target, "-n", "2", "-p", "no:cacheprovider", "-rA",
                 "--junitxml=remote.xml")
    assert local.ret == 1, local.stdout.str()[-3000:]
    assert remote.ret == local.ret, remote.stdout.str()[-3000:]
    assert remote.parseoutcomes() == local.parseoutcomes()
    assert junit_cases(project.path / "remote.xml") == junit_cases(project.path / "local.xml")
    remote.stdout.fnmatch_lines([
        "*hello from a worker*",
        f"SKIPPED [[]1[]] test_mixed.py:*: tier2 (CUDA GPU) test; target '{target}' serves tier 1",
        "FAILED test_mixed.py::test_fails - assert 1 == 2"])
    # xdist's controller ran in the container, with two workers of its own there.
    assert "created: 2/2 workers" in (last_run(project) / "pytest.log").read_text()
    results = allure_results(project)
    assert len(results) == 13
    assert all({"name": "target", "value": repr(target)} in r["parameters"] for r in results)


def test_dist_exitfirst_and_last_failed_travel_with_n(project: pytest.Pytester,
                                                      target: str) -> None:
    project.makepyfile(test_a="def test_bad():\n    assert 0\n\n\ndef test_good():\n    pass\n",
                       test_b="def test_other():\n    pass\n")
    first = run(project, target, "-n", "2", "--dist", "loadfile", "-v")
    assert first.ret == 1, first.stdout.str()[-3000:]
    first.assert_outcomes(passed=2, failed=1)
    assert "LoadFileScheduling" in (last_run(project) / "pytest.log").read_text()
    again = run(project, target, "-n", "2", "--lf", "-v")
    assert again.ret == 1, again.stdout.str()[-3000:]
    again.assert_outcomes(failed=1)
    again.stdout.no_fnmatch_line("*test_good*")
    local = project.runpytest_subprocess("--target=cpu", "-n", "2", "-x", "-p",
                                         "no:cacheprovider", "test_a.py", timeout=600)
    stopped = run(project, target, "-n", "2", "-x", "-p", "no:cacheprovider", "test_a.py")
    assert stopped.ret == local.ret == 2, stopped.stdout.str()[-3000:]
    assert stopped.parseoutcomes()["failed"] == 1
    stopped.stdout.fnmatch_lines(["*stopping after 1 failures*"])


CONFTEST_LOCAL_OPTION = """
import os

def pytest_addoption(parser):
    if not os.path.isdir("/hil/out"):  # only outside the container
        parser.addoption("--only-here", action="store_true")
"""


@pytest.mark.parametrize(("args", "message"), [
    (("--only-here",), "*unrecognized arguments: --only-here*"),
    (("-p", "hil.errors"), '*Error importing plugin "hil.errors"*'),
], ids=["unknown-option", "plugin-import-error"])
def test_a_container_side_start_up_error_gives_pytest_code_and_message(
        project: pytest.Pytester, target: str, args: tuple[str, ...], message: str) -> None:
    project.makeconftest(CONFTEST_LOCAL_OPTION)
    project.makepyfile(test_a="def test_ok():\n    pass\n")
    result = run(project, target, *args)
    assert result.ret == 4, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines([message, "hil: pytest in the container stopped before its "
                                 "session started (exit 4)*"])
    assert "run-lost" not in result.stdout.str()
    assert not (last_run(project) / "error.json").exists()


CRASHING = """
import os
import signal
import sys

def test_before():
    pass

def test_crashes():
    print("written before the crash")
    sys.stderr.write("and on stderr\\n")
    {how}

def test_after_1():
    pass

def test_after_2():
    pass
"""


@pytest.mark.parametrize(("how", "outcome"), [
    ("os._exit(3)", "crashed: exit code 3"),
    ("os.kill(os.getpid(), signal.SIGSEGV)", "crashed: signal SIGSEGV"),
], ids=["exit", "segv"])
def test_a_crashing_test_fails_as_crashed_and_the_tests_after_it_run(
        project: pytest.Pytester, target: str, how: str, outcome: str) -> None:
    project.makepyfile(test_crash=CRASHING.format(how=how),
                       test_later="def test_later():\n    pass\n")
    result = run(project, target, "-p", "no:cacheprovider", "--junitxml=junit.xml")
    assert result.ret == 1, result.stdout.str()[-4000:]
    assert result.parseoutcomes() == {"passed": 4, "failed": 1}
    result.stdout.fnmatch_lines([
        f"hil: test_crash.py::test_crashes crashed ({outcome[9:]}); resuming with the 3 "
        "test(s) after it in a fresh container (1 of 3)",
        "*- Captured stdout call -*", "written before the crash",
        "*- Captured stderr call -*", "and on stderr",
        f"FAILED test_crash.py::test_crashes - {outcome}"])
    if "SIGSEGV" in outcome:  # Python's fault handler, on the container's stderr
        result.stdout.fnmatch_lines(["*- Captured stderr (the container's) -*",
                                     "Fatal Python error: Segmentation fault"])
    # One junit file, one Allure result per test, over both containers.
    assert junit_cases(project.path / "junit.xml") == {
        "test_before": "passed", "test_crashes": "failure", "test_after_1": "passed",
        "test_after_2": "passed", "test_later": "passed"}
    results = {r["name"]: r for r in allure_results(project)}
    assert sorted(results) == ["test_after_1", "test_after_2", "test_before", "test_crashes",
                               "test_later"]
    crashed = results["test_crashes"]
    assert (crashed["status"], crashed["statusDetails"]["message"]) == ("failed", outcome)
    assert "ended (" in crashed["statusDetails"]["trace"]
    # Its output so far is attached, as allure-pytest attaches a test's captured output.
    folder = project.path / "reports" / "allure-results"
    attached = {a["name"]: (folder / a["source"]).read_text() for a in crashed["attachments"]}
    assert "written before the crash" in attached["stdout"]
    assert {"name": "target", "value": repr(target)} in crashed["parameters"]
    assert not (last_run(project) / "error.json").exists()


LIMIT = """
import os

def test_crash_1():
    os._exit(3)

def test_ok():
    pass

def test_crash_2():
    os._exit(4)

def test_not_run_1():
    pass

def test_not_run_2():
    pass
"""


def test_past_the_resume_limit_the_run_is_lost_naming_the_tests_not_run(
        project: pytest.Pytester, target: str) -> None:
    project.makepyfile(test_limit=LIMIT)
    result = run(project, target, "-p", "no:cacheprovider", "--hil-max-resumes", "1")
    assert result.ret == 19, result.stdout.str()[-4000:]
    assert result.parseoutcomes() == {"passed": 1, "failed": 2}
    result.stdout.fnmatch_lines([
        f"hil: error: target '{target}': test_limit.py::test_crash_2 crashed (exit code 4) "
        "after 1 resume(s), the limit (--hil-max-resumes); 2 test(s) not run: "
        "test_limit.py::test_not_run_1, test_limit.py::test_not_run_2"])
    error = json.loads((last_run(project) / "error.json").read_text())
    assert error["kind"] == "run-lost"
    assert error["tail"].splitlines()[1:] == ["test_limit.py::test_not_run_1",
                                              "test_limit.py::test_not_run_2"]


def test_exitfirst_stops_at_a_crashed_test(project: pytest.Pytester, target: str) -> None:
    project.makepyfile(test_limit=LIMIT)
    result = run(project, target, "-p", "no:cacheprovider", "-x")
    assert result.ret == 1, result.stdout.str()[-4000:]
    assert result.parseoutcomes() == {"failed": 1}
    result.stdout.no_fnmatch_line("*resuming*")
