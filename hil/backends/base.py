"""The Backend protocol every container target implements, and the plain data it trades in.

A session drives one backend through these steps:

    preflight() -> prepare() -> run(request, on_stdout, on_stderr) -> [stop()] -> fetch()

``stop`` (from any thread) ends the run going on now: ``-x`` reached on another
member, Ctrl-C, SIGTERM, a run cut short.  ``fetch`` only brings results back.

``prepare`` times its own steps (:data:`PREPARE_PHASES`) into ``timings`` for the
session's phases, and saves the image build's lines as ``build.log`` in the run
folder, the same way for every kind (:meth:`Backend.build_line`).

``run`` streams the container's standard output (the worker's event lines) and
standard error to the callbacks as bytes arrive; the session decodes events
and feeds pytest.  Everything a backend needs from the session arrives in a
:class:`RunPlan`; the backend turns it into a :class:`RunRequest` with its own
paths (local paths for the docker backend, paths on the board for ssh).
"""

from __future__ import annotations

import abc
import contextlib
import functools
import hashlib
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hil.config import TargetSpec
from hil.progress import Progress

#: Label put on every container pytest-hil starts; stale ones are removed at start.
CONTAINER_LABEL = "io.pytest-hil.run"
#: Where the results folder is mounted inside the container.
CONTAINER_OUT = "/hil/out"
#: The folder of the worker's files in the container (see :func:`worker_files`): the
#: worker's package (``hil.worker``, self-contained) as ``hil_worker``, so the project
#: need not ship pytest-hil.  xdist's workers import its plugin from there.
CONTAINER_LIB = "/hil/lib"
#: The package's folder in the container.
WORKER_PACKAGE = "hil_worker"
#: The file the container runs: the package's entry, run as a file (see its docstring).
CONTAINER_WORKER = f"{CONTAINER_LIB}/{WORKER_PACKAGE}/__main__.py"
#: Where pytest's capture files are kept in the container (see hil.worker.keep_capture_files).
CONTAINER_CAPTURE = "/tmp/hil-capture"
#: The container's first process: a shell that runs the worker (``$0``) with pytest's
#: arguments.  pytest is then not PID 1, which the kernel shields from the signals it
#: has no handler for (a test's ``os.kill(os.getpid(), SIGSEGV)`` would be ignored), and
#: when a test kills the interpreter the shell outlives it: its exit code tells how
#: (128 + the signal), and it copies the capture files, the crashed test's output so
#: far, into the results folder as ``capture-<segment>``.  The worker removes them when
#: it ends, so a run that ends copies nothing.
CONTAINER_ENTRY = (
    f'export HIL_CAPTURE={CONTAINER_CAPTURE}; python3 "$0" "$@"; rc=$?; '
    '[ -d "$HIL_CAPTURE" ] && cp -R "$HIL_CAPTURE" '
    '"${HIL_OUT:-/hil/out}/capture-${HIL_SEGMENT:-0}" 2>/dev/null; exit $rc'
)


@functools.cache
def worker_files() -> dict[str, bytes]:
    """What every target gets in :data:`CONTAINER_LIB`: the worker's package, by relative path.

    Its Python files only (no caches), under :data:`WORKER_PACKAGE`; read once per
    session, so preflight and the run name the same folder even if the files change.
    """
    from hil import worker

    folder = Path(worker.__file__).parent
    return {f"{WORKER_PACKAGE}/{path.name}": path.read_bytes()
            for path in sorted(folder.glob("*.py"))}


def worker_digest(files: Mapping[str, bytes]) -> str:
    """16 hex digits naming ``files`` by content: the folder they go in on a target's host."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    return digest.hexdigest()[:16]


def local_worker_lib() -> Path:
    """:func:`worker_files` in a folder of this host's cache, made once per content.

    Under the home folder (``$XDG_CACHE_HOME`` or ``~/.cache``), which Colima and
    Docker Desktop share with their VM, so the engine can mount it.
    """
    files = worker_files()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pytest-hil"
    folder = cache / f"lib-{worker_digest(files)}"
    if not folder.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=".lib-", dir=_made(cache)))
        for name, data in files.items():
            _made((staging / name).parent)
            (staging / name).write_bytes(data)
        try:
            staging.rename(folder)
        except OSError:  # another session made it first
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def place_nonce(folder: Path, nonce: str) -> None:
    """Put the run's nonce where the worker takes it (see :mod:`hil.worker.protocol`).

    The folder is the results folder the container writes in: what a former
    container left under the name (a link, say) is removed, never followed.
    """
    from hil.worker.protocol import NONCE_FILE

    path = folder / NONCE_FILE
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                 0o600)
    try:
        os.write(fd, nonce.encode("ascii") + b"\n")
    finally:
        os.close(fd)


def worker_command(pytest_args: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The container's command: the entry shell, the mounted worker, the pytest arguments."""
    return ("sh", "-c", CONTAINER_ENTRY, CONTAINER_WORKER, *pytest_args)


