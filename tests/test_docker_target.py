"""The container execution core on the rig's colima engine: real images, real containers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.sim import Rig

pytest_plugins = ["pytester"]

DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY targets/requirements.txt /opt/req.txt
RUN python3 -m venv /opt/v && /opt/v/bin/pip install -q --disable-pip-version-check -r /opt/req.txt
ENV PATH=/opt/v/bin:$PATH
"""
REQUIREMENTS = "pytest\nallure-pytest\n"

TESTS = """
import os, time
import pytest

def test_passes():
    assert os.environ["HIL_TARGET"] == "box"

def test_fails():
    assert 1 == 2

@pytest.mark.tier2
def test_gpu():
    pass

@pytest.mark.parametrize("value", ["with space", "br[ack]et"])
def test_ids(value):
    assert value
"""


def target_toml(rig: Rig, extra: str = "") -> str:
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
        """) + extra


@pytest.fixture
def project(pytester: pytest.Pytester, sim_rig: Rig) -> pytest.Pytester:
    """A small project whose target 'box' runs on the rig's colima engine."""
    (pytester.path / "targets").mkdir()
    (pytester.path / "targets" / "Dockerfile").write_text(DOCKERFILE)
    (pytester.path / "targets" / "requirements.txt").write_text(REQUIREMENTS)
    (pytester.path / "targets" / "box.toml").write_text(target_toml(sim_rig))
    pytester.makeconftest("")
    return pytester


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_subprocess("--target=box", *args, timeout=600)


def labelled_containers(rig: Rig) -> list[str]:
    out = subprocess.run(
        ["docker", "-H", rig.colima_host, "ps", "-a", "-q", "--filter", "label=io.pytest-hil.run"],
        capture_output=True, text=True, check=True)
    return out.stdout.split()


def run_dirs(project: pytest.Pytester) -> list[Path]:
    return sorted((project.path / "reports" / "runs").iterdir())


@pytest.mark.parametrize(
    ("source", "args", "code"),
    [
        ("def test_ok(): pass", (), 0),
        ("def test_bad(): assert 0", (), 1),
        ("import nosuchmodule_xyz\ndef test_x(): pass", (), 2),
        ("def test_ok(): pass", ("-k", "test_ok and ("), 4),
        ("", (), 5),
    ],
    ids=["passed", "failed", "collection-error", "remote-usage-error", "no-tests"],
)
def test_exit_code_is_the_container_pytest_exit_code(
    project: pytest.Pytester, source: str, args: tuple[str, ...], code: int
) -> None:
    project.makepyfile(test_a=source)
    result = run(project, *args)
    assert result.ret == code, result.stdout.str()[-3000:]


def test_outcomes_reasons_and_ids_come_back_as_if_local(project: pytest.Pytester) -> None:
    project.makepyfile(test_a=TESTS)
    result = run(project, "-rA", "-v", "--junitxml=junit.xml")
    assert result.ret == 1
    result.assert_outcomes(passed=3, failed=1, skipped=1)
    result.stdout.fnmatch_lines([
        "*test_a.py::test_ids[[]with space[]] PASSED*",
        "*test_a.py::test_ids[[]br[[]ack[]]et[]] PASSED*",
        "SKIPPED [[]1[]] test_a.py:*: tier2 (CUDA GPU) test; target 'box' serves tier 1",
        "FAILED test_a.py::test_fails - assert 1 == 2",
    ])
    junit = (project.path / "junit.xml").read_text()
    assert 'name="test_fails"' in junit and "<failure" in junit
    assert 'tests="5"' in junit
    run_dir = run_dirs(project)[-1]
    assert (run_dir / "junit.xml").is_file() and (run_dir / "pytest.log").is_file()
    timings = json.loads((run_dir / "timings.json").read_text())
    assert set(timings) >= {"preflight", "image", "container start", "tests", "fetch"}
    result.stdout.fnmatch_lines(["phases: preflight *s | image *s | container start *s | tests *s | fetch *s"])
    allure = [json.loads(p.read_text()) for p in (project.path / "reports" / "allure-results").glob("*-result.json")]
    assert len(allure) == 5
    assert all({"name": "target", "value": "'box'"} in r["parameters"] for r in allure)


OUTPUT_TESTS = """
import pytest

@pytest.fixture
def noisy():
    print("fixture setup says hi")
    yield
    print("fixture teardown says bye")

def test_quiet():
    pass

def test_prints():
    print("call output")

def test_noisy_fixture(noisy):
    pass

def test_property(record_property):
    record_property("answer", 42)

def test_fails():
    print("before failing")
    assert 1 == 2
"""


