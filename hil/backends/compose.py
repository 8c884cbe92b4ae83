"""Services beside the tests: a docker compose project on the target's engine.

A target with ``[compose]`` names a compose file and the service its tests run
in.  For each session pytest-hil runs, on the host of the target's engine (this
host for docker targets, the board for ssh targets) and with whichever compose
answers there (the ``docker compose`` plugin, else the standalone
``docker-compose``):

1. removes the projects of earlier runs that died without tearing down;
2. reads the resolved configuration (``config``): services, builds, profiles;
3. builds the services with a ``build:`` section whose content hash has no
   image yet (tag ``hil-svc-<service>:<hash>``), like the dependencies image;
4. starts every other service (``up -d``) and polls, with a deadline, until
   each is healthy (or running, when it has no healthcheck);
5. creates the test container *as the tests' service* (``up --no-start
   --no-deps``) from a generated override file that gives it the worker's
   command, the checkout and results mounts, labels, user and environment;
   the backend then attaches to and starts it exactly as a plain test
   container, so the event stream, exit codes and crash resumes are unchanged;
6. watches the services while the tests run (:class:`ServiceWatch`: one that
   stops ends the run), checks after it that they still run, saves each service's log
   in the run folder (``compose/<service>.log``) and tears everything down
   (``down -v --remove-orphans``, then anything left with the project's label).

Why ``up --no-start`` of the service rather than our own container from the
parsed configuration: compose itself resolves everything the service says
(image, ``env_file``, networks and aliases, volumes, devices, capabilities...),
in both flavours, and the container it creates is started by the same code
path as every other test container.

Every command is an action of the package script ``compose_scripts/compose.sh``
(its parameters quoted at one point, :func:`hil.backends.scripts.script_command`)
run through a :data:`Shell`, so one implementation serves the local engine (a
subprocess) and the board (the session's SSH connection).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import posixpath
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil.backends.base import CONTAINER_LIB, CONTAINER_OUT, RunRequest
from hil.backends.scripts import script_command
from hil.config import TargetSpec
from hil.errors import (
    BuildFailedError,
    ConfigError,
    ServiceFailedError,
    TargetUnhealthyError,
)
from hil.progress import Progress
from hil.redact import redactor_for
from hil.result import Result

#: Label on every container of a project pytest-hil started: the project's name.
COMPOSE_LABEL = "io.pytest-hil.compose"
#: Compose's own label of a project's containers, networks and volumes.
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
#: Every project name pytest-hil makes starts so: ``hil-<host tag>-<pid>-<random>``.
PROJECT_PREFIX = "hil-"
#: Marker line before each service's log in the output of the log script.
LOG_MARKER = "\x1ehil-log "
#: Lines of a service's log kept in the run folder (the last ones).
LOG_LINES = 5000
#: Seconds between two looks at the services while waiting for them.
POLL_INTERVAL = 0.25
#: Seconds between two looks at the services while the tests run.
WATCH_INTERVAL = 1.0

#: Runs one shell command on the engine's host (with a timeout): its :class:`Result`.
Shell = Callable[[str, float], Result]


def local_shell(env: Mapping[str, str]) -> Shell:
    """A :data:`Shell` running ``sh -c`` on this host, with ``env`` added (``DOCKER_HOST``)."""
    full = {**os.environ, **env}

    def run(command: str, timeout: float) -> Result:
        try:
            done = subprocess.run(["sh", "-c", command], env=full, capture_output=True,
                                  text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            return Result(command, 124, out, f"timed out after {timeout:.0f} s")
        return Result(command, done.returncode, done.stdout, done.stderr)

    return run


def host_tag(host: str | None = None) -> str:
    """Six hex digits naming this host in project names (who may judge a project stale)."""
    return hashlib.sha256((host or socket.gethostname()).encode()).hexdigest()[:6]


def project_name(pid: int | None = None) -> str:
    """A new project name: ``hil-<host tag>-<pid>-<4 hex>`` (compose's name rules hold)."""
    return f"{PROJECT_PREFIX}{host_tag()}-{os.getpid() if pid is None else pid}-" \
           f"{uuid.uuid4().hex[:4]}"


def project_owner(name: str) -> tuple[str, int] | None:
    """(host tag, pid) of a project name made by :func:`project_name`, else None."""
    m = re.fullmatch(rf"{PROJECT_PREFIX}([0-9a-f]{{6}})-(\d+)-[0-9a-f]{{4}}", name)
    return (m[1], int(m[2])) if m else None


def _escape(value: Any) -> Any:
    """Compose interpolates ``$VAR`` in every string of a file: ``$`` stays ``$`` as ``$$``."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [_escape(v) for v in value]
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    return value


def tests_service(req: RunRequest) -> dict[str, Any]:
    """The override of the tests' service: what a plain test container of ``req`` would get."""
    volumes = [f"{req.src}:{req.src_mount}:ro", f"{req.out}:{CONTAINER_OUT}:rw"]
    if req.lib:
        volumes.append(f"{req.lib}:{CONTAINER_LIB}:ro")
    svc: dict[str, Any] = {
        # The worker replaces the service's own entrypoint and command.
        "container_name": req.name, "entrypoint": list(req.command[:1]),
        "command": list(req.command[1:]), "working_dir": req.workdir,
        "environment": dict(req.env), "labels": dict(req.labels), "volumes": volumes,
        # Read live through the attach stream, as for a plain test container.
        "logging": {"driver": "none"}, "restart": "no", "tty": False, "stdin_open": False,
    }
    if req.user:
        svc["user"] = req.user
    if req.runtime:
        svc["runtime"] = req.runtime
    if req.memory:
        svc["mem_limit"] = svc["memswap_limit"] = req.memory
    return _escape(svc)  # type: ignore[no-any-return]


def _dockerignore(folder: Path) -> list[tuple[bool, str]]:
    """The context's ``.dockerignore`` rules: (exception, pattern), in order."""
    try:
        text = (folder / ".dockerignore").read_text(encoding="utf-8")
    except OSError:
        return []
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = posixpath.normpath(line.lstrip("!").strip().lstrip("/"))
        rules.append((negate, pattern))
    return rules


def _ignored(rel: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent folder counts."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for negate, pattern in rules:
        regex = _glob_regex(pattern)
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's ``.dockerignore`` glob (Go's filepath.Match, plus ``**`` for any folders)."""
    out = ""
    for part in re.split(r"(\*\*/?|\*|\?)", pattern):
        if part in ("**", "**/"):
            out += "(?:.*/)?" if part == "**/" else ".*"
        elif part == "*":
            out += "[^/]*"
        elif part == "?":
            out += "[^/]"
        else:
            out += re.escape(part)
    return re.compile(out)


def context_digest(folder: Path, dockerfile: str, args: Mapping[str, str]) -> str:
    """Hash of a build: its Dockerfile, arguments and every file of the context
    (less what its ``.dockerignore`` leaves out: docker does not send those either)."""
    digest = hashlib.sha256(f"dockerfile\0{dockerfile}\0".encode())
    for key, value in sorted(args.items()):
        digest.update(f"arg\0{key}\0{value}\0".encode())
    rules = _dockerignore(folder)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if any(part in (".git", "__pycache__") for part in rel.parts):
            continue
        if _ignored(rel.as_posix(), rules):
            continue
        digest.update(b"file\0" + rel.as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ServiceState:
    """One service container as the engine reports it."""

    service: str
    status: str  # created, running, restarting, exited, dead...
    health: str  # "" (no healthcheck), starting, healthy, unhealthy
    exit_code: int

    def describe(self) -> str:
        """``exited (exit code 3)``, ``is running, unhealthy``, ``is unhealthy``..."""
        if self.status in ("exited", "dead"):  # a stopped container's health says unhealthy
            return f"{self.status} (exit code {self.exit_code})"
        if self.health == "unhealthy":
            return "is unhealthy"
        return f"is {self.status}" + (f", {self.health}" if self.health else "")


class ComposeProject:
    """One session's compose project on a target's engine: up, wait, test container, down."""

    def __init__(self, spec: TargetSpec, shell: Shell, *, engine_root: str, local_root: Path,
                 override_path: str, local_dir: Path, progress: Progress,
                 judge_owners: bool, rebuild: bool = False) -> None:
        self.spec = spec
        self.compose = spec.compose
        self.shell = shell
        #: The checkout as the engine's host sees it (compose runs there, files relative to it).
        self.engine_root = engine_root
        self.local_root = local_root
        #: Where the generated override file goes on the engine's host.
        self.override_path = override_path
        #: This run's ``compose/`` folder here: override, config, build and service logs.
        self.local_dir = local_dir
        self.progress = progress
        #: Docker targets judge stale projects by their owner's pid; on a board the lease does.
        self.judge_owners = judge_owners
        #: ``--hil-rebuild``: build the services' images even when their hash has one.
        self.rebuild = rebuild
        self.name = project_name()
        self.cli: list[str] = []
        self.flavour = ""
        self.image = ""
        self.config: dict[str, Any] = {}
        #: Active services besides the tests' one, in the file's order.
        self.others: list[str] = []
        #: Services that were running when the tests started: they must still be at the end.
        self.long_running: list[str] = []
        self.override: dict[str, Any] = {}
        #: The tests' service's entry of the base override: labels, and its own build's tag.
        self.base_tests: dict[str, Any] = {}
        self.started = False
        self.down_done = False

    # -- commands -----------------------------------------------------------------------
    def _sh(self, command: str, timeout: float = 120.0) -> tuple[int, str, str]:
        res = self.shell(command, timeout)
        return res.exited, res.stdout, res.stderr

    def compose_argv(self, *args: str, override: bool = True) -> list[str]:
        """The compose command line: the project, its files, env file and profiles, ``args``."""
        parts = [*self.cli, "-p", self.name, "-f", self.compose.file]
        if override and self.override:
            parts += ["-f", self.override_path]
        if self.compose.env_file:
            parts += ["--env-file", self.compose.env_file]
        for profile in self.compose.profiles:
            parts += ["--profile", profile]
        return [*parts, *args]

    def script(self, action: str, *args: str, **env: str | None) -> str:
        """``scripts/compose.sh ACTION ARGS`` as one shell command line (the one quoting point),
        with the checkout and ``${HIL_IMAGE}`` of this project."""
        return script_command(__package__ or "hil.backends", "compose_scripts", "compose",
                              action, *args, DIR=self.engine_root, HIL_IMAGE=self.image, **env)

    def command(self, *args: str, override: bool = True) -> str:
        """A compose command, run from the checkout on the engine's host."""
        return self.script("run", *self.compose_argv(*args, override=override))

    def _fail_text(self, out: str, err: str) -> str:
        text = "\n".join(x for x in (out.strip(), err.strip()) if x)
        return text or "(no output)"

    def detect(self) -> str:
        """Which compose answers on the engine's host: the plugin first, then the standalone."""
        code, out, err = self._sh(self.script("detect"))
        words = out.split()
        if code != 0 or not words or words[0] == "none":
            raise TargetUnhealthyError(
                "neither `docker compose` nor `docker-compose` answers on the engine's host",
                target=self.spec.name, tail=self._fail_text(out, err),
                hint="install the compose plugin (docker-compose-plugin) or docker-compose")
        self.flavour = words[0]
        self.cli = ["docker", "compose"] if words[0] == "plugin" else ["docker-compose"]
        version = words[1] if len(words) > 1 else "?"
        self.progress.step(f"compose: {' '.join(self.cli)} {version} on '{self.spec.name}', "
                           f"project {self.name}")
        return self.flavour

    # -- stale projects -------------------------------------------------------------------
    def remove_stale(self) -> list[str]:
        """Remove the ``hil-`` projects of earlier runs that died before their teardown.

        On a docker target, a project is stale when this host made it and its
        process is gone; on a board (held under the lease) every other one is.
        """
        _, out, _ = self._sh(self.script("projects", COMPOSE_LABEL, PROJECT_LABEL))
        stale = []
        for name in out.split():
            if not name.startswith(PROJECT_PREFIX) or name == self.name:
                continue
            owner = project_owner(name)
            if self.judge_owners and (owner is None or owner[0] != host_tag()
                                      or _pid_alive(owner[1])):
                continue
            stale.append(name)
        if stale:
            self._sh(self.script("remove", PROJECT_LABEL, *stale))
        return stale

    # -- configuration --------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        """The resolved configuration as JSON (the standalone prints YAML: its Python converts)."""
        code, out, err = self._sh(self.script("config", *self.compose_argv(override=False),
                                              FLAVOUR=self.flavour))
        try:
            data = json.loads(out) if code == 0 else None
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
            raise ConfigError(
                f"{self.spec.source}: key 'compose.file': compose cannot read "
                f"{self.compose.file!r}: " + self._fail_text(out, err).splitlines()[-1][:300],
                target=self.spec.name, tail=self._fail_text(out, err))
        services: dict[str, Any] = data["services"]
        if self.compose.service not in services:
            raise ConfigError(
                f"{self.spec.source}: key 'compose.service' names {self.compose.service!r}, "
                f"which {self.compose.file} does not define (it has: "
                f"{', '.join(sorted(services))})", target=self.spec.name)
        active = [name for name, svc in services.items()
                  if not (svc or {}).get("profiles")
                  or set(svc["profiles"]) & set(self.compose.profiles)]
        self.config = data
        self.others = [name for name in active if name != self.compose.service]
        self.local_dir.mkdir(parents=True, exist_ok=True)
        (self.local_dir / "config.json").write_text(
            json.dumps(redactor_for(self.spec).data(data), indent=1), encoding="utf-8")
        return data

    def _local_path(self, engine_path: str) -> Path | None:
        """A path of the engine's host under the checkout, as a path of the checkout here."""
        root = self.engine_root.rstrip("/")
        if engine_path == root:
            return self.local_root
        if engine_path.startswith(root + "/"):
            return self.local_root / engine_path[len(root) + 1:]
        return None

    def _base_override(self) -> dict[str, Any]:
        """Labels on every service; a content-hash tag and the build network on built ones."""
        services: dict[str, Any] = {}
        labels = {COMPOSE_LABEL: self.name}
        for name in [*self.others, self.compose.service]:
            svc: dict[str, Any] = {"labels": dict(labels)}
            build = (self.config["services"][name] or {}).get("build")
            if isinstance(build, dict) and build.get("context"):
                context = str(build["context"])
                dockerfile = str(build.get("dockerfile") or "Dockerfile")
                args = {str(k): str(v) for k, v in (build.get("args") or {}).items()}
                local = self._local_path(context)
                if local is None or not local.is_dir():
                    raise ConfigError(
                        f"{self.spec.source}: service {name!r} of {self.compose.file} builds "
                        f"from {context}, outside the checkout", target=self.spec.name)
                digest = context_digest(local, dockerfile, args)
                svc["image"] = f"hil-svc-{re.sub(r'[^a-z0-9_.-]', '-', name.lower())}:" \
                               f"{digest[:16]}"
                new_build: dict[str, Any] = {"context": context, "dockerfile": dockerfile,
                                             "args": args}
                if self.spec.docker.build_network:
                    new_build["network"] = self.spec.docker.build_network
                svc["build"] = _escape(new_build)
            services[name] = svc
        override: dict[str, Any] = {"services": services}
        version = self._file_version()
        if version:
            override["version"] = version
        return override

    def _file_version(self) -> str:
        """The compose file's ``version`` (the standalone wants an override of the same one)."""
        try:
            text = (self.local_root / self.compose.file).read_text(encoding="utf-8")
        except OSError:
            return ""
        m = re.search(r"(?m)^version:\s*['\"]?([0-9.]+)['\"]?\s*$", text)
        return m[1] if m else ""

    def _override_data(self, tests: dict[str, Any] | None = None) -> str:
        """The override file, base64 (for the script; a redacted copy goes in the run folder)."""
        if tests is not None:  # its own build (image, build) stays; the run's parts come in
            base = self.base_tests
            self.override["services"][self.compose.service] = {
                **base, **tests, "labels": {**tests["labels"], **base["labels"]}}
        text = json.dumps(self.override, indent=1, sort_keys=True)
        self.local_dir.mkdir(parents=True, exist_ok=True)
        # The run folder's copy is redacted; the engine's host gets the real values.
        (self.local_dir / "override.json").write_text(
            json.dumps(redactor_for(self.spec).data(self.override), indent=1, sort_keys=True),
            encoding="utf-8")
        return base64.b64encode(text.encode()).decode()

    # -- bring-up -------------------------------------------------------------------------
    def read(self) -> None:
        """Before any image: which compose, stale projects, the configuration, the build tags.

        After it, :attr:`tests_image` says whether the tests' service builds its own image.
        """
        if not (self.local_root / self.compose.file).is_file():
            raise ConfigError(f"{self.spec.source}: key 'compose.file' names "
                              f"{self.compose.file!r}, which does not exist under "
                              f"{self.local_root}", target=self.spec.name)
        self.detect()
        stale = self.remove_stale()
        if stale:
            self.progress.step(f"compose: removed stale project(s) {', '.join(stale)}")
        self.read_config()
        self.override = self._base_override()
        self.base_tests = dict(self.override["services"][self.compose.service])

    @property
    def tests_image(self) -> str:
        """The content-hash tag of the tests' service's own image ("" when it has no ``build:``)."""
        return str(self.base_tests.get("image", ""))

    def up(self, image: str) -> None:
        """Everything before the tests (after :meth:`read`): builds, services healthy.

        ``image`` is what ``${HIL_IMAGE}`` stands for in the file: the tests' own
        image when its service builds one, else the dependencies image.
        """
        self.image = image
        code, out, err = self._sh(self.script("write", self.override_path,
                                              DATA=self._override_data()))
        if code != 0:
            raise TargetUnhealthyError("could not write the compose override file",
                                       target=self.spec.name, tail=self._fail_text(out, err))
        self.started = True
        built = self.build()
        if self.compose.service in built:  # a tag is checked once: when it is built
            self.check_tests_image()
        if self.others:
            self.progress.step(f"compose: starting {', '.join(self.others)}")
            code, out, err = self._sh(self.command("up", "-d", "--no-build", *self.others),
                                      timeout=max(120.0, self.compose.ready_timeout))
            if code != 0:
                raise ServiceFailedError(
                    f"compose could not start the services: "
                    f"{self._fail_text(out, err).splitlines()[-1][:200]}",
                    target=self.spec.name, tail=self._fail_text(out, err))
            self.wait_ready()

    def build(self) -> list[str]:
        """Build the services whose content-hash tag is absent from the engine; returns them."""
        tags = {name: svc["image"] for name, svc in self.override["services"].items()
                if "image" in svc}
        if not tags:
            return []
        _, out, _ = self._sh(self.script("missing", *(x for pair in tags.items() for x in pair)))
        missing = list(tags) if self.rebuild else [n for n in out.split() if n in tags]
        for name in tags:
            if name not in missing:
                self.progress.step(f"compose: image {tags[name]} of '{name}' is up to date "
                                   "(content hash)")
        if not missing:
            return []
        self.progress.step(f"compose: building {', '.join(missing)}")
        code, out, err = self._sh(self.command("build", *missing), timeout=self.spec.timeouts.build)
        log = self._fail_text(out, err)
        (self.local_dir / "build.log").write_text(log + "\n", encoding="utf-8")
        for line in log.splitlines()[-5:]:
            self.progress.detail(line)
        if code != 0:
            raise BuildFailedError(
                f"compose could not build {', '.join(missing)}: {log.splitlines()[-1][:200]}",
                target=self.spec.name, command=" ".join([*self.cli, "build", *missing]),
                exited=code, tail=log)
        return missing

    def check_tests_image(self) -> None:
        """The tests' own image must run pytest: else a usage error naming the service and the fix."""
        service = self.compose.service
        build = (self.config["services"][service] or {}).get("build") or {}
        dockerfile = posixpath.join(str(build.get("context", ".")),
                                    str(build.get("dockerfile") or "Dockerfile"))
        code, out, err = self._sh(self.script("pytest", self.tests_image), timeout=120.0)
        if code == 0:
            self.progress.step(f"compose: tests run in '{service}' ({self.tests_image}, "
                               f"pytest {out.strip()})")
            return
        # Gone, so the next run builds it again and checks again (not the run's own failure).
        self._sh(self.script("rmi", self.tests_image))
        display = self._local_path(dockerfile)
        shown = display.relative_to(self.local_root).as_posix() if display else dockerfile
        raise ConfigError(
            f"the image of compose service '{service}' ({self.tests_image}) cannot run pytest: "
            f"{self._fail_text(out, err).splitlines()[-1][:200]}", target=self.spec.name,
            tail=self._fail_text(out, err),
            hint=f"the tests run in '{service}': install pytest in its image "
                 f"(`RUN python3 -m pip install pytest` in {shown})")

    def states(self) -> dict[str, ServiceState]:
        """The project's service containers (not the tests' one), by service."""
        code, out, err = self._sh(self.script("states", f"{PROJECT_LABEL}={self.name}",
                                              SERVICE_LABEL))
        if code != 0:
            raise TargetUnhealthyError("could not inspect the compose services",
                                       target=self.spec.name, tail=self._fail_text(out, err))
        found: dict[str, ServiceState] = {}
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 4 or parts[0] == self.compose.service:
                continue
            code_text = parts[3].lstrip("-")
            found[parts[0]] = ServiceState(parts[0], parts[1], parts[2],
                                           int(parts[3]) if code_text.isdigit() else -1)
        return found

    def log_tail(self, service: str, lines: int = 30) -> str:
        """The last lines of a service's log (for an error's tail)."""
        _, out, err = self._sh(self.command("logs", "--no-color", "--tail", str(lines), service))
        return self._fail_text(out, err)

    def _fault(self, state: ServiceState, when: str) -> ServiceFailedError:
        return ServiceFailedError(f"compose service '{state.service}' {state.describe()} {when}",
                                  service=state.service, target=self.spec.name,
                                  tail=self.log_tail(state.service))

    def wait_ready(self) -> None:
        """Poll until every other service is healthy (or running); a failed one raises."""
        timeout = self.compose.ready_timeout
        deadline = time.monotonic() + timeout
        while True:
            states = self.states()
            waiting: list[str] = []
            for name in self.others:
                state = states.get(name)
                if state is None:
                    waiting.append(f"{name} (no container)")
                elif state.health == "unhealthy" or (state.status in ("exited", "dead")
                                                     and state.exit_code != 0):
                    raise self._fault(state, "before the tests started")
                elif not (state.health == "healthy"
                          or (not state.health and state.status == "running")
                          or (state.status == "exited" and state.exit_code == 0)):
                    waiting.append(f"{name} ({state.describe().removeprefix('is ')})")
            if not waiting:
                self.long_running = [n for n in self.others if states[n].status == "running"]
                self.progress.step("compose: " + ", ".join(
                    f"{n} {states[n].health or states[n].status}" for n in self.others))
                return
            if time.monotonic() > deadline:
                first = waiting[0].split()[0]
                raise ServiceFailedError(
                    f"compose service(s) not ready after {timeout:.0f} s: {', '.join(waiting)}",
                    service=first, target=self.spec.name, tail=self.log_tail(first),
                    hint="raise compose.ready_timeout, or check the service's healthcheck")
            time.sleep(POLL_INTERVAL)  # poll interval; the deadline above bounds the wait

    # -- the tests' container -------------------------------------------------------------
    def tests_script(self, req: RunRequest, errors_to: str = "") -> str:
        """Shell that (re)creates the test container ``req.name`` as the tests' service.

        Compose's own output goes to ``errors_to`` (a file on the engine's host)
        or to standard error, never to standard output (the event channel).
        """
        return self.script("create", self.override_path, *self.compose_argv(
            "up", "--no-start", "--no-deps", "--force-recreate", "--no-build",
            self.compose.service), DATA=self._override_data(tests_service(req)), SINK=errors_to)

    def create_tests(self, req: RunRequest) -> None:
        """Create the test container (not started): the backend attaches, then starts it."""
        code, out, err = self._sh(self.tests_script(req))
        if code != 0:
            raise TargetUnhealthyError(
                f"compose could not create the tests' service '{self.compose.service}'",
                target=self.spec.name, tail=self._fail_text(out, err))

    def check(self) -> None:
        """After the tests: every service that was running still is (and is not unhealthy)."""
        states = self.states()
        for name in self.long_running:
            state = states.get(name)
            if state is None:
                raise ServiceFailedError(f"compose service '{name}' was removed while the tests "
                                         "ran", service=name, target=self.spec.name)
            if state.status != "running" or state.health == "unhealthy":
                raise self._fault(state, "while the tests ran")

    def watch(self, stop_run: Callable[[], object]) -> ServiceWatch:
        """Watch the services while the tests run; the first that stops calls ``stop_run``."""
        return ServiceWatch(self, stop_run).start()

    # -- logs and teardown ----------------------------------------------------------------
    def save_logs(self) -> list[str]:
        """Each service's log into ``compose/<service>.log`` here; returns the services."""
        if not self.started:
            return []
        _, out, _ = self._sh(self.script("logs", f"{PROJECT_LABEL}={self.name}", SERVICE_LABEL,
                                         self.compose.service, LOG_MARKER, str(LOG_LINES)))
        saved: list[str] = []
        self.local_dir.mkdir(parents=True, exist_ok=True)
        for block in out.split(LOG_MARKER)[1:]:
            name, _, text = block.partition("\n")
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", name.strip()) or "service"
            (self.local_dir / f"{name}.log").write_text(text, encoding="utf-8")
            saved.append(name)
        return saved

    def down(self) -> None:
        """``down -v --remove-orphans``, then whatever still carries the project's label."""
        if not self.started or self.down_done:
            return
        self.down_done = True
        self._sh(self.script("down", PROJECT_LABEL, self.name,
                             *self.compose_argv("down", "-v", "--remove-orphans", "-t", "3")))


class ServiceWatch:
    """While the tests run: a service that stops ends the run (``stop_run``), as the seed
    harness's ``--abort-on-container-exit`` did; :meth:`ComposeProject.check` names it."""

    def __init__(self, project: ComposeProject, stop_run: Callable[[], object]) -> None:
        self.project = project
        self.stop_run = stop_run
        #: The service that stopped, once one did.
        self.stopped: str = ""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hil-compose-watch", daemon=True)

    def start(self) -> ServiceWatch:
        """Start watching (when there is a service to watch)."""
        if self.project.long_running:
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._done.wait(WATCH_INTERVAL):
            try:
                states = self.project.states()
            except Exception:  # a failed look (a link gone): the run's own end tells
                continue
            for name in self.project.long_running:
                state = states.get(name)
                if (state is None or state.status != "running") and not self._done.is_set():
                    self.stopped = name
                    with contextlib.suppress(Exception):  # the run ended meanwhile
                        self.stop_run()
                    return

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        self._done.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(10)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["COMPOSE_LABEL", "ComposeProject", "ServiceState", "local_shell", "project_name",
           "tests_service"]
