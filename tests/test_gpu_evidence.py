"""GPU evidence of tier2 tests: what a window of samples shows, the verdict, and the
verdicts end to end on the simulated Jetson, whose ``tegrastats`` reports the GR3D
load written in the board's ``~/.hil-sim/gr3d-load``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from conftest import IMAGE_REQUIREMENTS
from hil.evidence.allure import annotate_folder, full_name
from hil.evidence.local import describe, session_pids
from hil.evidence.samples import SampleFeed, reading
from hil.evidence.verdict import IDLE_REASON, evidence, idle_throughout, judge
from hil.sim.face import GR3D_LOAD_FILE
from hil.ssh.telemetry import parse_tegrastats

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
TEGRA_LINE = ("12-03-2026 18:54:00 RAM 2143/7620MB (lfb 2x4MB) SWAP 1472/3810MB (cached 1MB) "
              "CPU [15%@729,off] GR3D_FREQ {load}% cpu@47.7C gpu@48.3C VDD_IN 4675mW/4675mW")


def _tegra(t: float, load: int) -> dict[str, Any]:
    return {"t": t, **parse_tegrastats(TEGRA_LINE.format(load=load))}


# --- what a window shows ---------------------------------------------------------------

def test_readings_come_from_tegrastats_nvidia_smi_and_local_samples() -> None:
    assert reading(_tegra(10.0, 37)) == reading({"t": 10.0, "gpu_util_pct": 37.0})
    assert reading(_tegra(10.0, 37)).mem_mb is None  # type: ignore[union-attr]
    local = reading({"t": 1, "gpu_util_pct": 0.0, "mem_used_mb": 812.5, "context": True,
                     "process_mem_mb": 500.0})
    assert local is not None and local.context is True and local.process_mem_mb == 500.0
    assert reading({"t": 1, "raw": "garbage"}) is None
    assert reading({"gpu_util_pct": 5}) is None  # no time: no place in a window


def test_a_window_is_used_idle_or_unknown_and_only_fail_fails_a_passed_test() -> None:
    feed = SampleFeed()
    for t, load in ((1.0, 0), (2.0, 45), (3.0, 0), (9.0, 0)):
        feed.publish("jetson", _tegra(t, load))
    busy = evidence("t::busy", 1.5, 2.5, feed.window(["jetson"], 1.5, 2.5), ["jetson"])
    idle = evidence("t::idle", 2.5, 3.5, feed.window(["jetson"], 2.5, 3.5), ["jetson"])
    blind = evidence("t::blind", 4.0, 5.0, feed.window(["jetson"], 4.0, 5.0), ["jetson"])
    assert (busy.state, busy.peak_load_pct, busy.context) == ("used", 45.0, None)
    assert (idle.state, idle.peak_load_pct) == ("idle", 0.0)
    assert (blind.state, blind.samples) == ("unknown", 0)
    assert [judge(idle, m, passed=True) for m in ("off", "warn", "fail")] == [
        "recorded", "warned", "failed"]
    assert judge(idle, "fail", passed=False) == "warned"  # its own failure stays
    assert judge(busy, "fail", passed=True) == judge(blind, "fail", passed=True) == "recorded"


def test_a_cuda_context_without_load_is_gpu_use() -> None:
    quick = [reading({"t": 1.0, "gpu_util_pct": 0, "mem_used_mb": 900, "context": True})]
    found = evidence("t::short", 0.5, 1.5, [r for r in quick if r], ["local"])
    assert found.state == "used" and found.context is True
    assert dict(found.properties())["gpu_cuda_context"] == "yes"


def test_a_run_is_idle_throughout_only_when_no_reading_shows_use() -> None:
    quiet = [r for r in (reading(_tegra(t, 0)) for t in (1.0, 2.0)) if r]
    idle = evidence("t::a", 0.5, 2.5, quiet, ["b"])
    assert idle_throughout(quiet, [idle])
    assert not idle_throughout(quiet, [])
    busy = [*quiet, *[r for r in [reading(_tegra(3.0, 1))] if r]]
    assert not idle_throughout(busy, [idle])  # load between tests: the GPU did work


def test_device_memory_above_its_idle_level_is_gpu_use() -> None:
    feed = SampleFeed()
    for t, mem in ((1.0, 500.0), (2.0, 1300.0), (3.0, 530.0)):
        feed.publish("local", {"t": t, "gpu_util_pct": 0.0, "mem_used_mb": mem})
    idle_mem = feed.first_memory(["local"])
    assert idle_mem == 500.0
    held = evidence("t::held", 1.5, 2.5, feed.window(["local"], 1.5, 2.5), ["local"], idle_mem)
    drift = evidence("t::drift", 2.5, 3.5, feed.window(["local"], 2.5, 3.5), ["local"], idle_mem)
    assert (held.state, held.mem_rise_mb) == ("used", 800.0)
    assert (drift.state, drift.mem_rise_mb) == ("idle", 30.0)


def test_waiting_for_the_sample_after_a_window_is_bounded() -> None:
    feed = SampleFeed()
    feed.open("board")
    feed.publish("board", _tegra(1.0, 0))
    assert not feed.wait_past(5.0, ["board"], timeout=0.05)
    feed.publish("board", _tegra(6.0, 0))
    assert feed.wait_past(5.0, ["board"], timeout=0.05)
    feed.close("board")
    assert feed.wait_past(99.0, ["board"], timeout=0.05)  # a stopped sampler is not awaited


def test_allure_results_get_the_evidence_of_their_own_case(tmp_path: Path) -> None:
    nodeid = "suites/tier2/test_x.py::TestA::test_run[fp16]"
    assert full_name(nodeid) == "suites.tier2.test_x.TestA#test_run"
    feed = SampleFeed()
    feed.publish("b", _tegra(10.5, 0))
    idle = evidence(nodeid, 10.0, 11.0, feed.window(["b"], 10.0, 11.0), ["b"])
    idle = type(idle)(**{**idle.as_dict(), "verdict": "failed"})
    for name, start in (("a", 10_000), ("b", 20_000)):  # two cases, told apart by time
        (tmp_path / f"{name}-result.json").write_text(json.dumps({
            "fullName": "suites.tier2.test_x.TestA#test_run", "status": "passed",
            "start": start, "stop": start + 1000, "labels": [], "parameters": []}))
    assert annotate_folder(tmp_path, [idle]) == 1
    first = json.loads((tmp_path / "a-result.json").read_text())
    assert first["status"] == "failed" and first["statusDetails"]["message"] == IDLE_REASON
    assert {"name": "gpu", "value": "idle"} in first["labels"]
    assert {"name": "gpu peak load %", "value": "0"} in first["parameters"]
    assert json.loads((tmp_path / "b-result.json").read_text())["status"] == "passed"


def test_the_session_is_this_process_and_its_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert {os.getpid(), child.pid} <= session_pids(os.getpid())
        assert os.getppid() not in session_pids(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_a_context_is_a_compute_process_of_the_session_or_one_no_pid_here_can_name() -> None:
    gpus = [{"index": 0, "util_pct": 0.0, "mem_mb": 900.0}]
    mine = describe(gpus, {os.getpid(): 700.0}, {os.getpid()})
    assert (mine["context"], mine["process_mem_mb"]) == (True, 700.0)
    # The parent is visible in this /proc and is not ours: no context.
    theirs = describe(gpus, {os.getppid(): 700.0}, {os.getpid()})
    assert (theirs["context"], theirs["process_mem_mb"]) == (False, 0)
    # No listed pid exists here (another pid namespace): any compute process counts, said so.
    unseen = describe(gpus, {4_000_000: 700.0}, {os.getpid()})
    assert unseen["context"] is True and "pid namespace" in unseen["context_how"]
    assert describe(gpus, {}, {os.getpid()})["context"] is False


def test_the_mode_and_interval_come_from_the_option_or_tool_hil(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    pytester.makepyprojecttoml('[tool.hil]\ngpu_evidence = "warn"\ngpu_interval_ms = 250\n')
    assert pytester.runpytest_subprocess("-p", "no:cacheprovider").ret == 0
    pytester.makepyprojecttoml('[tool.hil]\ngpu_evidence = "loud"\n')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*[[]tool.hil[]] gpu_evidence = 'loud': expected one of off, warn, fail*"])
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--hil-gpu-evidence=off",
                                           "--hil-gpu-interval=10")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*GPU sampling interval 10 ms: expected an integer from 50*"])


# --- the verdicts end to end on the simulated Jetson ----------------------------------

#: A stand-in torch for the simulated board's image: it claims a CUDA device, so the
#: board may declare tier 2 and run tier2 tests (the rig has no GPU).
SIM_TORCH = '''"""hil-sim stand-in for torch: claims a CUDA device (the rig has none)."""
__version__ = "0+hil.sim"


class cuda:
    @staticmethod
    def is_available():
        return True

    @staticmethod
    def get_device_name(index=0):
        return "hil-sim GPU (simulated, no CUDA)"
'''

TIER2_TESTS = '''
import time

import pytest


@pytest.mark.tier2
def test_embeds_on_the_gpu():
    time.sleep(1.0)  # several samples of its window


def test_on_the_cpu():
    pass
'''


def _board(spec: Any, command: str) -> subprocess.CompletedProcess[str]:
    """``command`` on the board as its user; retried while the shared rig's link is held."""
    deadline = time.monotonic() + 120
    while True:
        done = subprocess.run(["ssh", "-F", spec.ssh.config, "-o", "ConnectTimeout=10",
                               spec.ssh.host, command], timeout=60, capture_output=True, text=True)
        if done.returncode != 255:  # 255: ssh itself failed (another session's fault test)
            return done
        assert time.monotonic() < deadline, f"the board stayed unreachable: {done.stderr}"
        time.sleep(2)  # poll interval


