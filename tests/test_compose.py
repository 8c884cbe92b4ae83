"""Services beside the tests ([compose]) on both simulated targets, with real engines.

Each test runs a small project (the repo's image recipe and its MQTT broker example
from suites/compose) on the rig's colima engine (kind docker, the standalone
docker-compose 1.29.2) and on the simulated board (kind ssh, the Compose v2 CLI
plugin JetPack ships), and checks the engine afterwards:
no container, network or volume of the run's compose project may be left.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import IMAGE_REQUIREMENTS
from hil.backends.compose import COMPOSE_LABEL, PROJECT_LABEL, host_tag
from hil.config import parse_target
from hil.errors import ConfigError, ExitCode
from hil.sim import Rig

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = ("suites/__init__.py", "suites/compose/__init__.py", "suites/compose/mqtt.py",
           "suites/compose/test_broker.py", "suites/compose/docker-compose.yml",
           "suites/compose/broker/Dockerfile", "suites/compose/broker/mosquitto.conf")
TARGETS = ("docker", "ssh")
#: The compose each target's engine host answers with (its progress line names it).
FLAVOURS = {"docker": r"compose: docker-compose 1\.29\.\d+ ", "ssh": r"compose: docker compose 2\.\d+"}


@dataclasses.dataclass
class Project:
    """A project on one of the two targets, and a docker CLI for that target's engine."""

    root: Path
    kind: str
    rig: Rig

    def docker(self, *args: str) -> str:
        """``docker ARGS`` on the target's engine (over the board's SSH for kind ssh)."""
        if self.kind == "docker":
            argv = ["docker", "-H", self.rig.colima_host, *args]
        else:
            import shlex

            argv = ["ssh", "-F", str(self.rig.ssh_config), self.rig.ssh_alias,
                    shlex.join(["docker", *args])]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def leftovers(self, project: str) -> list[str]:
        """Containers, networks and volumes of ``project`` that the engine still has."""
        label = f"label={PROJECT_LABEL}={project}"
        return [*self.docker("ps", "-aq", "--filter", label).split(),
                *self.docker("network", "ls", "-q", "--filter", label).split(),
                *self.docker("volume", "ls", "-q", "--filter", label).split()]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pytest", "--target=box", "-p", "no:cacheprovider",
                               *args], cwd=self.root, capture_output=True, text=True, timeout=900)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "pytest", "--target=box", "-p",
                                 "no:cacheprovider", "-v", *args], cwd=self.root,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def compose_file(self, old: str, new: str) -> None:
        path = self.root / "suites/compose/docker-compose.yml"
        text = path.read_text(encoding="utf-8")
        assert old in text
        path.write_text(text.replace(old, new), encoding="utf-8")

    def last_run(self) -> Path:
        return sorted((self.root / "reports" / "runs").iterdir())[-1]


def project_of(output: str) -> str:
    """The compose project a run named on its progress line."""
    m = re.search(r"hil: compose: .* project (hil-[0-9a-f]{6}-\d+-[0-9a-f]{4})", output)
    assert m, output[-3000:]
    return m[1]


def target_toml(kind: str, rig: Rig, tmp_name: str) -> str:
    compose = textwrap.dedent("""\
        [compose]
        file = "suites/compose/docker-compose.yml"
        service = "tests"
        ready_timeout = 120
        """)
    if kind == "docker":
        head = textwrap.dedent(f"""\
            kind = "docker"
            tier = 1
            [docker]
            engine = "{rig.colima_host}"
            build_args = {{ BASE_IMAGE = "{rig.base_image}" }}
            """)
    else:
        head = textwrap.dedent(f"""\
            kind = "ssh"
            tier = 1
            [ssh]
            host = "hil-sim-jetson"
            config = "{rig.ssh_config}"
            remote_dir = "hil-tests/{tmp_name}/project"
            [docker]
            runtime = "nvidia"
            build_args = {{ BASE_IMAGE = "{rig.l4t_image}" }}
            """)
    return head + textwrap.dedent("""\
        dockerfile = "targets/Dockerfile"
        hash_files = ["targets/requirements.txt"]
        build_network = "host"
        """) + compose


