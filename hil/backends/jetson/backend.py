"""The Jetson target: a board's Docker engine reached over one SSH connection.

Every step travels over the same SSH connection (:mod:`hil.ssh.connection`, a Fabric
connection opened in the background from configure time on), on channels of
their own; round trips are what a remote session costs, so:

* preflight is one remote shell script (identity, L4T, tools, ``docker
  info``, free space, swap, image and worker presence, and the worker's CUDA
  probe in a container of the dependencies image started with the target's
  runtime), while the lease is requested in parallel on another channel;
* sync is rsync tunnelled through the same connection (:mod:`hil.ssh.sync`);
* a present image costs nothing more (its presence came with preflight);
* the run is one script: it installs the worker when the board lacks it, writes
  ``lastfailed.json``, removes stale containers, runs the container in its own
  process group and reports exit code and OOM state on a marker line;
* telemetry samples on its own channel; the results come back after the run's
  end marker on the same channel (a separate tar fetch when that failed).

Commands are started with exec want-reply off, saving a round trip each.  The
scripts are ``.sh`` files of this package (``scripts/``), their parameters
quoted in one place (:func:`hil.backends.jetson.shell.board_command`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import posixpath
import shlex
import time
from dataclasses import dataclass, field
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
    worker_command,
    worker_digest,
    worker_files,
)
from hil.backends.compose import ComposeProject, ServiceWatch
from hil.backends.images import ImageRecipe, recipe
from hil.backends.jetson.facts import jetpack_of, l4t_of_image
from hil.backends.jetson.shell import board_command, script_text
from hil.config import TargetSpec
from hil.errors import (
    BuildFailedError,
    ConfigError,
    ConnectionLostError,
    DiskLowError,
    EngineDownError,
    HilError,
    RunTimedOutError,
    RuntimeMissingError,
    TargetUnhealthyError,
    UnreachableError,
)
from hil.progress import Progress
from hil.ssh.connection import SshConnection as Connection
from hil.ssh.lease import Holder, Lease
from hil.ssh.sync import (
    Rsync,
    SyncStats,
    check_remote_dir,
    human_bytes,
    list_files,
    out_dir,
    sync_marker,
    tree_digest,
)
from hil.ssh.telemetry import Telemetry
from hil.tiers import probe_words

#: Marker that starts the run script's last line on standard error.
END_MARKER = b"\x1ehil-end "
#: Marker of the image id after a build.
ID_MARKER = "\x1ehil-id "
#: How many results folders of earlier runs stay on the board.
KEEP_RUNS = 10
#: Results folders up to this size (KiB) come back on the run's own channel.
INBAND_RESULTS_KB = 65536


def _sections(text: str) -> dict[str, str]:
    """Split the preflight script's output at ``@@hil:NAME`` lines; the first section of a
    name wins (the script writes each once, before anything the image controls)."""
    out: dict[str, str] = {}
    name = ""
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("@@hil:"):
            if name:
                out.setdefault(name, "\n".join(lines).strip())
            name, lines = line[6:].strip(), []
        else:
            lines.append(line)
    if name:
        out.setdefault(name, "\n".join(lines).strip())
    return out


def fetch_cap() -> int:
    """The most bytes a run's results may bring back (``HIL_FETCH_MAX_MB``, default 1024):
    the container chooses what it writes, the host's disk is not its to fill."""
    try:
        megabytes = float(os.environ.get("HIL_FETCH_MAX_MB", "") or 1024)
    except ValueError:
        megabytes = 1024.0
    return int(max(megabytes, 1.0) * 1024 * 1024)


def extract_results(stream: Any, local: Path, skipped: list[str] | None = None) -> list[str]:
    """Extract a results tar stream into ``local``; returns the file names.

    Members that would land outside ``local`` (absolute, ``..``, links,
    devices) are skipped, and so is what passes :func:`fetch_cap` in all
    (named in ``skipped``).  An empty stream is no results folder on the board.
    """
    import tarfile

    local.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    room = fetch_cap()
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                name = posixpath.normpath(member.name)
                if name == "." or name.startswith(("/", "..")) or not (
                        member.isfile() or member.isdir()):
                    continue
                if member.isfile() and member.size > room:
                    if skipped is not None:
                        skipped.append(name)
                    continue
                room -= member.size if member.isfile() else 0
                member.name = name
                if hasattr(tarfile, "data_filter"):
                    tar.extract(member, local, filter="data")
                else:  # pragma: no cover - Python < 3.10.12 / 3.11.4
                    tar.extract(member, local)
                if member.isfile():
                    names.append(name)
    except tarfile.ReadError:
        if names:
            raise
    return names