def describe_exit(code: int) -> str:
    """How a process ended, from its exit code as a shell reports it: 128 + N is signal N."""
    if code > 128:
        try:
            return f"signal {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return f"exit code {code}"

#: The steps of :meth:`Backend.prepare` a session reports as phases of their own, in order:
#: waiting for the board's lease, syncing the checkout, the image (built or found, and its
#: GPU probe), the compose services beside the tests.
PREPARE_PHASES = ("lease", "sync", "image", "services")

#: Takes a chunk of a container's output; a sink of standard output may return True to say
#: the worker has sent its last event, so the backend need not wait for the stream's end.
ByteSink = Callable[[bytes], "bool | None"]


@dataclass(frozen=True)
class Check:
    """One preflight check and its outcome."""

    name: str
    ok: bool
    detail: str
    #: False for checks that only inform (e.g. the board's hostname).
    required: bool = True


@dataclass(frozen=True)
class PreflightReport:
    """All preflight checks of one target, plus facts for the report's environment."""

    target: str
    checks: tuple[Check, ...]
    facts: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every required check passed."""
        return all(c.ok for c in self.checks if c.required)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (saved as ``preflight.json``)."""
        return {
            "target": self.target,
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail, "required": c.required}
                       for c in self.checks],
            "facts": dict(self.facts),
        }

    def table(self) -> str:
        """A plain-text table, one check per line."""
        width = max((len(c.name) for c in self.checks), default=4)
        lines = [f"preflight of target '{self.target}':"]
        for c in self.checks:
            mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
            lines.append(f"  {mark} {c.name:<{width}}  {c.detail}")
        return "\n".join(lines)


@dataclass(frozen=True)
class RunPlan:
    """What the session asks a backend to run."""

    run_id: str
    #: Arguments for pytest inside the container (paths already relative to the checkout).
    pytest_args: tuple[str, ...]
    #: Working directory relative to the checkout root ("" = the root).
    subdir: str
    env: Mapping[str, str]
    #: Local folder where this run's results must end up.
    local_out: Path
    #: Contents of ``lastfailed.json`` for ``--lf``/``--ff`` (None when absent).
    lastfailed: str | None = None
    #: 0 for the run's first container; N for the Nth resumed after a test crashed it.
    segment: int = 0
    #: Made here, for this run: the worker's ``exit`` event (and a board's end marker) must
    #: carry it.  It reaches the worker as a file the worker removes before any test runs
    #: (see :mod:`hil.worker.protocol`), never in the environment or the command line.
    nonce: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)

    @property
    def container_name(self) -> str:
        """The test container's name: one per segment, as the last one may still be going."""
        return f"hil-{self.run_id}" + (f"-{self.segment}" if self.segment else "")


