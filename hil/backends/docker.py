"""The local-engine target (Colima, Docker Desktop, dockerd).

The checkout is bind-mounted read-only and the run folder is mounted at
``/hil/out``, so there is nothing to sync and nothing to fetch: results land
in ``reports/runs/<run-id>/`` as they are written, also when the run dies.
Engine API calls go through :mod:`hil.backends.engine` (the Docker SDK).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil.backends.base import (
    CONTAINER_LABEL,
    CONTAINER_LIB,
    CONTAINER_OUT,
    CONTAINER_WORKER,
    Backend,
    ByteSink,
    Check,
    PreflightReport,
    RunEnd,
    RunPlan,
    RunRequest,
    local_worker_lib,
    place_nonce,
    worker_command,
)
from hil.backends.compose import ComposeProject, ServiceWatch, local_shell
from hil.backends.engine import Engine, EngineError, EngineNotFoundError, open_engine
from hil.backends.images import build_context, recipe
from hil.errors import (
    BuildFailedError,
    ConfigError,
    ContainerRemoveError,
    EngineDownError,
    RunLostError,
    RunTimedOutError,
    RuntimeMissingError,
    TargetUnhealthyError,
)
from hil.tiers import probe_words

OWNER_LABEL = "io.pytest-hil.owner"


@dataclass(frozen=True)
class EngineCandidate:
    """One place a Docker engine may answer, and why it was tried."""

    url: str
    why: str


def _context_meta(name: str) -> Path:
    """Where the docker CLI keeps a context's endpoint (``meta.json``)."""
    return (Path.home() / ".docker" / "contexts" / "meta"
            / hashlib.sha256(name.encode()).hexdigest() / "meta.json")


def _engine_reason(err: Exception) -> str:
    """Why an engine did not answer, in words: the socket's own reason when the client's
    message wraps one (``Connection refused``), else its first line, cut at a word."""
    text = str(err)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found[1].strip()
    if "timed out" in text.lower():
        return "timed out"
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 200 else line[:200].rsplit(" ", 1)[0] + " ..."