def _tell_gr3d(spec: Any, load: int | None, rig: Any = None) -> None:
    """Write (None: remove) the GR3D load the board's tegrastats reports, as the board user.

    With ``rig``, wait until the board's tegrastats prints it: a session of an older
    checkout on the shared rig may have written its own face since (it is written again).
    """
    command = (f"rm -f {GR3D_LOAD_FILE}" if load is None else
               f"mkdir -p ~/.hil-sim && echo {load} > {GR3D_LOAD_FILE}")
    assert _board(spec, command).returncode == 0
    deadline = time.monotonic() + 60
    while rig is not None:
        line = _board(spec, "timeout 1 tegrastats --interval 200 | head -1").stdout
        if f"GR3D_FREQ {load}%" in line:
            return
        assert time.monotonic() < deadline, f"the board's tegrastats ignores the load: {line}"
        rig.board.prepare()


@pytest.fixture
def gpu_board_project(pytester: pytest.Pytester, sim_rig: Any, sim_jetson: Any) -> Any:
    """A checkout whose sim-jetson target declares tier 2 (its image has the stand-in torch)
    with a tier2 and a tier1 test; yields it and the rig.  The board's GR3D load file is
    removed afterwards."""
    sim_rig.board.prepare()  # the face as this checkout writes it
    root = pytester.path
    for rel in ("targets/Dockerfile", *IMAGE_REQUIREMENTS):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((REPO / rel).read_bytes())
    with (root / "targets" / "Dockerfile").open("a", encoding="utf-8") as dockerfile:
        dockerfile.write("COPY targets/sim-gpu/ /opt/hil/sim-gpu/\nENV PYTHONPATH=/opt/hil/sim-gpu\n")
    (root / "targets" / "sim-gpu" / "torch").mkdir(parents=True)
    (root / "targets" / "sim-gpu" / "torch" / "__init__.py").write_text(SIM_TORCH)
    toml = (REPO / "targets" / "sim-jetson.toml").read_text(encoding="utf-8")
    toml = toml.replace('remote_dir = "hil/pytest-hil"', f'remote_dir = "{sim_jetson.ssh.remote_dir}"')
    (root / "targets" / "sim-jetson.toml").write_text(toml.replace("\ntier = 1\n", "\ntier = 2\n"))
    (root / "test_embed.py").write_text(TIER2_TESTS, encoding="utf-8")
    (root / ".gitignore").write_text("reports/\n", encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    yield root, sim_rig
    _tell_gr3d(sim_jetson, None)


def _run(pytester: pytest.Pytester, *args: str) -> Any:
    return pytester.runpytest_subprocess(
        "--target=sim-jetson", "--hil-gpu-interval=200", "-p", "no:cacheprovider",
        "--junitxml=junit.xml", "-rA", *args)


def _evidence(root: Path) -> list[dict[str, Any]]:
    (run,) = (root / "reports" / "runs").iterdir()
    return [json.loads(line) for line in (run / "gpu-evidence.jsonl").read_text().splitlines()]


def _allure(root: Path, name: str) -> dict[str, Any]:
    for path in (root / "reports" / "allure-results").glob("*-result.json"):
        result = json.loads(path.read_text())
        if result.get("name") == name:
            return result
    raise AssertionError(f"no Allure result of {name}")


def test_a_busy_board_passes_the_fail_verdict_with_its_evidence_everywhere(
        pytester: pytest.Pytester, gpu_board_project: Any, sim_jetson: Any) -> None:
    project, rig = gpu_board_project
    _tell_gr3d(sim_jetson, 60, rig)
    result = _run(pytester, "--hil-gpu-evidence=fail")
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "*hil: GPU evidence of tier2 tests (--hil-gpu-evidence=fail)*",
        "test_embed.py::test_embeds_on_the_gpu: peak load 60 %, peak memory n/a*, CUDA context "
        "n/a, * sample(s)"])
    assert "idle throughout" not in result.stdout.str()
    (found,) = _evidence(project)
    assert (found["state"], found["verdict"], found["peak_load_pct"]) == ("used", "recorded", 60)
    case = ET.parse(project / "junit.xml").find(".//testcase[@name='test_embeds_on_the_gpu']")
    assert case is not None
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["gpu_peak_load_pct"] == "60" and props["gpu_verdict"] == "used/recorded"
    allure = _allure(project, "test_embeds_on_the_gpu")
    assert {"name": "gpu peak load %", "value": "60"} in allure["parameters"]
    assert allure["status"] == "passed"