def _junit_without_times(path: Path) -> str:
    import xml.etree.ElementTree as ET

    tree = ET.parse(path)
    for element in tree.iter():
        for name in ("time", "timestamp", "hostname"):
            element.attrib.pop(name, None)
    return ET.tostring(tree.getroot(), encoding="unicode")


def _summary_without_times(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines
            if not re.search(r"\d+\.\d+s|^results: |^hil: running|generated xml file", line)]


def test_compact_events_give_the_junit_and_summary_of_full_reports(
    project: pytest.Pytester, sim_rig: Rig
) -> None:
    project.makepyfile(test_a=OUTPUT_TESTS)
    seen: dict[str, tuple[str, list[str]]] = {}
    for form in ("full", "compact"):
        (project.path / "targets" / "box.toml").write_text(
            target_toml(sim_rig) + f'[env]\nHIL_EVENTS = "{form}"\n')
        result = run(project, "-rA", "-v", "-o", "junit_logging=all",
                     f"--junitxml=junit-{form}.xml")
        assert result.ret == 1, result.stdout.str()[-3000:]
        events = (run_dirs(project)[-1] / "events.jsonl").read_text()
        assert ('"ev":"finish"' in events) == (form == "compact")
        seen[form] = (_junit_without_times(project.path / f"junit-{form}.xml"),
                      _summary_without_times(result))
    assert seen["compact"][0] == seen["full"][0]
    assert seen["compact"][1] == seen["full"][1]
    result.stdout.fnmatch_lines(["*PASSES*", "*Captured stdout call*", "call output",
                                 "PASSED test_a.py::test_quiet"])


def test_a_run_replaces_the_last_allure_results_unless_kept(project: pytest.Pytester) -> None:
    project.makepyfile(test_a="def test_one(): pass\ndef test_two(): pass")
    results = project.path / "reports" / "allure-results"
    assert run(project).ret == 0
    first = {p.name for p in results.glob("*-result.json")}
    assert len(first) == 2
    assert run(project).ret == 0
    second = {p.name for p in results.glob("*-result.json")}
    assert len(second) == 2 and not first & second
    assert [p.name for p in (project.path / "reports").iterdir() if p.name.startswith(".")] == []
    assert run(project, "--hil-keep-results").ret == 0
    assert len(list(results.glob("*-result.json"))) == 4


def test_no_allure_option_leaves_no_results_in_the_run_folder(project: pytest.Pytester) -> None:
    project.makepyfile(test_a="def test_one(): pass\ndef test_two(): assert 0")
    assert run(project, "--hil-no-allure").ret == 1
    (folder,) = run_dirs(project)
    assert (folder / "junit.xml").is_file()  # the run itself is kept
    assert list(folder.rglob("*-result.json")) == []
    assert not (project.path / "reports" / "allure-results").exists()


def test_the_plan_of_a_shard_shows_the_tests_the_shard_runs(project: pytest.Pytester) -> None:
    project.makepyfile(test_s="import pytest\n\n@pytest.mark.parametrize('i', range(12))\n"
                              "def test_p(i):\n    pass\n")
    # Durations recorded by earlier runs, of a few milliseconds each as quick tests have.
    cache = project.path / ".pytest_cache" / "v" / "hil" / "durations"
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({f"test_s.py::test_p[{i}]": 0.001 + 0.0007 * i
                                 for i in range(12)}))
    for shard in ("1/3", "2/3", "3/3"):
        plan = run(project, f"--hil-shard={shard}", "--hil-plan")
        assert plan.ret == 0
        planned = set(re.findall(r"RUN  test_s\.py::(test_p\[\d+\])", plan.stdout.str()))
        res = run(project, f"--hil-shard={shard}", f"--junitxml=s{shard[0]}.xml")
        assert res.ret == 0
        ran = {case.attrib["name"] for case in
               ET.parse(project.path / f"s{shard[0]}.xml").getroot().iter("testcase")}
        assert ran and planned == ran, shard


def test_exitfirst_stops_in_the_container(project: pytest.Pytester) -> None:
    project.makepyfile(test_a="def test_1(): assert 0\ndef test_2(): assert 0\ndef test_3(): pass")
    result = run(project, "-x")
    assert result.ret == 1
    result.assert_outcomes(failed=1)


def test_last_failed_reruns_only_the_failed_test(project: pytest.Pytester) -> None:
    project.makepyfile(test_a="def test_good(): pass\ndef test_bad(): assert 0")
    assert run(project).ret == 1
    result = run(project, "--lf", "-v")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_a.py::test_bad FAILED*"])
    result.stdout.no_fnmatch_line("*test_good*")