@dataclass(frozen=True)
class RunRequest:
    """One test container, fully specified; turns into SDK kwargs or a docker CLI line."""

    name: str
    image: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    workdir: str
    src: str
    out: str
    labels: Mapping[str, str]
    runtime: str = ""
    network: str = ""
    memory: str = ""
    src_mount: str = "/src"
    #: Folder of the worker's files on the engine's host, mounted at CONTAINER_LIB ("" = none).
    lib: str = ""
    #: ``uid:gid`` to run as ("" = the image's user).
    user: str = ""
    #: ``--rm``; off where the caller reads the container's state (OOMKilled) before removing it.
    remove: bool = True

    def docker_cli(self, docker: str = "docker") -> list[str]:
        """``docker run`` argument list (for engines reached through a shell)."""
        # --log-driver none: the output is read live through the attached client; the
        # engine's own copy of every event line would only cost disk writes (eMMC on a board).
        args = [docker, "run", *(["--rm"] if self.remove else []), "-i", "--name", self.name,
                "--log-driver", "none", "-w", self.workdir,
                "-v", f"{self.src}:{self.src_mount}:ro", "-v", f"{self.out}:{CONTAINER_OUT}"]
        if self.lib:
            args += ["-v", f"{self.lib}:{CONTAINER_LIB}:ro"]
        if self.user:
            args += ["--user", self.user]
        for key, value in sorted(self.labels.items()):
            args += ["--label", f"{key}={value}"]
        for key, value in sorted(self.env.items()):
            args += ["-e", f"{key}={value}"]
        if self.runtime:
            args += ["--runtime", self.runtime]
        if self.network:
            args += ["--network", self.network]
        if self.memory:
            args += ["--memory", self.memory, "--memory-swap", self.memory]
        return [*args, self.image, *self.command]


@dataclass(frozen=True)
class RunEnd:
    """How the container ended."""

    exit_code: int | None
    oom_killed: bool = False
    #: Why the stream ended early, when it did (killed, connection lost...); "" when the
    #: container's own process ended (normally, or a test crashed the interpreter).
    reason: str = ""


class Backend(abc.ABC):
    """A way of reaching a target's Docker engine (locally or over SSH)."""

    def __init__(self, spec: TargetSpec, root: Path, progress: Progress, *,
                 rebuild: bool = False, lease_timeout: float | None = None) -> None:
        self.spec = spec
        self.root = root
        self.progress = progress
        self.rebuild = rebuild
        self.lease_timeout = spec.timeouts.lease if lease_timeout is None else lease_timeout
        #: Lines of the image build (see :meth:`build_line`), also in the run's ``build.log``.
        self.build_log: list[str] = []
        #: Name and digest of the image used, for the report's environment.
        self.image_id: str = ""
        #: Seconds of each step as this backend timed them (see :meth:`phase`); a session
        #: reports those of :data:`PREPARE_PHASES` as phases of their own.
        self.timings: dict[str, float] = {}
        self._build_path: Path | None = None
        self._build_file: IO[str] | None = None

    @abc.abstractmethod
    def preflight(self) -> PreflightReport:
        """Check the target is ready; raises the matching HilError on a required failure."""

    def prepare(self, plan: RunPlan) -> str:
        """Take what the run needs (lease, sync, image, services); returns the image tag.

        Whatever the kind, the image build's lines land in ``build.log`` of the
        run folder (``plan.local_out``) as they come, when an image is built.
        """
        self._build_path = plan.local_out / "build.log"
        try:
            return self._prepare(plan)
        finally:
            self._build_path = None
            if self._build_file is not None:
                self._build_file.close()
                self._build_file = None

    @abc.abstractmethod
    def _prepare(self, plan: RunPlan) -> str:
        """The kind's own :meth:`prepare`, its steps timed with :meth:`phase`."""

    def build_line(self, line: str) -> None:
        """One line of the image build: kept (a failed build shows the tail), shown as a
        detail, and written to the run folder's ``build.log``."""
        self.build_log.append(line)
        self.progress.detail(line)
        if self._build_path is None:
            return
        if self._build_file is None:
            self._build_path.parent.mkdir(parents=True, exist_ok=True)
            # The run folder is the container's results mount on a docker target: no links.
            fd = os.open(self._build_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                         0o644)
            self._build_file = os.fdopen(fd, "w", encoding="utf-8")
        self._build_file.write(line + "\n")

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a step into :attr:`timings` (added up when it runs more than once)."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.monotonic() - start, 3)

    @abc.abstractmethod
    def run(self, plan: RunPlan, image: str, on_stdout: ByteSink, on_stderr: ByteSink) -> RunEnd:
        """Run the test container, streaming its output; always removes the container."""

    @abc.abstractmethod
    def stop(self) -> None:
        """End the test container running now, if any: from any thread, bounded, best effort.

        A ``run`` in progress then returns (or raises) soon after; stopping what
        already ended does nothing.
        """

    @abc.abstractmethod
    def fetch(self, plan: RunPlan) -> None:
        """Bring the run's results into ``plan.local_out`` (also after a failure); only fetches:
        a run still going is the caller's to :meth:`stop` first."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections and leases (idempotent)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