def test_an_idle_board_fails_the_tier2_test_under_fail(
        pytester: pytest.Pytester, gpu_board_project: Any, sim_jetson: Any) -> None:
    project, rig = gpu_board_project
    _tell_gr3d(sim_jetson, 0, rig)
    result = _run(pytester, "--hil-gpu-evidence=fail")
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        f"E   {IDLE_REASON}",
        "E   GPU evidence: peak load 0 %, peak memory n/a, CUDA context n/a, * sample(s)*",
        "*hil: the GPU stayed idle throughout this run: 1 tier2 test(s) ran*",
        "FAILED test_embed.py::test_embeds_on_the_gpu - tier2 test left the GPU idle*"])
    case = ET.parse(project / "junit.xml").find(".//testcase[@name='test_embeds_on_the_gpu']")
    assert case is not None and case.find("failure") is not None
    assert case.find("failure").get("message") == IDLE_REASON  # type: ignore[union-attr]
    (run,) = (project / "reports" / "runs").iterdir()
    assert ET.parse(run / "junit.xml").find(".//testcase[@name='test_embeds_on_the_gpu']/failure") \
        is not None
    allure = _allure(project, "test_embeds_on_the_gpu")
    assert allure["status"] == "failed" and allure["statusDetails"]["message"] == IDLE_REASON
    assert {"name": "gpu", "value": "idle"} in allure["labels"]
    assert _allure(project, "test_on_the_cpu")["status"] == "passed"


def test_an_idle_board_warns_under_warn(
        pytester: pytest.Pytester, gpu_board_project: Any, sim_jetson: Any) -> None:
    project, rig = gpu_board_project
    _tell_gr3d(sim_jetson, 0, rig)
    result = _run(pytester, "--hil-gpu-evidence=warn")
    result.assert_outcomes(passed=2, warnings=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines([f"*GpuIdleWarning: {IDLE_REASON}*",
                                 "*hil: the GPU stayed idle throughout this run*"])
    (found,) = _evidence(project)
    assert (found["state"], found["verdict"]) == ("idle", "warned")
    allure = _allure(project, "test_embeds_on_the_gpu")
    assert allure["status"] == "passed" and {"name": "gpu", "value": "idle"} in allure["labels"]