def test_results_stream_live_while_a_later_test_still_runs(project: pytest.Pytester) -> None:
    # The second test waits until the first test's result shows in the local
    # output: it can only pass if results stream back while tests still run.
    project.makepyfile(test_a="""
        import pathlib, time
        def test_first():
            pass
        def test_second():
            deadline = time.monotonic() + 120
            go = pathlib.Path("/hil/out/go")
            while not go.exists():
                assert time.monotonic() < deadline, "the controller never saw test_first"
                time.sleep(0.05)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--target=box", "-v", "-p", "no:cacheprovider"],
        cwd=project.path, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        if "test_first PASSED" in line:
            (run_dirs(project)[-1] / "go").touch()
    assert proc.wait(timeout=300) == 0, "".join(seen)
    assert any("test_second PASSED" in line for line in seen)


def test_image_is_rebuilt_only_when_a_hash_input_changes(project: pytest.Pytester) -> None:
    project.makepyfile(test_a="def test_ok(): pass")
    run(project)  # whatever state the engine had: now the image exists
    again = run(project)
    again.stdout.fnmatch_lines(["hil: image hil-deps:* is up to date (content hash)"])
    project.makepyfile(test_a="def test_ok(): assert 1")  # a test edit: no build
    run(project).stdout.fnmatch_lines(["hil: image hil-deps:* is up to date (content hash)"])
    (project.path / "targets" / "requirements.txt").write_text(REQUIREMENTS + "# changed " + str(time.time()) + "\n")
    changed = run(project)
    assert changed.ret == 0
    changed.stdout.fnmatch_lines(["hil: building hil-deps:* from targets/Dockerfile (1 input file(s))"])
    forced = run(project, "--hil-rebuild")
    forced.stdout.fnmatch_lines(["hil: building hil-deps:*"])


def test_broken_dockerfile_gives_the_build_failed_code_with_the_log_tail(project: pytest.Pytester) -> None:
    (project.path / "targets" / "Dockerfile").write_text(
        DOCKERFILE + "RUN echo 'about to break' && exit 3\n")
    project.makepyfile(test_a="def test_ok(): pass")
    result = run(project)
    assert result.ret == 17
    result.stdout.fnmatch_lines([
        "hil: error: target 'box': building hil-deps:* failed: *",
        "*about to break*",
    ])
    assert "about to break" in (run_dirs(project)[-1] / "build.log").read_text()
    infra = [json.loads(p.read_text()) for p in
             (project.path / "reports" / "allure-results").glob("*-result.json")]
    assert [r["status"] for r in infra] == ["broken"]
    assert infra[0]["statusDetails"]["message"].startswith("hil infrastructure fault [build-failed] (exit 17)")


def test_unreachable_engine_names_everything_tried(project: pytest.Pytester, sim_rig: Rig) -> None:
    (project.path / "targets" / "box.toml").write_text(
        target_toml(sim_rig).replace(sim_rig.colima_host, "unix:///nonexistent/docker.sock"))
    project.makepyfile(test_a="def test_ok(): pass")
    result = run(project)
    assert result.ret == 13
    result.stdout.fnmatch_lines([
        "hil: error: target 'box': no Docker engine answered; tried unix:///nonexistent/docker.sock "
        "(the target's docker.engine: no such socket)*"])


def _wait_for_line(proc: subprocess.Popen[str], needle: str, seen: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if needle in line:
            return
    raise AssertionError(f"never saw {needle!r}:\n{''.join(seen)}")


SLOW = """
import time
def test_quick():
    pass
def test_slow():
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.1)
"""


@pytest.fixture
def popen_run(project: pytest.Pytester) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()


def start_slow_run(project: pytest.Pytester, procs: list[subprocess.Popen[str]]
                   ) -> tuple[subprocess.Popen[str], list[str]]:
    """Start a run of SLOW and return once its first test has passed (its slow test runs)."""
    project.makepyfile(test_a=SLOW)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "--target=box", "-v"],
                            cwd=project.path, stdout=subprocess.PIPE, text=True)
    procs.append(proc)
    seen: list[str] = []
    _wait_for_line(proc, "test_quick PASSED", seen)
    return proc, seen


def test_a_run_past_its_timeout_names_the_test_it_was_running(project: pytest.Pytester,
                                                               sim_rig: Rig) -> None:
    (project.path / "targets" / "box.toml").write_text(
        target_toml(sim_rig, "[timeouts]\nrun = 15\n"))
    project.makepyfile(test_a=SLOW)
    result = run(project)
    assert result.ret == 20
    result.stdout.fnmatch_lines(["*hil: error: target 'box': the run exceeded 15 s* while "
                                 "running test_a.py::test_slow*"])
    error = json.loads((run_dirs(project)[-1] / "error.json").read_text())
    assert error["message"].endswith("while running test_a.py::test_slow")


def test_interrupt_removes_the_container_and_keeps_partial_results(
    project: pytest.Pytester, sim_rig: Rig, popen_run: list[subprocess.Popen[str]]
) -> None:
    proc, _ = start_slow_run(project, popen_run)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 2
    assert labelled_containers(sim_rig) == []
    events = (run_dirs(project)[-1] / "events.jsonl").read_text()
    assert '"nodeid":"test_a.py::test_quick","location"' in events


def test_killed_container_is_run_lost_naming_the_running_test(
    project: pytest.Pytester, sim_rig: Rig, popen_run: list[subprocess.Popen[str]]
) -> None:
    proc, seen = start_slow_run(project, popen_run)
    deadline = time.monotonic() + 60
    while not labelled_containers(sim_rig):
        assert time.monotonic() < deadline
    subprocess.run(["docker", "-H", sim_rig.colima_host, "kill", *labelled_containers(sim_rig)],
                   check=True, capture_output=True)
    out, _ = proc.communicate(timeout=120)
    text = "".join(seen) + out
    assert proc.returncode == 19, text
    assert "while running test_a.py::test_slow" in text
    assert labelled_containers(sim_rig) == []
    run_dir = run_dirs(project)[-1]
    assert json.loads((run_dir / "error.json").read_text())["kind"] == "run-lost"
    junit_local = [json.loads(p.read_text()) for p in
                   (project.path / "reports" / "allure-results").glob("*-result.json")]
    assert {r["name"] for r in junit_local} >= {"test_quick", "infrastructure: box"}


def test_out_of_memory_is_run_lost_naming_the_test(project: pytest.Pytester, sim_rig: Rig) -> None:
    (project.path / "targets" / "box.toml").write_text(
        target_toml(sim_rig, extra='memory = "48m"\n'))
    project.makepyfile(test_a="""
        def test_small():
            pass
        def test_hog():
            blocks = []
            for _ in range(64):
                blocks.append(bytearray(16 * 1024 * 1024))
    """)
    result = run(project)
    assert result.ret == 19, result.stdout.str()[-2000:]
    result.stdout.fnmatch_lines([
        "*infrastructure fault [[]run-lost[]] (exit 19): target 'box': the test container was "
        "OOM-killed (memory limit 48m) while running test_a.py::test_hog"])
    # The test that finished just before is kept: terminal, junit and Allure alike.
    result.stdout.fnmatch_lines(["*1 passed*"])
    junit = (run_dirs(project)[-1] / "junit.xml").read_text()
    assert 'name="test_small"' in junit and "test_hog" not in junit
    allure = [json.loads(p.read_text()) for p in
              (project.path / "reports" / "allure-results").glob("*-result.json")]
    assert ("test_small", "passed") in [(r["name"], r["status"]) for r in allure]
    assert labelled_containers(sim_rig) == []


def test_stale_labelled_container_of_a_dead_run_is_removed(project: pytest.Pytester, sim_rig: Rig) -> None:
    subprocess.run(["docker", "-H", sim_rig.colima_host, "create", "--label", "io.pytest-hil.run=old",
                    "--label", f"io.pytest-hil.owner={os.uname().nodename}:999999",
                    sim_rig.base_image, "true"], check=True, capture_output=True)
    project.makepyfile(test_a="def test_ok(): pass")
    result = run(project)
    assert result.ret == 0
    assert labelled_containers(sim_rig) == []


REPO = Path(__file__).resolve().parents[1]


def test_product_suites_run_on_sim_colima(sim_rig: Rig, tmp_path: Path) -> None:
    """The shipped suites, in the shipped image, on the rig's colima engine."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--target=sim-colima", "suites", "-q", "-rs",
         "-p", "no:cacheprovider", f"--hil-reports={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "tier2 (CUDA GPU) test; target 'sim-colima' serves tier 1" in proc.stdout
    assert " passed" in proc.stdout and " failed" not in proc.stdout
    results = list((tmp_path / "allure-results").glob("*-result.json"))
    assert results and all("'sim-colima'" in p.read_text() for p in results)