def _context_host(name: str) -> str | None:
    """The docker endpoint of a docker CLI context, read from its meta.json."""
    meta = _context_meta(name)
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
        host = data["Endpoints"]["docker"]["Host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(host) if host else None


def engine_candidates(engine: str, context: str, source: str = "") -> list[EngineCandidate]:
    """Where to look for the engine, in order: target, DOCKER_HOST, context, Colima, default.

    ``source`` (the target's file) prefixes the error of a context that does not exist.
    """
    found: list[EngineCandidate] = []
    if engine:
        return [EngineCandidate(engine, "the target's docker.engine")]
    if context:
        host = _context_host(context)
        if host is None:
            raise ConfigError(
                f"{source or 'the target'}: key 'docker.context' names {context!r}, which is "
                f"not a docker context here "
                f"(no {_context_meta(context)})",
                hint="`docker context ls` lists them; or set docker.engine to the engine's URL")
        return [EngineCandidate(host, f"the target's docker.context {context!r}")]
    if os.environ.get("DOCKER_HOST"):
        found.append(EngineCandidate(os.environ["DOCKER_HOST"], "DOCKER_HOST"))
    try:
        config = json.loads((Path.home() / ".docker" / "config.json").read_text(encoding="utf-8"))
        current = os.environ.get("DOCKER_CONTEXT") or config.get("currentContext")
    except (OSError, ValueError):
        current = os.environ.get("DOCKER_CONTEXT")
    if current and current != "default":
        host = _context_host(current)
        if host:
            found.append(EngineCandidate(host, f"docker context {current!r}"))
    profiles = [os.environ.get("COLIMA_PROFILE", "default")]
    for base in (Path.home() / ".colima", Path.home() / ".config" / "colima"):
        if base.is_dir():
            profiles += sorted(p.name for p in base.iterdir() if p.is_dir())
    for base in (Path.home() / ".colima", Path.home() / ".config" / "colima"):
        for profile in dict.fromkeys(profiles):
            sock = base / profile / "docker.sock"
            found.append(EngineCandidate(f"unix://{sock}", f"Colima profile {profile!r}"))
    found.append(EngineCandidate("unix:///var/run/docker.sock", "the default socket"))
    unique: dict[str, EngineCandidate] = {}
    for cand in found:
        unique.setdefault(cand.url, cand)
    return list(unique.values())


_MEMORY_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def memory_bytes(value: str) -> int:
    """``'48m'`` -> bytes, as ``docker run --memory`` reads it (b, k, m, g; plain = bytes)."""
    text = value.strip().lower()
    if text[-2:-1].isalpha() and text.endswith("b"):  # "48mb"
        text = text[:-1]
    unit, number = (text[-1], text[:-1]) if text[-1:].isalpha() else ("b", text)
    try:
        return int(float(number) * _MEMORY_UNITS[unit])
    except (KeyError, ValueError):
        raise ConfigError(f"docker.memory {value!r} is not a size like '512m' or '2g'") from None


def container_config(req: RunRequest) -> dict[str, Any]:
    """The Engine API ``POST /containers/create`` body for ``req`` (what ``docker create`` sends)."""
    binds = [f"{req.src}:{req.src_mount}:ro", f"{req.out}:{CONTAINER_OUT}:rw"]
    if req.lib:
        binds.append(f"{req.lib}:{CONTAINER_LIB}:ro")
    # No engine-side log: the run's output is read live through the attach stream (opened
    # before the start) and kept here; the default json-file driver would also write every
    # event line to the engine's disk, which slows a chatty run down for nothing.
    host: dict[str, Any] = {"Binds": binds, "NetworkMode": req.network or "default",
                            "LogConfig": {"Type": "none", "Config": {}}}
    if req.runtime:
        host["Runtime"] = req.runtime
    if req.memory:
        host["Memory"] = host["MemorySwap"] = memory_bytes(req.memory)
    return {
        "Image": req.image, "Cmd": list(req.command), "WorkingDir": req.workdir,
        "Env": [f"{k}={v}" for k, v in req.env.items()], "Labels": dict(req.labels),
        "User": req.user, "Tty": False, "OpenStdin": False, "StdinOnce": False,
        "AttachStdin": False, "AttachStdout": True, "AttachStderr": True, "HostConfig": host,
    }


class DockerBackend(Backend):
    """Runs the suites in a container on a Docker engine this host reaches directly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.engine: Engine | None = None
        self.engine_url = ""
        #: The CUDA probe passed in this session (tier 2 targets).
        self._gpu_checked = False
        self._removers: list[threading.Thread] = []
        #: The test container running now (killed by :meth:`stop`).
        self._running: str | None = None
        #: The services beside the tests (``[compose]``), once started by prepare().
        self.compose: ComposeProject | None = None

    # -- engine ---------------------------------------------------------------
    def connect(self) -> Engine:
        """The client of the first engine that answers."""
        if self.engine is not None:
            return self.engine
        tried: list[str] = []
        timeout = max(self.spec.timeouts.connect, 1.0)
        for cand in engine_candidates(self.spec.docker.engine, self.spec.docker.context,
                                      self.spec.source):
            if cand.url.startswith("unix://") and not os.path.exists(cand.url[7:]):
                tried.append(f"{cand.url} ({cand.why}: no such socket)")
                continue
            try:
                engine = open_engine(cand.url, timeout)
                engine.ping()
            except EngineError as err:
                tried.append(f"{cand.url} ({cand.why}: {_engine_reason(err)})")
                continue
            self.engine, self.engine_url = engine, cand.url
            return engine
        raise EngineDownError(
            "no Docker engine answered; tried " + "; ".join(tried),
            target=self.spec.name,
            hint="start one (colima start) or set docker.engine in the target's TOML",
        )

    def _check_shared(self) -> Check:
        """Colima's VM shares only the home directory unless told otherwise."""
        if "/.colima/" not in self.engine_url and "/.config/colima/" not in self.engine_url:
            return Check("checkout visible to engine", True, "engine is not a Colima VM",
                         required=False)
        home = Path.home().resolve()
        root = self.root.resolve()
        if root == home or home in root.parents:
            return Check("checkout visible to engine", True, f"{root} is under {home}")
        raise TargetUnhealthyError(
            f"the checkout {root} lies outside what Colima shares ({home})",
            target=self.spec.name,
            hint=f"restart Colima with: colima start --mount {root}:w (or move the checkout "
                 "under your home directory)",
        )

    def remove_stale(self) -> list[str]:
        """Remove labelled containers whose owning process on this host is gone."""
        engine = self.connect()
        removed: list[str] = []
        host = socket.gethostname()
        for c in engine.containers(CONTAINER_LABEL):
            owner = (c.get("Labels") or {}).get(OWNER_LABEL, "")
            owner_host, _, pid = owner.rpartition(":")
            if owner_host == host and pid.isdigit() and _pid_alive(int(pid)):
                continue
            engine.remove(c["Id"])
            removed.append(c["Names"][0].lstrip("/") if c.get("Names") else c["Id"][:12])
        return removed

    def preflight(self) -> PreflightReport:
        engine = self.connect()
        runtime = self.spec.docker.runtime
        try:
            version = engine.version()
            # `docker info` is the slow call; only a runtime check needs it.
            info = engine.info() if runtime else {}
        except EngineError as err:
            raise EngineDownError(f"the engine at {self.engine_url} failed: {err}",
                                  target=self.spec.name) from err
        checks = [Check("engine", True, f"{self.engine_url} (Docker {version.get('Version')})")]
        runtimes = sorted((info.get("Runtimes") or {}).keys())
        if runtime:
            if runtime not in runtimes:
                raise RuntimeMissingError(
                    f"the engine has no '{runtime}' runtime (it has: {', '.join(runtimes)})",
                    target=self.spec.name,
                    hint="install nvidia-container-toolkit and run nvidia-ctk runtime configure",
                )
            checks.append(Check("runtime", True, f"'{runtime}' registered"))
        checks.append(self._check_shared())
        checks.append(self._gpu_preflight())
        stale = self.remove_stale()
        checks.append(Check("stale containers", True,
                            f"removed {', '.join(stale)}" if stale else "none", required=False))
        facts = {"engine": self.engine_url, "docker.version": str(version.get("Version")),
                 "engine.os": f"{version.get('Os')}/{version.get('Arch')}",
                 "runtimes": ",".join(runtimes)}
        return PreflightReport(self.spec.name, tuple(checks), facts)

    # -- CUDA probe (tier 2) ---------------------------------------------------
    def _gpu_preflight(self) -> Check:
        """Tier 2: the CUDA probe in the dependencies image when it is there (else after the build)."""
        if self.spec.tier < 2:
            return Check("gpu", True, f"tier {self.spec.tier} declared: not probed", required=False)
        tag = recipe(self.spec, self.root).tag
        try:
            self.connect().inspect_image(tag)
        except EngineNotFoundError:
            return Check("gpu", True, f"{tag} is not built yet: the CUDA probe runs after the "
                         "build", required=False)
        except EngineError as err:
            raise EngineDownError(f"the engine at {self.engine_url} failed: {err}",
                                  target=self.spec.name) from err
        return self.probe_gpu(tag)

    def probe_gpu(self, tag: str) -> Check:
        """The worker's ``--probe`` in a container of ``tag`` with the target's runtime.

        Raises :class:`TargetUnhealthyError` with the probe's words when a
        tier-2 target's image shows no CUDA (torch, or an onnxruntime CUDA
        provider that really loads), or when the probe container fails.
        """
        engine = self.connect()
        runtime = self.spec.docker.runtime
        host: dict[str, Any] = {"Binds": [f"{local_worker_lib()}:{CONTAINER_LIB}:ro"],
                                "NetworkMode": "none"}
        if runtime:
            host["Runtime"] = runtime
        config = {"Image": tag, "Entrypoint": ["python3"], "Cmd": [CONTAINER_WORKER, "--probe"],
                  "Labels": {CONTAINER_LABEL: "probe",
                             OWNER_LABEL: f"{socket.gethostname()}:{os.getpid()}"},
                  "AttachStdout": True, "AttachStderr": True, "HostConfig": host}
        what = f"a container of {tag} with {runtime or 'the default runtime'}"
        out = bytearray()
        code: int | None = None
        try:
            cid = engine.create(config, f"hil-probe-{os.getpid()}-{time.time_ns() % 10**9}")
            try:
                stream = engine.attach(cid)
                engine.start(cid)
                for stdout, stderr in stream:
                    out += (stdout or b"") + (stderr or b"")
                code = int(engine.wait(cid, timeout=300).get("StatusCode", -1))
            finally:
                _remove(engine, cid)
        except EngineError as err:
            raise TargetUnhealthyError(f"the CUDA probe could not run in {what}: {err}",
                                       target=self.spec.name) from err
        text = out.decode("utf-8", "replace")
        info: dict[str, Any] | None = None
        for line in reversed(text.splitlines()):
            with contextlib.suppress(ValueError):
                found = json.loads(line)
                if isinstance(found, dict):
                    info = found
                    break
        if code != 0 or info is None:
            raise TargetUnhealthyError(f"the CUDA probe in {what} failed (exit {code})",
                                       target=self.spec.name, exited=code,
                                       command=f"python3 {CONTAINER_WORKER} --probe",
                                       tail=text[-3000:])
        words = probe_words(info, tag)
        if not info.get("cuda"):
            raise TargetUnhealthyError(
                f"declares tier {self.spec.tier} (CUDA GPU) but {words}", target=self.spec.name,
                hint="check the engine's nvidia runtime (docker.runtime) and that the image "
                     "ships CUDA builds of torch or onnxruntime")
        self._gpu_checked = True
        return Check("gpu", True, f"{words}; tier {self.spec.tier} declared")

    # -- image ----------------------------------------------------------------
    def _prepare(self, plan: RunPlan) -> str:
        if not self.spec.compose.file:
            with self.phase("image"):
                return self.image(plan)
        out = plan.local_out / "compose"
        # The override compose reads holds the real environment: a private folder, not
        # the run folder (which keeps a redacted copy and is published).
        private = Path(tempfile.mkdtemp(prefix="hil-compose-"))
        atexit.register(shutil.rmtree, private, True)
        self.compose = ComposeProject(
            self.spec, local_shell({"DOCKER_HOST": self.engine_url}),
            engine_root=str(self.root.resolve()), local_root=self.root,
            override_path=str(private / "override.json"), local_dir=out,
            progress=self.progress, judge_owners=True,
            rebuild=self.rebuild)
        with self.phase("services"):
            self.compose.read()
        # A tests' service with its own build: compose builds it, no dependencies image.
        tag = self.compose.tests_image
        if not tag:
            with self.phase("image"):
                tag = self.image(plan)
        with self.phase("services"):
            self.compose.up(tag)
        return tag

    def image(self, plan: RunPlan) -> str:
        """The dependencies image's tag, built unless its content hash exists."""
        engine = self.connect()
        rec = recipe(self.spec, self.root)
        tag = rec.tag
        if not self.rebuild:
            try:
                self.image_id = engine.inspect_image(tag)["Id"]
                self.progress.step(f"image {tag} is up to date (content hash)")
                if self.spec.tier >= 2 and not self._gpu_checked:
                    self.probe_gpu(tag)  # built since preflight looked
                return tag
            except EngineNotFoundError:
                pass
        self.progress.step(f"building {tag} from {rec.dockerfile} "
                           f"({len(rec.inputs)} input file(s))")
        error = ""
        try:
            stream = engine.build(
                build_context(rec, self.root), dockerfile=rec.dockerfile, tag=tag,
                buildargs=dict(rec.build_args), network=self.spec.docker.build_network,
                labels={CONTAINER_LABEL: "image"}, timeout=self.spec.timeouts.build,
            )
            for chunk in stream:
                text = chunk.get("stream") or chunk.get("status") or ""
                if "error" in chunk:
                    error = str(chunk["error"])
                    text = error
                for line in text.rstrip("\n").splitlines():
                    if line.strip():
                        self.build_line(line)
        except EngineError as err:
            error = str(err)
        if error:
            raise BuildFailedError(
                f"building {tag} failed: {error.strip().splitlines()[-1][:200]}",
                target=self.spec.name, command=f"docker build -f {rec.dockerfile}",
                tail="\n".join(self.build_log[-30:]),
            )
        self.image_id = engine.inspect_image(tag)["Id"]
        if self.spec.tier >= 2:
            self.probe_gpu(tag)  # built in this session: probed right after the build
        return tag

    # -- run ------------------------------------------------------------------
    def request(self, plan: RunPlan, image: str) -> RunRequest:
        """The test container for ``plan``."""
        # Compact events (passed phases in the test's finish event) and Allure results sent
        # on the channel, written by the EventFeeder on this side: a target's env can turn
        # them off with HIL_EVENTS = "full" and HIL_ALLURE_RESULTS = "files".
        env = {"HIL_EVENTS": "compact", "HIL_ALLURE_RESULTS": "events", **plan.env,
               "HIL_OUT": "/hil/out", "HOME": "/tmp"}
        return RunRequest(
            name=plan.container_name,
            image=image,
            command=worker_command(plan.pytest_args),
            env=env,
            workdir=f"{self.spec.docker.workdir}/{plan.subdir}".rstrip("/"),
            src=str(self.root.resolve()),
            out=str(plan.local_out.resolve()),
            labels={CONTAINER_LABEL: plan.run_id,
                    OWNER_LABEL: f"{socket.gethostname()}:{os.getpid()}"},
            runtime=self.spec.docker.runtime,
            network=self.spec.docker.network,
            memory=self.spec.docker.memory,
            src_mount=self.spec.docker.workdir,
            lib=str(local_worker_lib()),
            user=f"{os.getuid()}:{os.getgid()}",
        )

    def run(self, plan: RunPlan, image: str, on_stdout: ByteSink, on_stderr: ByteSink) -> RunEnd:
        engine = self.connect()
        req = self.request(plan, image)
        plan.local_out.mkdir(parents=True, exist_ok=True)
        place_nonce(plan.local_out, plan.nonce)
        if plan.lastfailed is not None:
            (plan.local_out / "lastfailed.json").write_text(plan.lastfailed, encoding="utf-8")
        try:
            if self.compose is not None:  # the tests' service, created by compose
                self.compose.create_tests(req)
                cid = engine.inspect_container(req.name)["Id"]
            else:
                cid = engine.create(container_config(req), req.name)
        except EngineError as err:
            raise TargetUnhealthyError(f"could not create the test container: {err}",
                                       target=self.spec.name) from err
        timed_out = threading.Event()
        self._running = cid

        def kill_on_timeout() -> None:
            timed_out.set()
            with contextlib.suppress(EngineError):
                engine.kill(cid)

        timer = threading.Timer(self.spec.timeouts.run, kill_on_timeout)
        watch: ServiceWatch | None = None
        timer.daemon = True
        try:
            try:
                stream = engine.attach(cid)
                engine.start(cid)
                timer.start()
                if self.compose is not None:  # a service that stops ends the run
                    watch = self.compose.watch(lambda: engine.kill(cid))
                finished = False
                for stdout, stderr in stream:
                    if stderr:
                        on_stderr(stderr)
                    if stdout and on_stdout(stdout):
                        finished = True  # the worker's last word: no need to wait for exit
                        stream.close()
                        break
                if finished:
                    result, state = {}, {}
                else:
                    result = engine.wait(cid, timeout=max(self.spec.timeouts.connect, 30))
                    state = engine.inspect_container(cid)["State"]
            except EngineError as err:
                if timed_out.is_set():
                    raise RunTimedOutError(f"the run exceeded {self.spec.timeouts.run:.0f} s",
                                           target=self.spec.name) from err
                raise RunLostError(f"lost the engine mid-run: {err}",
                                   target=self.spec.name) from err
        except BaseException:
            timer.cancel()
            self._running = None
            if watch is not None:
                watch.stop()
            _remove(engine, cid)  # failed or interrupted: the container goes before anything else
            raise
        self._running = None
        timer.cancel()
        if watch is not None:
            watch.stop()
        # Normal end: remove in the background; close() waits for it.
        remover = threading.Thread(target=_remove, args=(engine, cid), daemon=True)
        remover.start()
        self._removers.append(remover)
        if timed_out.is_set():
            raise RunTimedOutError(f"the run exceeded {self.spec.timeouts.run:.0f} s and was "
                                   "killed", target=self.spec.name)
        if self.compose is not None:
            self.compose.check()
        if not result:
            return RunEnd(exit_code=None)
        code = int(result.get("StatusCode", state.get("ExitCode", -1)) or 0)
        reason = ""
        # SIGKILL of the entry shell: docker kill, the engine, the OOM killer. Anything else
        # is how the worker ended (a test that crashed the interpreter: its code or signal).
        if code == 137 or state.get("OOMKilled"):
            reason = ("the test container was killed" + (" (OOM)" if state.get("OOMKilled") else
                                                         f" (exit {code})"))
        return RunEnd(exit_code=code, oom_killed=bool(state.get("OOMKilled")), reason=reason)

    def stop(self) -> None:
        """Kill the test container running now (its ``run`` then returns a killed end)."""
        cid, engine = self._running, self.engine
        if cid is not None and engine is not None:
            with contextlib.suppress(EngineError):
                engine.kill(cid)

    def fetch(self, plan: RunPlan) -> None:
        """Nothing to copy (the run folder was mounted at /hil/out) but the services' logs."""
        if self.compose is not None:
            self.compose.save_logs()

    def close(self) -> None:
        self.stop()
        if self.compose is not None:
            self.compose.down()
        for remover in self._removers:
            remover.join()
        self._removers.clear()
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def _remove(engine: Engine, cid: str) -> None:
    """Remove the container, retrying briefly while the engine finishes with it."""
    deadline = time.monotonic() + 30
    while True:
        try:
            engine.remove(cid)
            return
        except EngineNotFoundError:
            return
        except EngineError as err:
            if time.monotonic() > deadline:
                raise ContainerRemoveError(f"could not remove container {cid[:12]}: {err}"
                                           ) from err
            time.sleep(0.2)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