@pytest.fixture(params=TARGETS)
def project(request: pytest.FixtureRequest, sim_rig: Rig, tmp_path: Path) -> Project:
    """The broker example as a git checkout, with a target 'box' of the param's kind."""
    root = tmp_path / "project"
    for rel in ("targets/Dockerfile", *IMAGE_REQUIREMENTS, *EXAMPLE):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    (root / "targets" / "box.toml").write_text(target_toml(request.param, sim_rig, tmp_path.name),
                                              encoding="utf-8")
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\n', encoding="utf-8")
    (root / ".gitignore").write_text("reports/\n__pycache__/\n", encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    return Project(root, request.param, sim_rig)


WRONG = """
import uuid
from suites.compose.test_broker import BROKER, client  # noqa: F401

def test_reads_back_what_was_never_sent(client):
    topic = f"vision/{uuid.uuid4().hex[:8]}"
    client.subscribe(topic)
    client.publish(topic, b"sent")
    assert client.receive() == (topic, b"something else")
"""


def test_example_passes_and_a_failing_test_exits_1(project: Project) -> None:
    green = project.run("suites/compose", "-rA")
    out = green.stdout + green.stderr
    assert green.returncode == 0, out[-4000:]
    assert "2 passed" in out and "skipped" not in out
    assert "hil: compose: broker healthy" in out
    assert re.search(FLAVOURS[project.kind], out), out[-4000:]
    run = project.last_run()
    assert "mosquitto version" in (run / "compose" / "broker.log").read_text(encoding="utf-8")
    assert project.leftovers(project_of(out)) == []
    assert "compose service broker" in staged_attachments(project)
    (project.root / "suites/compose/test_wrong.py").write_text(WRONG, encoding="utf-8")
    red = project.run("suites/compose", "-rf")
    out = red.stdout + red.stderr
    assert red.returncode == 1, out[-4000:]
    assert "2 passed" in out and "1 failed" in out
    assert "FAILED suites/compose/test_wrong.py::test_reads_back_what_was_never_sent" in out
    # The broker's image was built once: its build context did not change.
    assert "of 'broker' is up to date (content hash)" in out
    assert project.leftovers(project_of(out)) == []
    forced = project.run("suites/compose", "--hil-rebuild")
    out = forced.stdout + forced.stderr
    assert forced.returncode == 1 and "hil: compose: building broker" in out, out[-3000:]


def staged_attachments(project: Project) -> set[str]:
    """Names of the attachments of the run containers ``hil report`` stages."""
    import json

    from hil.progress import Progress
    from hil.report.html import Stager

    folder = project.root / "staged"
    Stager(folder, Progress(quiet=True)).add_folder(project.root / "reports" / "allure-results")
    containers = [json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("*-container.json")]
    return {a["name"] for c in containers for b in c.get("befores") or ()
            for a in b.get("attachments") or ()}


CRASHES = """
import os

def test_before():
    pass

def test_crashes():
    os._exit(3)

def test_after():
    pass
"""


def test_a_crashed_test_resumes_in_a_fresh_tests_service_container(project: Project) -> None:
    (project.root / "suites/compose/test_crash.py").write_text(CRASHES, encoding="utf-8")
    done = project.run("suites/compose/test_crash.py", "suites/compose/test_broker.py")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-4000:]
    assert "FAILED suites/compose/test_crash.py::test_crashes - crashed: exit code 3" in out
    assert "1 failed, 4 passed" in out  # the broker tests ran in the resumed container
    assert project.leftovers(project_of(out)) == []