def fetch_tree(conn: Connection, remote: str, local: Path, timeout: float = 600.0,
               skipped: list[str] | None = None) -> list[str]:
    """Copy the board folder ``remote`` into ``local`` as one tar stream; returns the names.

    One round trip, where rsync's protocol takes about eight: results folders
    are new on every run, so rsync's delta transfer has nothing to save.
    """
    import tarfile

    chan = conn.exec(board_command("fetch", remote))
    chan.settimeout(timeout)
    try:
        return extract_results(chan.makefile("rb"), local, skipped)
    except (tarfile.ReadError, OSError) as err:
        if not conn.alive:
            raise ConnectionLostError(conn.lost_reason or "connection lost while fetching",
                                      target=conn.target) from err
        raise
    finally:
        chan.close()


def _lib_folder(files: dict[str, bytes]) -> str:
    """The worker's folder on the board, relative to the home folder (named by content)."""
    return posixpath.join(".cache", "pytest-hil", f"lib-{worker_digest(files)}")


def _lib_b64(files: dict[str, bytes]) -> str:
    """The worker's files as a base64 tar stream, for the scripts that install them."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(files.items()):
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(data), 0o644
            tar.addfile(member, io.BytesIO(data))
    return base64.b64encode(buf.getvalue()).decode()


def host_dir(out: str) -> str:
    """The board folder of a run's own files (compose's override and output), beside its
    results folder ``out``: the container writes in ``out``, never here, so nothing the board
    writes for the run can follow a link the container made."""
    return out.rstrip("/") + ".host"


def _create_log(req: RunRequest) -> str:
    """Where compose's output goes when it creates the tests' service (shown on failure)."""
    return posixpath.join(host_dir(req.out), "compose", "create.out")


def _pgid_file(req: RunRequest) -> str:
    """Where the run script keeps its process group id while the container runs."""
    return posixpath.join(posixpath.dirname(req.out), req.name + ".pgid")


class _EndFilter:
    """Passes standard error through, minus the run script's end marker line.

    What follows the marker line is the results folder as a tar stream
    (:attr:`trailer`), so that a run's results come back on its own channel.
    """

    def __init__(self, sink: ByteSink) -> None:
        self.sink = sink
        self.held = b""
        self.end: list[str] | None = None
        self.trailer = bytearray()

    def feed(self, data: bytes) -> None:
        if self.end is not None:
            self.trailer += data
            return
        data = self.held + data
        self.held = b""
        idx = data.find(END_MARKER)
        if idx >= 0:
            if idx:
                self.sink(data[:idx])
            rest = data[idx + len(END_MARKER):]
            line, nl, after = rest.partition(b"\n")
            if nl:
                self.end = line.decode("utf-8", "replace").split()
                self.trailer += after
            else:
                self.held = data[idx:]
            return
        # Hold back a tail that could be the start of the marker.
        for n in range(min(len(END_MARKER) - 1, len(data)), 0, -1):
            if END_MARKER.startswith(data[-n:]):
                self.held, data = data[-n:], data[:-n]
                break
        if data:
            self.sink(data)

    def flush(self) -> None:
        if self.held and self.end is None:
            self.sink(self.held)
        self.held = b""


@dataclass
class BoardState:
    """What preflight learnt about the board (facts reused by later steps)."""

    home: str = ""
    uid: str = ""
    gid: str = ""
    remote_dir: str = ""
    image_present: bool = False
    image_id: str = ""
    #: The worker's content-addressed folder is on the board.
    lib_present: bool = False
    #: The CUDA probe ran in a container of the present image (or came from its cache).
    gpu_checked: bool = False
    tools: set[str] = field(default_factory=set)
    telemetry: str = ""
    #: Digest of the last completed sync, as the board holds it ("" = unknown or stale).
    synced: str = ""
    #: Digest to record on the board with the next command (after a sync).
    pending_marker: str = ""


class SshBackend(Backend):
    """Runs the suites in a container on a board's Docker engine over SSH."""

    #: Take the lease during preflight, in parallel (sessions); ``hil doctor`` turns it off.
    eager_lease = True
    #: Run the GPU probe even when the board holds a result for the same boot/engine/image.
    fresh_probe = False

    def __init__(self, spec: TargetSpec, root: Path, progress: Progress, *,
                 rebuild: bool = False, lease_timeout: float | None = None) -> None:
        super().__init__(spec, root, progress, rebuild=rebuild, lease_timeout=lease_timeout)
        self.conn: Connection | None = None
        self.lease: Lease | None = None
        self.rsync: Rsync | None = None
        self.board = BoardState()
        self.recipe: ImageRecipe | None = None
        self.report: PreflightReport | None = None
        self.last_sync: SyncStats | None = None
        #: Files fetched by the last fetch().
        self.fetched: list[str] = []
        self._failures: list[HilError] = []
        #: (container name, pgid file) of a run that did not end cleanly: cleaned up in fetch.
        self._dirty: tuple[str, str] | None = None
        self._telemetry: Telemetry | None = None
        #: Run ids whose container was started (their results folder exists on the board).
        self._started: set[str] = set()
        #: (run id, segment) of the runs whose results came back on the run's channel.
        self._inband: set[tuple[str, int]] = set()
        #: The services beside the tests (``[compose]``), once started by prepare().
        self.compose: ComposeProject | None = None

    # -- connection -------------------------------------------------------------------------
    def connect(self) -> Connection:
        """The session's connection: the one opened at configure time, else a new one."""
        if self.conn is None or not self.conn.alive:
            if self.conn is not None:
                self.conn.close()
            from hil.ssh.connection import connect

            conn = connect(self.spec)
            self.conn = conn
            if self.rsync is not None:
                self.rsync.close()
            self.rsync = Rsync(conn, self.spec.name)
        return self.conn

    def reconnect(self, within: float) -> Connection:
        """Open a new connection, retrying for ``within`` seconds (after a lost link)."""
        deadline = time.monotonic() + within
        delay = 0.2
        while True:
            try:
                return self.connect()
            except (UnreachableError, ConnectionLostError):
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)  # back-off between connection attempts, not a readiness wait
                delay = min(delay * 2, 2.0)

    def _lost(self, what: str) -> ConnectionLostError:
        reason = self.conn.lost_reason if self.conn is not None else ""
        return ConnectionLostError("connection to the board lost" + (f" {what}" if what else ""),
                                   target=self.spec.name, tail=reason)

    # -- preflight --------------------------------------------------------------------------
    def _preflight_command(self, fresh_probe: bool = False) -> str:
        """``scripts/preflight.sh`` with this target's parameters: every check in one round trip.

        The CUDA probe (``scripts/gpu-probe.sh``: the worker's ``--probe`` in a
        container of the dependencies image with the target's runtime) starts
        first, in the background, when the image and the worker are on the
        board; its successful result is cached there under a key of the boot
        id, the engine, daemon.json's mtime, the image id, the runtime and the
        worker's content: a session reuses it while none of those changed;
        ``fresh_probe`` (``hil doctor``) always runs it.
        """
        spec = self.spec
        raw = spec.ssh.remote_dir.strip()
        rel = raw[2:] if raw.startswith("~/") else raw
        return board_command(
            "preflight",
            TAG=self.recipe.tag if self.recipe is not None else "",
            RUNTIME=spec.docker.runtime,
            REMOTE=rel or ".",
            SYNCED="1" if raw and raw not in ("~", "/", ".") else "0",
            LIB=_lib_folder(worker_files()),
            LIB_MOUNT=CONTAINER_LIB,
            WORKER_IN=CONTAINER_WORKER,
            FRESH="1" if fresh_probe else "0",
            PROBE=script_text("gpu-probe"),
        )

    def inspect(self) -> PreflightReport:
        """Run every preflight check; connection faults raise, check failures are reported."""
        spec = self.spec
        self._failures = []
        start = time.monotonic()
        try:
            self.recipe = recipe(spec, self.root)
        except ConfigError:
            self.recipe = None
        conn = self.connect()
        self.timings["connect"] = round(time.monotonic() - start, 3)
        if self.eager_lease and self.lease is None:
            self.lease = Lease(conn, timeout=self.lease_timeout, target=spec.name,
                               on_wait=self._on_lease_wait).start()
        res = conn.run(self._preflight_command(self.fresh_probe),
                       timeout=max(60.0, spec.timeouts.connect * 6))
        sec = _sections(res.stdout)
        checks: list[Check] = []
        facts: dict[str, str] = {}

        def check(name: str, ok: bool, detail: str, error: HilError | None = None,
                  required: bool = True) -> None:
            checks.append(Check(name, ok, detail, required))
            if not ok and required and error is not None:
                self._failures.append(error)

        ep = conn.endpoint
        check("ssh", True, f"{ep.user}@{ep.hostname}:{ep.port} as '{ep.alias}', host key "
              f"{conn.host_key} known")
        facts["ssh"] = f"{ep.user}@{ep.hostname}:{ep.port}"
        if "end" not in sec:
            raise TargetUnhealthyError("the preflight script did not finish on the board",
                                       target=spec.name, exited=res.exited,
                                       tail=res.tail("stdout", 20).strip())
        board = self.board
        ids = sec.get("id", "").split()
        board.uid, board.gid = [*ids, "", ""][:2]
        facts["board.hostname"] = sec.get("host", "")
        facts["board.arch"] = sec.get("arch", "")
        board.home = sec.get("home", "")
        board.tools = set(sec.get("tools", "").split())
        board.lib_present = sec.get("worker", "").strip() == "present"
        board.synced = sec.get("synced", "").strip()
        # remote_dir: checked as written, then as the board resolves it (symlinks).
        try:
            check_remote_dir(spec.ssh.remote_dir, board.home,
                             allow_outside_home=spec.ssh.allow_outside_home, target=spec.name)
            board.remote_dir = check_remote_dir(sec.get("dir", ""), board.home,
                                                allow_outside_home=spec.ssh.allow_outside_home,
                                                target=spec.name)
            check("remote dir", True, board.remote_dir)
        except ConfigError as err:
            check("remote dir", False, str(err), err)
        facts["remote_dir"] = board.remote_dir
        # Engine.
        info = sec.get("info", "")
        info_lines = info.splitlines()
        info_rc = info_lines[-1].removeprefix("rc=") if info_lines else "?"
        runtimes: list[str] = []
        if info_rc == "0":
            fields = info_lines[0].rsplit("|", 1)[0].split("|", 2)
            version, root_dir, rt_json = [*fields, "", ""][:3]
            with contextlib.suppress(ValueError):
                runtimes = sorted(json.loads(rt_json))
            facts.update({"docker.version": version, "docker.root": root_dir,
                          "runtimes": ",".join(runtimes)})
            check("engine", True, f"Docker {version} answers for {ep.user}; data root {root_dir}")
        else:
            # Without an engine, --format still prints its empty fields ("||null|"): dropped.
            text = "\n".join(line for line in info_lines[:-1]
                             if line.strip().strip("|") not in ("", "null")).strip()
            hint = ("add the user to the docker group: sudo usermod -aG docker " + ep.user
                    if "permission denied" in text.lower() else
                    "start it on the board: sudo systemctl start docker")
            check("engine", False, f"docker info failed: {text.splitlines()[-1] if text else '?'}",
                  EngineDownError(f"the board's Docker engine does not answer for {ep.user}",
                                  target=spec.name, command="docker info",
                                  exited=int(info_rc) if info_rc.isdigit() else None,
                                  tail=text, hint=hint))
        runtime = spec.docker.runtime
        if runtime and info_rc == "0":
            ok = runtime in runtimes
            check("runtime", ok, f"'{runtime}' registered" if ok else
                  f"no '{runtime}' runtime (has: {', '.join(runtimes)})",
                  RuntimeMissingError(
                      f"the engine has no '{runtime}' runtime (it has: {', '.join(runtimes)})",
                      target=spec.name, command="docker info",
                      hint="install nvidia-container-toolkit, then: sudo nvidia-ctk runtime "
                           "configure --runtime=docker && sudo systemctl restart docker"))
        # Disk.
        df = sec.get("df", "").split()
        if info_rc == "0" and len(df) >= 4 and df[3].isdigit():
            free = int(df[3])
            facts["docker.free_mb"] = str(free)
            need = spec.preflight.min_free_mb
            check("disk", free >= need, f"{free} MB free on {facts.get('docker.root')} "
                  f"(need {need} MB)",
                  DiskLowError(f"only {free} MB free on the engine's data root "
                               f"{facts.get('docker.root')} (need {need} MB)", target=spec.name,
                               hint="free space: docker system prune, or remove old images"))
        elif info_rc == "0":
            check("disk", False, "free space of the data root unknown", required=False)
        # Swap.
        swap_kb = sec.get("swap", "0")
        swap_mb = int(swap_kb) // 1024 if swap_kb.isdigit() else 0
        facts["swap_mb"] = str(swap_mb)
        if spec.preflight.require_swap:
            check("swap", swap_mb > 0, f"{swap_mb} MB" if swap_mb else "no swap (required)",
                  TargetUnhealthyError("the board has no swap and the target requires it",
                                       target=spec.name,
                                       hint="create a swap file (JetPack: sudo systemctl enable "
                                            "--now nvzramconfig, or a swapfile)"))
        else:
            check("swap", True, f"{swap_mb} MB" if swap_mb else "none (not required)",
                  required=False)
        # L4T / JetPack against the base image.
        tegra = sec.get("tegra", "")
        base = spec.docker.build_args.get("BASE_IMAGE", "")
        want = l4t_of_image(base)
        if tegra:
            l4t, jetpack = jetpack_of(tegra)
            facts.update({"l4t": l4t, "jetpack": jetpack})
            if want:
                ok = bool(l4t) and l4t.split(".")[0] == want.split(".")[0]
                check("l4t", ok, f"L4T {l4t} (JetPack {jetpack or '?'}); base image L4T {want}",
                      TargetUnhealthyError(
                          f"the board runs L4T {l4t or '?'} but the base image {base} is built "
                          f"for L4T {want}", target=spec.name,
                          hint="use a base image of the board's L4T major (BASE_IMAGE tag r"
                               f"{l4t.split('.')[0] if l4t else '?'}.x)"))
            else:
                check("l4t", True, f"L4T {l4t} (JetPack {jetpack or '?'})", required=False)
        elif want:
            check("l4t", False, f"no /etc/nv_tegra_release; base image wants L4T {want}",
                  TargetUnhealthyError(f"the board is not a Jetson (no /etc/nv_tegra_release) "
                                       f"but the base image {base} is L4T {want}",
                                       target=spec.name))
        # Tools.
        missing = [t for t in ("rsync", "flock", "tar") if t not in board.tools]
        check("tools", not missing, "rsync, flock, tar present" if not missing else
              f"missing on the board: {', '.join(missing)}",
              TargetUnhealthyError(f"the board lacks {', '.join(missing)}", target=spec.name,
                                   hint=f"sudo apt install {' '.join(missing)}"))
        board.telemetry = ("tegrastats" if "tegrastats" in board.tools else
                           "nvidia-smi" if "nvidia-smi" in board.tools else "")
        facts["telemetry"] = board.telemetry or "none"
        # Image and GPU.
        if self.recipe is not None:
            board.image_id = sec.get("image", "").strip()
            board.image_present = bool(board.image_id)
            check("image", True, f"{self.recipe.tag} " + ("present" if board.image_present else
                                                          "absent: will be built"),
                  required=False)
        self._gpu_check(sec.get("gpu", ""), check, facts)
        self.timings["preflight"] = round(time.monotonic() - start, 3)
        self.report = PreflightReport(spec.name, tuple(checks), facts)
        return self.report

    def _gpu_check(self, text: str, check: Any, facts: dict[str, str]) -> None:
        """Judge the output of ``scripts/gpu-probe.sh`` (empty: the probe could not run yet)."""
        spec = self.spec
        image = self.recipe.tag if self.recipe is not None else ""
        runtime = spec.docker.runtime or "the default runtime"
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines:
            why = ("no image recipe" if not image else
                   f"{image} is not on the board yet" if not self.board.image_present else
                   "the worker is not on the board yet")
            check("gpu", True, f"{why}: the CUDA probe runs after the build", required=False)
            return
        self.board.gpu_checked = True
        cached = lines[0] == "cached:yes"
        lines = lines[1:] if cached else lines
        rc = lines[-1].removeprefix("rc=") if lines[-1].startswith("rc=") else "?"
        body = lines[:-1] if rc != "?" else lines
        info: dict[str, Any] | None = None
        for line in reversed(body):
            with contextlib.suppress(ValueError):
                found = json.loads(line)
                if isinstance(found, dict):
                    info = found
                    break
        if rc != "0" or info is None:
            what = f"the CUDA probe in a container of {image} with {runtime} failed (exit {rc})"
            check("gpu", False, what, TargetUnhealthyError(
                what, target=spec.name, exited=int(rc) if rc.isdigit() else None,
                command=f"docker run --runtime {spec.docker.runtime or 'runc'} {image} "
                        f"python3 {CONTAINER_WORKER} --probe",
                tail="\n".join(body[-20:])))
            return
        words = probe_words(info, image)
        cuda = bool(info.get("cuda"))
        facts["cuda"] = "usable" if cuda else "not usable"
        seen = ("(cached probe) " if cached else "") + words
        if spec.tier >= 2:
            check("gpu", cuda, seen + f"; tier {spec.tier} declared", TargetUnhealthyError(
                f"declares tier {spec.tier} (CUDA GPU) but {words}", target=spec.name,
                hint=f"check nvidia-container-toolkit and the target's docker.runtime "
                     f"({runtime}), and that the image keeps CUDA builds of torch and "
                     "onnxruntime (no CPU wheels shadowing the base image's)"))
        else:
            check("gpu", True, seen + f"; tier {spec.tier} declared: the declared capabilities "
                  "hold", required=False)

    def preflight(self) -> PreflightReport:
        """Inspect the board and raise the first required failure's error."""
        report = self.inspect()
        if self._failures:
            err = self._failures[0]
            if not err.tail:
                err.tail = report.table()
            raise err
        return report

    def _on_lease_wait(self, holder: Holder) -> None:
        self.progress.step(f"board '{self.spec.name}' is leased by {holder.describe()}; "
                           f"waiting up to {self.lease_timeout:.0f} s")

    # -- prepare ----------------------------------------------------------------------------
    def _prepare(self, plan: RunPlan) -> str:
        """Take the lease, sync the checkout, build the image when its tag is absent."""
        if self.report is None:
            self.preflight()
        with self.phase("lease"):
            self.acquire_lease()
        with self.phase("sync"):
            self.sync()
        with self.phase("image"):
            tag = self.image()
        if self.spec.compose.file:
            self.compose = ComposeProject(
                self.spec, self._shell, engine_root=self.board.remote_dir, local_root=self.root,
                override_path=posixpath.join(
                    host_dir(out_dir(self.board.remote_dir, plan.run_id)), "compose",
                    "override.json"),
                local_dir=plan.local_out / "compose", progress=self.progress,
                judge_owners=False,  # under the board's lease every other project is stale
                rebuild=self.rebuild)
            with self.phase("services"):
                self.compose.up(tag)
        return tag

    def _shell(self, command: str, timeout: float) -> tuple[int, str, str]:
        """One shell command on the board: (exit code, stdout, stderr)."""
        res = self.connect().run(command, timeout=timeout)
        return res.exited, res.stdout, res.stderr

    def acquire_lease(self) -> Lease:
        """Hold the board's lease (waiting up to ``lease_timeout``); DeviceBusyError if not."""
        conn = self.connect()
        if self.lease is None or (self.lease.acquired and not self.lease.held):
            self.lease = Lease(conn, timeout=self.lease_timeout, target=self.spec.name,
                               on_wait=self._on_lease_wait)
        self.lease.wait()
        return self.lease

    def sync(self) -> SyncStats:
        """rsync the checkout to the board's remote_dir."""
        self.connect()
        assert self.rsync is not None
        if not self.board.remote_dir:
            raise ConfigError("remote_dir not checked (preflight did not run)", target=self.spec.name)
        files = list_files(self.root, self.spec.ssh.include)
        digest = tree_digest(self.root, files)
        if digest and digest == self.board.synced:
            stats = SyncStats(files=len(files.paths or ()),
                              skipped_links=tuple(files.skipped_links))
            self.last_sync = stats
            self.progress.step(f"{self.spec.name}:{self.board.remote_dir} is up to date "
                               f"({stats.files} files unchanged since the last sync)")
            return stats
        try:
            stats = self.rsync.push(self.root, self.board.remote_dir,
                                    excludes=self.spec.ssh.excludes, files=files)
            self.board.pending_marker = digest
        except ConnectionLostError as err:
            raise ConnectionLostError(f"connection lost during sync: {err.message}",
                                      target=self.spec.name) from err
        self.last_sync = stats
        self.progress.step(
            f"synced to {self.spec.name}:{self.board.remote_dir}: {stats.transferred} of "
            f"{stats.files} files changed, {stats.deleted} deleted, "
            f"{human_bytes(stats.bytes_sent)} sent")
        for link in stats.skipped_links:
            self.progress.detail(f"skipped symlink pointing outside the checkout: {link}")
        return stats

    def image(self) -> str:
        """The image tag, built on the board unless already there (or ``rebuild``)."""
        spec = self.spec
        rec = self.recipe or recipe(spec, self.root)
        self.recipe = rec
        tag = rec.tag
        if self.board.image_present and not self.rebuild:
            self.image_id = self.board.image_id
            self.progress.step(f"image {tag} is up to date on the board (content hash)")
        else:
            self.build(rec)
        if not self.board.gpu_checked:
            self._late_gpu_check()
        return tag

    def build(self, rec: ImageRecipe) -> None:
        """``docker build`` on the board from the synced tree (``scripts/build.sh``); streams the log."""
        spec = self.spec
        conn = self.connect()
        files = sorted({rec.dockerfile, *rec.inputs})
        if any("\n" in name for name in files):
            raise ConfigError("a build input's name holds a newline", target=spec.name)
        args = ["docker", "build", "-t", rec.tag, "-f", rec.dockerfile,
                "--label", f"{CONTAINER_LABEL}=image"]
        for key, value in rec.build_args:
            args += ["--build-arg", f"{key}={value}"]
        if spec.docker.build_network:
            args += ["--network", spec.docker.build_network]
        limit = int(spec.timeouts.build)
        command = board_command("build", *args[2:], DIR=self.board.remote_dir,
                                FILES="\n".join(files), LIMIT=str(limit), TAG=rec.tag,
                                ID_MARKER=ID_MARKER)
        self.progress.step(f"building {rec.tag} on {spec.name} from {rec.dockerfile} "
                           f"({len(rec.inputs)} input file(s))")
        start = time.monotonic()
        buf = b""
        image_id = ""

        def on_out(data: bytes) -> None:
            nonlocal buf, image_id
            buf += data
            while b"\n" in buf:
                raw, _, buf = buf.partition(b"\n")
                line = raw.decode("utf-8", "replace").rstrip("\r")
                if line.startswith(ID_MARKER):
                    image_id = line[len(ID_MARKER):].strip()
                elif line.strip():
                    self.build_line(line)

        chan = conn.exec(command)
        try:
            code = conn.stream(chan, on_out, on_out,
                               deadline=time.monotonic() + spec.timeouts.build + 30)
        except ConnectionLostError as err:
            raise ConnectionLostError(f"connection lost while building {rec.tag}",
                                      target=spec.name, tail="\n".join(self.build_log[-30:])
                                      ) from err
        except TimeoutError:
            code = 124
        finally:
            chan.close()
        if buf.strip():
            on_out(b"\n")
        self.timings["build"] = round(time.monotonic() - start, 3)
        if code != 0:
            last = next((ln for ln in reversed(self.build_log) if ln.strip()), "")
            why = f"timed out after {limit} s" if code == 124 else last[:200]
            raise BuildFailedError(f"building {rec.tag} on the board failed: {why}",
                                   target=spec.name, command=shlex.join(args), exited=code,
                                   tail="\n".join(self.build_log[-30:]))
        self.image_id = image_id
        self.board.image_present = True
        self.board.image_id = image_id
        self.board.gpu_checked = False  # a new image: probed again

    def _late_gpu_check(self, raise_first: bool = True) -> None:
        """The CUDA probe when preflight could not run it: right after the build.

        Its row replaces preflight's in :attr:`report`; ``raise_first=False``
        (``hil doctor``) records a failure instead of raising it.
        """
        checks: list[Check] = []
        failures: list[HilError] = []

        def check(name: str, ok: bool, detail: str, error: HilError | None = None,
                  required: bool = True) -> None:
            checks.append(Check(name, ok, detail, required))
            if not ok and required and error is not None:
                failures.append(error)

        facts: dict[str, str] = {}
        self._gpu_check(self.probe_gpu(), check, facts)
        if self.report is not None:  # the table shows the probe's row, not preflight's
            self.report = PreflightReport(
                self.report.target,
                tuple(c for c in self.report.checks if c.name != "gpu") + tuple(checks),
                {**self.report.facts, **facts})
        self._failures += failures
        if failures and raise_first:
            err = failures[0]
            if not err.tail and self.report is not None:
                err.tail = self.report.table()
            raise err

    def probe_gpu(self) -> str:
        """Run ``scripts/gpu-probe.sh`` for the present image (installing the worker if absent)."""
        assert self.recipe is not None
        lib, files = self.worker_lib()
        command = board_command(
            "gpu-probe", self.recipe.tag, self.spec.docker.runtime, lib,
            "1" if self.fresh_probe else "0", CONTAINER_LIB, CONTAINER_WORKER,
            LIB_B64=None if self.board.lib_present else _lib_b64(files))
        res = self.connect().run(command, timeout=max(120.0, self.spec.timeouts.connect * 12))
        if "rc=70" not in res.stdout.splitlines():
            self.board.lib_present = True
        return str(res.stdout)

    # -- run --------------------------------------------------------------------------------
    def worker_lib(self) -> tuple[str, dict[str, bytes]]:
        """The folder of the worker's files on the board (content-addressed) and the files."""
        files = worker_files()
        return posixpath.join(self.board.home, _lib_folder(files)), files

    def request(self, plan: RunPlan, image: str) -> RunRequest:
        """The test container for ``plan``, with paths on the board."""
        lib, _ = self.worker_lib()
        return RunRequest(
            name=plan.container_name,
            image=image,
            command=worker_command(plan.pytest_args),
            env={**plan.env, "HIL_OUT": CONTAINER_OUT, "HOME": "/tmp"},
            workdir=f"{self.spec.docker.workdir}/{plan.subdir}".rstrip("/"),
            src=self.board.remote_dir,
            out=out_dir(self.board.remote_dir, plan.run_id),
            labels={CONTAINER_LABEL: plan.run_id},
            runtime=self.spec.docker.runtime,
            network=self.spec.docker.network,
            memory=self.spec.docker.memory,
            src_mount=self.spec.docker.workdir,
            lib=lib,
            user=f"{self.board.uid}:{self.board.gid}" if self.board.uid else "",
            remove=False,  # the run script removes it, after reading OOMKilled
        )

    def _run_command(self, plan: RunPlan, req: RunRequest) -> str:
        """``scripts/run.sh`` for ``req``, in a session of its own (its process group is killable).

        The worker's files travel only when preflight found the board without them.
        """
        lib, files = self.worker_lib()
        marker = self.board.pending_marker  # the sync before this run completed: recorded
        return "exec setsid -w " + board_command(
            "run", *req.docker_cli(),
            OUT=req.out, HOST=host_dir(req.out), NAME=req.name, PIDF=_pgid_file(req), LIB=lib,
            LIB_B64=None if self.board.lib_present else _lib_b64(files),
            SYNC_MARKER=sync_marker(self.board.remote_dir) if marker else None,
            SYNC_DIGEST=marker or None, LASTFAILED=plan.lastfailed, LABEL=CONTAINER_LABEL,
            KEEP=str(KEEP_RUNS), INBAND_KB=str(INBAND_RESULTS_KB), END=END_MARKER.decode(),
            # [compose]: the test container is made by compose as the tests' service.
            CREATE=self.compose.tests_script(req, errors_to=_create_log(req))
            if self.compose is not None else None)

    def run(self, plan: RunPlan, image: str, on_stdout: ByteSink, on_stderr: ByteSink) -> RunEnd:
        """Run the test container on the board, streaming its output as it arrives."""
        conn = self.connect()
        req = self.request(plan, image)
        command = self._run_command(plan, req)
        self._dirty = (req.name, _pgid_file(req))
        self._started.add(plan.run_id)
        plan.local_out.mkdir(parents=True, exist_ok=True)
        if self.board.telemetry:
            self._telemetry = Telemetry(conn, self.board.telemetry,
                                        plan.local_out / "telemetry.jsonl").start()
        errs = _EndFilter(on_stderr)
        start = time.monotonic()
        chan: Any = None
        watch: ServiceWatch | None = None
        try:
            chan = conn.exec(command)
            if self.compose is not None:  # a service that stops ends the run
                watch = self.compose.watch(lambda: conn.run(
                    f"docker kill {shlex.quote(req.name)}", timeout=30))
            code = conn.stream(chan, on_stdout, errs.feed,
                               deadline=start + self.spec.timeouts.run)
        except ConnectionLostError as err:
            raise self._lost("") from err
        except TimeoutError:
            self._kill(req, conn)
            raise RunTimedOutError(f"the run exceeded {self.spec.timeouts.run:.0f} s and was "
                                   "killed", target=self.spec.name) from None
        except KeyboardInterrupt:
            self._kill(req, conn)
            raise
        finally:
            if watch is not None:
                watch.stop()
            errs.flush()
            if chan is not None:
                chan.close()
            if self._telemetry is not None:
                self._telemetry.stop()
            self.timings["run"] = round(time.monotonic() - start, 3)
        if errs.end is not None and errs.trailer:
            import io
            import tarfile

            with contextlib.suppress(tarfile.TarError, OSError):
                self.fetched = extract_results(io.BytesIO(bytes(errs.trailer)), plan.local_out)
                self._inband.add((plan.run_id, plan.segment))
        if errs.end is None:
            # The script died before its last line: the container may still be there.
            return RunEnd(exit_code=code, reason=f"the run script on the board exited {code} "
                          "without reporting")
        self._dirty = None
        self.board.lib_present = True
        rc_text = errs.end[0] if errs.end else str(code)
        oom = len(errs.end) > 1 and errs.end[1] == "true"
        exit_code = int(errs.end[2]) if len(errs.end) > 2 and errs.end[2].lstrip("-").isdigit() \
            else (int(rc_text) if rc_text.lstrip("-").isdigit() else code)
        reason = ""
        # As on a local engine: SIGKILL (docker kill, OOM) is a kill, the rest the worker's end.
        if oom or exit_code == 137:
            reason = "the test container was killed" + (" (OOM)" if oom else
                                                         f" (exit {exit_code})")
        if self.compose is not None:
            self.compose.check()
        return RunEnd(exit_code=exit_code, oom_killed=oom, reason=reason)

    def _kill(self, req: RunRequest, conn: Connection) -> None:
        """Kill the run's process group and remove its container (best effort, bounded)."""
        with contextlib.suppress(HilError, OSError):
            conn.run(board_command("kill", req.name, _pgid_file(req)), timeout=30)
            self._dirty = None

    def stop(self) -> None:
        """Kill the run going on the board (its process group, its container), if any; after a
        lost link, over a new connection.  Best effort and bounded."""
        dirty = self._dirty
        if dirty is None:
            return
        with contextlib.suppress(HilError, OSError):
            conn = self.conn
            if conn is None or not conn.alive:
                conn = self.reconnect(max(30.0, self.spec.timeouts.connect * 3))
            conn.run(board_command("kill", *dirty), timeout=60)
            self._dirty = None

    # -- fetch ------------------------------------------------------------------------------
    def fetch(self, plan: RunPlan) -> None:
        """Copy the run's results folder back (after a lost link, over a new connection)."""
        if self.compose is not None and self.conn is not None and self.conn.alive:
            with contextlib.suppress(HilError, OSError):
                self.compose.save_logs()
        if plan.run_id not in self._started:
            return  # nothing ran on the board
        if (plan.run_id, plan.segment) in self._inband:
            self.timings["fetch"] = 0.0
            return  # the results came back with the run
        start = time.monotonic()
        if self.conn is None or not self.conn.alive:
            self.progress.step(f"reconnecting to {self.spec.name} to fetch the results")
            self.reconnect(max(30.0, self.spec.timeouts.connect * 3))
        conn = self.connect()
        remote = out_dir(self.board.remote_dir, plan.run_id)
        try:
            skipped: list[str] = []
            self.fetched = fetch_tree(conn, remote, plan.local_out, skipped=skipped)
            if skipped:
                self.progress.step(f"{len(skipped)} result file(s) past the fetch cap "
                                   f"(HIL_FETCH_MAX_MB) left on the board: "
                                   f"{', '.join(skipped[:5])}")
        except ConnectionLostError as err:
            raise ConnectionLostError(f"connection lost while fetching results: {err.message}",
                                      target=self.spec.name) from err
        self.timings["fetch"] = round(time.monotonic() - start, 3)

    def close(self) -> None:
        """Stop a run still going, telemetry; release the lease, close the connection
        (idempotent)."""
        self.stop()
        if self._telemetry is not None:
            self._telemetry.stop()
            self._telemetry = None
        if self.compose is not None:  # before the lease goes: the next holder finds none
            with contextlib.suppress(HilError, OSError):
                self.compose.down()
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        if self.rsync is not None:
            self.rsync.close()
            self.rsync = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
