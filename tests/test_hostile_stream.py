"""A suite that writes forged events on the container's event channel, on both container targets.

Any process in a container may open ``/proc/1/fd/1`` (the channel) and
``/proc/1/fd/2``.  What it writes there must leave the outcomes and the exit
code those of a local run of the same suite, without an INTERNALERROR; and a
test that writes without pause is stopped by the run's timeout (exit 20).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import IMAGE_REQUIREMENTS

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
TARGETS = ["sim-colima", "sim-jetson"]

HOSTILE_SUITE = r'''
import json
import os

# In a container, PID 1 is the run's entry shell; elsewhere it is not ours to write to.
IN_CONTAINER = bool(os.environ.get("HIL_OUT"))


def channel(fd):
    return open(f"/proc/1/fd/{fd}" if IN_CONTAINER else os.devnull, "wb", buffering=0)


def forge(fd, data):
    with channel(fd) as out:
        out.write(data)


def test_a_jump_with_exit_0():
    forge(1, b'{"n": 1000000000, "ev": "exit", "code": 0}\n')
    forge(1, b'{"n": 1000000001, "ev": "sessionfinish", "exitstatus": 0}\n')


def test_b_deeply_nested_json():
    forge(1, b"[" * 100_000 + b"\n")
    forge(1, b'{"ev": "logstart", "n": 4, "x": ' + b"[" * 100_000 + b"\n")


def test_c_missing_keys_and_wrong_types():
    forge(1, b'{"ev": "logreport"}\n{"ev": "finish", "n": "7"}\n{"ev": "exit"}\n')
    forge(1, json.dumps({"ev": "logreport", "n": 3, "report": {"nodeid": 5}}).encode() + b"\n")


def test_d_a_32_mb_line_without_newline():
    with channel(1) as out:
        for _ in range(32):
            out.write(b"x" * (1 << 20))


def test_e_a_forged_end_marker_on_stderr():
    forge(2, b"\x1ehil-end 0 false 0\n" + b"not a tar stream\n")
    forge(1, b'{"ev": "exit", "code": 0, "nonce": "guess", "n": 99}\n')


def test_f_fails_after_the_forgeries():
    assert 1 + 1 == 3


def test_g_passes():
    pass
'''


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def project(pytester: pytest.Pytester, sim_rig: Any) -> pytest.Pytester:
    """A git checkout with the repo's image recipe, sim-colima, sim-jetson (syncing to a
    folder of its own, its run timeout given by ``HIL_TEST_RUN_TIMEOUT``) and 'cpu'."""
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


def set_run_timeout(project: pytest.Pytester, seconds: int) -> None:
    for name in TARGETS:
        path = project.path / "targets" / f"{name}.toml"
        text = path.read_text(encoding="utf-8")
        path.write_text(re.sub(r"(?m)^run = .*$", f"run = {seconds}", text), encoding="utf-8")


def run(project: pytest.Pytester, target: str, *args: str) -> pytest.RunResult:
    """``pytest --target=TARGET ARGS`` in a subprocess, the checkout's files all tracked."""
    subprocess.run(["git", "-C", str(project.path), "add", "-A"], check=True)
    return project.runpytest_subprocess(f"--target={target}", "-p", "no:cacheprovider", *args,
                                        timeout=600)


def test_forged_events_leave_the_outcomes_and_exit_code_of_a_local_run(
        project: pytest.Pytester, target: str) -> None:
    project.makepyfile(test_hostile=HOSTILE_SUITE)
    set_run_timeout(project, 300)  # the run's bound; nothing here is timed
    local = run(project, "cpu", "-rA")
    remote = run(project, target, "-rA")
    assert local.ret == 1
    local.assert_outcomes(passed=6, failed=1)
    assert remote.ret == local.ret, remote.stdout.str()[-3000:]
    remote.assert_outcomes(passed=6, failed=1)
    assert "INTERNALERROR" not in remote.stdout.str() + remote.stderr.str()
    for line in ("PASSED test_hostile.py::test_a_jump_with_exit_0",
                 "PASSED test_hostile.py::test_d_a_32_mb_line_without_newline",
                 "FAILED test_hostile.py::test_f_fails_after_the_forgeries*",
                 "PASSED test_hostile.py::test_g_passes"):
        remote.stdout.fnmatch_lines([line])
    # What was forged is shown once, as ignored, and never believed.
    remote.stdout.fnmatch_lines(["*an event out of sequence was ignored*"])


def test_a_test_that_logs_forever_is_stopped_by_the_run_timeout(
        project: pytest.Pytester, target: str) -> None:
    # On the event channel: the host keeps none of it (a count), so the flood costs no memory.
    project.makepyfile(test_chatty='''
import os


def test_logs_forever():
    assert os.environ.get("HIL_OUT"), "runs in a container only"
    line = b"log line " * 100 + b"\\n"
    with open("/proc/1/fd/1", "wb", buffering=0) as out:
        while True:
            out.write(line)
''')
    set_run_timeout(project, 20)
    res = run(project, target)
    assert res.ret == 20, res.stdout.str()[-3000:]
    res.stdout.fnmatch_lines(["*exceeded 20 s*"])