def test_example_skips_with_its_reason_without_a_broker(project: Project) -> None:
    done = subprocess.run([sys.executable, "-m", "pytest", "--target=local", "-p",
                           "no:cacheprovider", "-rs", "suites/compose"], cwd=project.root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "2 skipped" in done.stdout
    assert "no MQTT broker beside the tests (HIL_MQTT_BROKER unset)" in done.stdout


def test_unhealthy_service_is_service_failed_naming_it(project: Project) -> None:
    project.compose_file('test: ["CMD", "mosquitto_sub", "-t", "$$SYS/broker/uptime", "-C", "1", '
                         '"-W", "3"]', 'test: ["CMD", "sh", "-c", "echo broker check fails; exit 1"]')
    project.compose_file("retries: 30", "retries: 2")
    done = project.run("suites/compose")
    out = done.stdout + done.stderr
    assert done.returncode == ExitCode.SERVICE_FAILED, out[-4000:]
    assert "hil: error: target 'box': compose service 'broker' is unhealthy before the tests " \
           "started" in out
    assert "mosquitto version" in out  # the tail of its log comes with the error
    run = project.last_run()
    assert '"kind": "service-failed"' in (run / "error.json").read_text(encoding="utf-8")
    assert (run / "compose" / "broker.log").is_file()
    assert project.leftovers(project_of(out)) == []


WAITS_FOR_THE_BROKER_TO_GO = """
from suites.compose.mqtt import MqttClient
from suites.compose.test_broker import BROKER

def test_first():
    MqttClient(BROKER, "first").close()

def test_until_the_broker_goes():
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            MqttClient(BROKER, "probe", timeout=2).close()
        except OSError:
            return
        time.sleep(0.1)  # poll interval
    raise AssertionError("the broker never went away")
"""


def _lines_until(proc: subprocess.Popen[str], needle: str, seen: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if needle in line:
            return
    raise AssertionError(f"never saw {needle!r}:\n{''.join(seen)}")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()


NEVER_ENDS = """
import time
from suites.compose.mqtt import MqttClient
from suites.compose.test_broker import BROKER

def test_first():
    MqttClient(BROKER, "first").close()

def test_never_ends_on_its_own():
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        time.sleep(0.1)
"""


def test_service_killed_mid_run_ends_the_run_service_failed_naming_it(
        project: Project, procs: list[subprocess.Popen[str]]) -> None:
    # The second test never ends on its own: only the service's death can end the run.
    (project.root / "suites/compose/test_wait.py").write_text(NEVER_ENDS, encoding="utf-8")
    proc = project.popen("suites/compose/test_wait.py")
    procs.append(proc)
    seen: list[str] = []
    _lines_until(proc, "test_first PASSED", seen)
    name = project_of("".join(seen))
    broker = project.docker("ps", "-q", "--filter", f"label={PROJECT_LABEL}={name}",
                            "--filter", "label=com.docker.compose.service=broker").split()
    assert len(broker) == 1
    project.docker("kill", broker[0])
    out, _ = proc.communicate(timeout=300)
    text = "".join(seen) + out
    assert proc.returncode == ExitCode.SERVICE_FAILED, text[-4000:]
    assert "compose service 'broker' exited (exit code 137) while the tests ran" in text
    assert "1 passed" in text  # the results so far are kept
    assert project.leftovers(name) == []


def test_interrupt_tears_the_project_down(project: Project,
                                          procs: list[subprocess.Popen[str]]) -> None:
    (project.root / "suites/compose/test_wait.py").write_text(WAITS_FOR_THE_BROKER_TO_GO,
                                                              encoding="utf-8")
    proc = project.popen("suites/compose/test_wait.py")
    procs.append(proc)
    seen: list[str] = []
    _lines_until(proc, "test_first PASSED", seen)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.INTERRUPTED, "".join(seen) + out
    assert project.leftovers(project_of("".join(seen))) == []


def test_stale_project_of_a_dead_run_is_removed(project: Project) -> None:
    # A project of this host whose process is gone (pid 999999 cannot be alive here).
    stale = f"hil-{host_tag()}-999999-dead"
    project.docker("network", "create", "--label", f"{PROJECT_LABEL}={stale}", f"{stale}_default")
    project.docker("volume", "create", "--label", f"{PROJECT_LABEL}={stale}", f"{stale}_data")
    project.docker("create", "--label", f"{PROJECT_LABEL}={stale}", "--label",
                   f"{COMPOSE_LABEL}={stale}", "--network", "none",
                   project.rig.base_image if project.kind == "docker" else project.rig.l4t_image,
                   "true")
    done = project.run("suites/compose")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert any(line.startswith("hil: compose: removed stale project(s)") and stale in line
               for line in out.splitlines()), out[-3000:]
    assert project.leftovers(stale) == []


# -- configuration (no rig) -------------------------------------------------------------

@pytest.mark.parametrize(("table", "message"), [
    ('kind = "local"\ntier = 1\n[compose]\nfile = "c.yml"\nservice = "t"\n',
     "t.toml: key 'compose' is not allowed for kind 'local' (only for: docker, ssh)"),
    ('kind = "docker"\ntier = 1\n[compose]\nservice = "t"\n',
     "t.toml: missing key 'compose.file' (the docker compose file, relative to the checkout)"),
    ('kind = "docker"\ntier = 1\n[compose]\nfile = "c.yml"\n',
     "t.toml: missing key 'compose.service' (the compose service the tests run in)"),
    ('kind = "docker"\ntier = 1\n[compose]\nfile = "/etc/c.yml"\nservice = "t"\n',
     "t.toml: key 'compose.file' must be a path inside the checkout, got '/etc/c.yml'"),
    ('kind = "docker"\ntier = 1\n[compose]\nfile = "c.yml"\nservice = "t"\nprofiles = ["a b"]\n',
     "t.toml: key 'compose.profiles' must be a compose name (letters, digits, '.', '_', '-'), "
     "got 'a b'"),
    ('kind = "docker"\ntier = 1\n[compose]\nfile = "c.yml"\nservice = "t"\nready_timeout = 0\n',
     "t.toml: key 'compose.ready_timeout' must be a positive number of seconds, got 0"),
    ('kind = "docker"\ntier = 1\n[compose]\nfile = "c.yml"\nservice = "t"\nwait = 3\n',
     "t.toml: unknown key 'compose.wait' (expected one of: env_file, file, profiles, "
     "ready_timeout, service)"),
])
def test_bad_compose_table_is_one_line_error(table: str, message: str) -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    with pytest.raises(ConfigError) as info:
        parse_target(tomllib.loads(table), "t.toml", default_name="t")
    assert str(info.value) == message


def test_unknown_service_names_the_file_and_the_services(project: Project) -> None:
    toml = project.root / "targets" / "box.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace('service = "tests"',
                                                           'service = "runner"'), encoding="utf-8")
    done = project.run("suites/compose")
    out = done.stdout + done.stderr
    assert done.returncode == ExitCode.USAGE_ERROR, out[-3000:]
    assert ("key 'compose.service' names 'runner', which suites/compose/docker-compose.yml does "
            "not define (it has: broker, tests)") in out


def test_a_broken_compose_file_is_a_usage_error_with_composes_words(project: Project) -> None:
    (project.root / "suites/compose/docker-compose.yml").write_text(
        "services:\n  tests:\n    image: [unclosed\n", encoding="utf-8")
    done = project.run("suites/compose")
    out = done.stdout + done.stderr
    assert done.returncode == ExitCode.USAGE_ERROR, out[-3000:]
    line = next(x for x in out.splitlines() if x.startswith("hil: error:"))
    assert line.startswith("hil: error: target 'box': targets/box.toml: key 'compose.file': "
                           "compose cannot read 'suites/compose/docker-compose.yml': "), line
