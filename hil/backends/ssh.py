"""The Jetson target: a board's Docker engine reached over one SSH connection.

Every step travels over the same SSH connection (:mod:`hil.sshconn`, a Fabric
connection opened in the background from configure time on), on channels of
their own; round trips are what a remote session costs, so:

* preflight is one remote shell script (identity, L4T, tools, ``docker
  info``, free space, swap, image presence, and a tiny container of the base
  image started with the target's runtime to see the GPU), while the lease is
  requested in parallel on another channel;
* sync is rsync tunnelled through the same connection (:mod:`hil.sync`);
* a present image costs nothing more (its presence came with preflight);
* the run is one script: it installs the worker (content-addressed), writes
  ``lastfailed.json``, removes stale containers, runs the container in its own
  process group and reports exit code and OOM state on a marker line;
* telemetry samples on its own channel; the results come back after the run's
  end marker on the same channel (a separate tar fetch when that failed).

Commands are started with exec want-reply off, saving a round trip each.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import posixpath
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil.backends.base import (
    CONTAINER_LABEL,
    CONTAINER_OUT,
    Backend,
    ByteSink,
    Check,
    PreflightReport,
    Progress,
    RunEnd,
    RunPlan,
    RunRequest,
    worker_command,
    worker_source,
)
from hil.backends.compose import ComposeProject, ServiceWatch
from hil.config import TargetSpec
from hil.errors import (
    BuildFailedError,
    ConfigError,
    DiskLowError,
    EngineDownError,
    HilError,
    RunLostError,
    RunTimedOutError,
    RuntimeMissingError,
    SyncFailedError,
    TargetUnhealthyError,
    UnreachableError,
)
from hil.images import ImageRecipe, recipe
from hil.lease import Holder, Lease
from hil.sshconn import ConnectionLostError
from hil.sshconn import SshConnection as Connection
from hil.sync import (
    Rsync,
    SyncStats,
    check_remote_dir,
    human_bytes,
    list_files,
    out_dir,
    sync_marker,
    tree_digest,
)
from hil.telemetry import Telemetry

#: Marker that starts the run script's last line on standard error.
END_MARKER = b"\x1ehil-end "
#: Marker of the image id after a build.
ID_MARKER = "\x1ehil-id "
#: Device nodes that mean "the GPU is visible" (discrete GPUs, then Jetson's iGPU).
GPU_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/nvhost-ctrl-gpu", "/dev/nvhost-gpu",
             "/dev/nvgpu/igpu0/ctrl", "/dev/nvmap")
#: How many results folders of earlier runs stay on the board.
KEEP_RUNS = 10
#: Results folders up to this size (KiB) come back on the run's own channel.
INBAND_RESULTS_KB = 65536
_L4T_TAG = re.compile(r":r(\d+)\.(\d+)(?:\.(\d+))?")


def l4t_of_image(image: str) -> str:
    """The L4T version an ``l4t-*`` image tag names (``...:r36.4.0-pth2.5`` -> ``36.4.0``)."""
    tag = image.rsplit("/", 1)[-1]
    m = _L4T_TAG.search(tag)
    if not m:
        return ""
    return ".".join(p for p in (m[1], m[2], m[3] or "0"))


def jetpack_of(nv_tegra_release: str) -> tuple[str, str]:
    """(L4T version, JetPack release) of an ``/etc/nv_tegra_release`` text ("" if unknown)."""
    try:
        from onboard.diag.tegra_release import parse_nv_tegra_release

        rel = parse_nv_tegra_release(nv_tegra_release)
        return rel.version, rel.jetpack or ""
    except ImportError:  # pragma: no cover - onboard ships with pytest-hil
        pass
    except Exception:
        return "", ""
    m = re.search(r"#\s*R(\d+).*?REVISION:\s*(\d+)(?:\.(\d+))?", nv_tegra_release)  # pragma: no cover
    if not m:  # pragma: no cover
        return "", ""
    version = f"{m[1]}.{m[2]}.{m[3] or 0}"  # pragma: no cover
    table = {"36.4.3": "6.2", "36.4.0": "6.1", "36.3.0": "6.0"}  # pragma: no cover
    return version, table.get(version, "")  # pragma: no cover


def _sections(text: str) -> dict[str, str]:
    """Split the preflight script's output at ``@@hil:NAME`` lines."""
    out: dict[str, str] = {}
    name = ""
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("@@hil:"):
            if name:
                out[name] = "\n".join(lines).strip()
            name, lines = line[6:].strip(), []
        else:
            lines.append(line)
    if name:
        out[name] = "\n".join(lines).strip()
    return out


def extract_results(stream: Any, local: Path) -> list[str]:
    """Extract a results tar stream into ``local``; returns the file names.

    Members that would land outside ``local`` (absolute, ``..``, links,
    devices) are skipped.  An empty stream is no results folder on the board.
    """
    import tarfile

    local.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                name = posixpath.normpath(member.name)
                if name == "." or name.startswith(("/", "..")) or not (
                        member.isfile() or member.isdir()):
                    continue
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


def fetch_tree(conn: Connection, remote: str, local: Path, timeout: float = 600.0) -> list[str]:
    """Copy the board folder ``remote`` into ``local`` as one tar stream; returns the names.

    One round trip, where rsync's protocol takes about eight: results folders
    are new on every run, so rsync's delta transfer has nothing to save.
    """
    import tarfile

    chan = conn.exec(f"cd {shlex.quote(remote)} 2>/dev/null && tar -cf - . 2>/dev/null")
    chan.settimeout(timeout)
    try:
        return extract_results(chan.makefile("rb"), local)
    except (tarfile.ReadError, OSError) as err:
        if not conn.alive:
            raise ConnectionLostError(conn.lost_reason or "connection lost while fetching",
                                      target=conn.target) from err
        raise
    finally:
        chan.close()


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
    base_present: bool = False
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
        self.timings: dict[str, float] = {}
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
            from hil.sshconn import connect

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

    def _lost(self, what: str) -> RunLostError:
        reason = self.conn.lost_reason if self.conn is not None else ""
        return RunLostError("connection to the board lost" + (f" {what}" if what else ""),
                            target=self.spec.name, tail=reason)

    # -- preflight --------------------------------------------------------------------------
    def _script(self, fresh_probe: bool = False) -> str:
        """The preflight script: one round trip for every check.

        The GPU probe (a container of the base image with the target's runtime)
        starts first, in the background, and its successful result is cached on
        the board under a key of the boot id, the engine's id and runtimes, the
        daemon.json mtime and the base image id: a session reuses it while none
        of those changed; ``fresh_probe`` (``hil doctor``) always runs it.
        """
        spec = self.spec
        rec = self.recipe
        q = shlex.quote
        base = spec.docker.build_args.get("BASE_IMAGE", "")
        raw = spec.ssh.remote_dir.strip()
        rel = raw[2:] if raw.startswith("~/") else raw
        runtime = f"--runtime {q(spec.docker.runtime)} " if spec.docker.runtime else ""
        tests = " ".join(f"[ -e {n} ] && echo dev:{n};" for n in GPU_NODES)
        probe = (tests + " for f in /usr/lib/*/libcuda.so* /usr/lib/*/nvidia/libcuda.so* "
                 "/usr/lib/*/tegra/libcuda.so* /usr/local/cuda/compat/libcuda.so*; do "
                 "[ -e \"$f\" ] && echo lib:$f && break; done; true")
        lines = [
            "s() { printf '\\n@@hil:%s\\n' \"$1\"; }",
            "info=$(docker info --format "
            "'{{.ServerVersion}}|{{.DockerRootDir}}|{{json .Runtimes}}|{{.ID}}' 2>&1); rc=$?",
            "cache=\"$HOME/.cache/pytest-hil\"; tmp=$(mktemp); bid=''; cached=''",
        ]
        if base:
            lines += [
                f"[ $rc = 0 ] && bid=$(docker image inspect -f '{{{{.Id}}}}' {q(base)} "
                "2>/dev/null)",
                "if [ -n \"$bid\" ]; then key=$(printf '%s|%s|%s|%s' "
                "\"$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)\" \"$info\" "
                "\"$(stat -c %Y /etc/docker/daemon.json 2>/dev/null)\" \"$bid\" | md5sum | "
                "cut -c1-16); cf=\"$cache/gpu-probe-$key\"",
                f"  if [ {1 if fresh_probe else 0} = 0 ] && [ -s \"$cf\" ]; then "
                "cached=1; cp \"$cf\" \"$tmp\"; else "
                f"(docker run --rm --pull never --network none {runtime}--entrypoint sh "
                f"{q(base)} -c {q(probe)} > \"$tmp\" 2>&1; echo rc=$? >> \"$tmp\") & fi",
                "fi",
            ]
        lines += [
            "s id; id -u; id -g",
            "s host; hostname",
            "s home; realpath -m -- \"$HOME\"",
            f"s dir; (cd \"$HOME\" && realpath -m -- {q(rel) if rel else q('.')})",
            "s arch; uname -m",
            "s tegra; head -n 1 /etc/nv_tegra_release 2>/dev/null",
            "s tools; for t in rsync flock setsid tegrastats nvidia-smi timeout tar; do "
            "command -v $t >/dev/null 2>&1 && echo $t; done",
            "s swap; awk '/^SwapTotal:/{print $2}' /proc/meminfo",
            "s info; printf '%s\\nrc=%s\\n' \"$info\" \"$rc\"",
            "root=${info#*|}; root=${root%%|*}",
            "s df; [ $rc = 0 ] && df -Pm \"$root\" 2>&1 | tail -n 1",
        ]
        raw_dir = spec.ssh.remote_dir.strip()
        if raw_dir and raw_dir not in ("~", "/", "."):
            # The digest of the last sync, unless anything under remote_dir changed since.
            lines.append(
                f"s synced; d=$(cd \"$HOME\" && realpath -m -- {q(rel) if rel else q('.')}); "
                "m=\"${d%/*}/.hil-sync-${d##*/}\"; [ -f \"$m\" ] && [ -d \"$d\" ] && "
                "[ -z \"$(find \"$d\" -newer \"$m\" -print -quit 2>/dev/null)\" ] && cat \"$m\"")
        if rec is not None:
            lines.append(f"s image; [ $rc = 0 ] && docker image inspect -f '{{{{.Id}}}}' "
                         f"{q(rec.tag)} 2>/dev/null")
        if base:
            lines += [
                "wait",
                "s base; echo \"$bid\"; [ -n \"$cached\" ] && echo cached:yes; "
                "[ -n \"$bid\" ] && cat \"$tmp\"",
                "[ -n \"$bid\" ] && [ -z \"$cached\" ] && tail -n 1 \"$tmp\" | grep -qx 'rc=0' "
                "&& mkdir -p \"$cache\" && cp \"$tmp\" \"$cf\"",
            ]
        lines += ["rm -f \"$tmp\"", "s end"]
        return "\n".join(lines) + "\n"

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
        res = conn.run(self._script(self.fresh_probe), timeout=max(60.0, spec.timeouts.connect * 6))
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
        self._gpu_check(sec.get("base", ""), check, facts)
        self.timings["preflight"] = round(time.monotonic() - start, 3)
        self.report = PreflightReport(spec.name, tuple(checks), facts)
        return self.report

    def _gpu_check(self, text: str, check: Any, facts: dict[str, str]) -> None:
        spec = self.spec
        base = spec.docker.build_args.get("BASE_IMAGE", "")
        lines = text.splitlines()
        if not base:
            check("gpu", True, "no BASE_IMAGE build arg: not probed", required=False)
            return
        cached = "cached:yes" in lines
        lines = [ln for ln in lines if ln != "cached:yes"]
        if not lines or not lines[0].startswith("sha256:"):
            self.board.base_present = False
            check("gpu", True, f"base image {base} not on the board yet: probed after the build",
                  required=False)
            return
        self.board.base_present = True
        self.board.gpu_checked = True
        rc = lines[-1].removeprefix("rc=") if lines[-1].startswith("rc=") else "?"
        devs = [ln[4:] for ln in lines if ln.startswith("dev:")]
        libs = [ln[4:] for ln in lines if ln.startswith("lib:")]
        runtime = spec.docker.runtime or "the default runtime"
        if rc != "0":
            out = "\n".join(lines[1:-1])
            check("gpu", False, f"a container with {runtime} failed to start (exit {rc})",
                  TargetUnhealthyError(f"a container of {base} with {runtime} failed to start",
                                       target=spec.name, exited=int(rc) if rc.isdigit() else None,
                                       command="docker run --runtime " + spec.docker.runtime,
                                       tail=out))
            return
        cuda = bool(devs) and bool(libs)
        facts["cuda"] = "visible" if cuda else "not visible"
        seen = ("(cached probe) " if cached else "") + (
            f"GPU visible in a container ({', '.join(devs)}; {libs[0]})" if cuda else
                f"no CUDA in a container with {runtime}"
                + (f" (devices: {', '.join(devs)})" if devs else ""))
        if spec.tier >= 2:
            check("gpu", cuda, seen + f"; tier {spec.tier} declared",
                  TargetUnhealthyError(f"declares tier {spec.tier} (CUDA GPU) but a container "
                                       f"with {runtime} sees no CUDA device", target=spec.name,
                                       hint="check nvidia-container-toolkit and the "
                                            "docker.runtime of the target"))
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
    def prepare(self, plan: RunPlan) -> str:
        """Take the lease, sync the checkout, build the image when its tag is absent."""
        if self.report is None:
            self.preflight()
        self.acquire_lease()
        self.sync()
        tag = self.image()
        if self.spec.compose.file:
            self.compose = ComposeProject(
                self.spec, self._shell, engine_root=self.board.remote_dir, local_root=self.root,
                override_path=posixpath.join(out_dir(self.board.remote_dir, plan.run_id),
                                             "compose", "override.json"),
                local_dir=plan.local_out / "compose", progress=self.progress,
                judge_owners=False,  # under the board's lease every other project is stale
                rebuild=self.rebuild)
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
        start = time.monotonic()
        try:
            self.lease.wait()
        except ConnectionLostError as err:
            raise UnreachableError(err.message, target=self.spec.name) from err
        self.timings["lease"] = round(time.monotonic() - start, 3)
        return self.lease

    def sync(self) -> SyncStats:
        """rsync the checkout to the board's remote_dir."""
        self.connect()
        assert self.rsync is not None
        if not self.board.remote_dir:
            raise ConfigError("remote_dir not checked (preflight did not run)", target=self.spec.name)
        files = list_files(self.root)
        digest = tree_digest(self.root, files)
        if digest and digest == self.board.synced:
            stats = SyncStats(files=len(files.paths or ()),
                              skipped_links=tuple(files.skipped_links))
            self.last_sync = stats
            self.timings["sync"] = 0.0
            self.progress.step(f"{self.spec.name}:{self.board.remote_dir} is up to date "
                               f"({stats.files} files unchanged since the last sync)")
            return stats
        try:
            stats = self.rsync.push(self.root, self.board.remote_dir,
                                    excludes=self.spec.ssh.excludes, files=files)
            self.board.pending_marker = digest
        except ConnectionLostError as err:
            raise SyncFailedError(f"connection lost during sync: {err.message}",
                                  target=self.spec.name) from err
        self.last_sync = stats
        self.timings["sync"] = round(stats.seconds, 3)
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
        """``docker build`` on the board from the synced tree; streams the log."""
        spec = self.spec
        conn = self.connect()
        q = shlex.quote
        files = " ".join(q(n) for n in sorted({rec.dockerfile, *rec.inputs}))
        args = ["docker", "build", "-t", rec.tag, "-f", rec.dockerfile,
                "--label", f"{CONTAINER_LABEL}=image"]
        for key, value in rec.build_args:
            args += ["--build-arg", f"{key}={value}"]
        if spec.docker.build_network:
            args += ["--network", spec.docker.build_network]
        limit = int(spec.timeouts.build)
        command = (f"exec 2>&1; cd {q(self.board.remote_dir)} || exit 70; "
                   f"tar -cf - -- {files} | timeout -s INT {limit} {shlex.join(args)} -; rc=$?; "
                   f"[ $rc = 0 ] && printf '{ID_MARKER}%s\\n' "
                   f"\"$(docker image inspect -f '{{{{.Id}}}}' {q(rec.tag)})\"; exit $rc")
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
                    self.build_log.append(line)
                    self.progress.detail(line)

        chan = conn.exec(command)
        try:
            code = conn.stream(chan, on_out, on_out,
                               deadline=time.monotonic() + spec.timeouts.build + 30)
        except ConnectionLostError as err:
            raise BuildFailedError(f"connection lost while building {rec.tag}",
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

    def _late_gpu_check(self) -> None:
        """The GPU probe, when the base image only arrived with the build."""
        base = self.spec.docker.build_args.get("BASE_IMAGE", "")
        if not base:
            return
        conn = self.connect()
        probe = _sections(conn.run(self._script(True)).stdout).get("base", "")
        checks: list[Check] = []
        self._failures = []

        def check(name: str, ok: bool, detail: str, error: HilError | None = None,
                  required: bool = True) -> None:
            checks.append(Check(name, ok, detail, required))
            if not ok and required and error is not None:
                self._failures.append(error)

        self._gpu_check(probe, check, {})
        if self._failures:
            raise self._failures[0]

    # -- run --------------------------------------------------------------------------------
    def worker_path(self) -> tuple[str, bytes]:
        """Where the worker goes on the board (content-addressed) and its bytes."""
        data = worker_source().read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:16]
        return posixpath.join(self.board.home, ".cache", "pytest-hil", f"worker-{digest}.py"), data

    def request(self, plan: RunPlan, image: str) -> RunRequest:
        """The test container for ``plan``, with paths on the board."""
        worker, _ = self.worker_path()
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
            worker=worker,
            user=f"{self.board.uid}:{self.board.gid}" if self.board.uid else "",
            remove=False,  # the run script removes it, after reading OOMKilled
        )

    def _run_script(self, plan: RunPlan, req: RunRequest) -> str:
        q = shlex.quote
        worker, data = self.worker_path()
        cli = req.docker_cli()
        pgid_file = _pgid_file(req)
        outs = posixpath.dirname(req.out)
        parts = [
            f"out={q(req.out)}; name={q(req.name)}; pidf={q(pgid_file)}",
            "mkdir -p \"$out\" || exit 70",
            f"w={q(worker)}; if [ ! -s \"$w\" ]; then mkdir -p \"${{w%/*}}\" && "
            f"printf '%s' {q(base64.b64encode(data).decode())} | base64 -d > \"$w.$$\" && "
            f"mv \"$w.$$\" \"$w\"; fi",
        ]
        if self.board.pending_marker:
            # The sync before this run completed: record it (no extra round trip).
            parts.append(f"printf '%s\\n' {q(self.board.pending_marker)} > "
                         f"{q(sync_marker(self.board.remote_dir))}")
        if plan.lastfailed is not None:
            parts.append(f"printf '%s' {q(plan.lastfailed)} > \"$out/lastfailed.json\"")
        parts += [
            # A run that did not finish leaves its .pgid file: only then can labelled
            # containers be stale, so the usual run pays no extra docker call.
            "set -- \"$out\"/../*.pgid; if [ -e \"$1\" ]; then "
            f"ids=$(docker ps -aq --filter label={CONTAINER_LABEL}); "
            "[ -n \"$ids\" ] && docker rm -f $ids >/dev/null 2>&1; fi",
            "echo $$ > \"$pidf\"",
            f"(cd {q(outs)} && ls -1t | grep -v '\\.pgid$' | tail -n +{KEEP_RUNS + 1} | "
            "xargs -r rm -rf) 2>/dev/null",
            self._container_command(req, cli),
            "rc=$?",
            # pytest's own codes (0-5) need no post-mortem; anything else may be OOM or kill.
            "st=''; if [ \"$rc\" -gt 5 ]; then "
            "st=$(docker inspect -f '{{.State.OOMKilled}} {{.State.ExitCode}}' \"$name\" "
            "2>/dev/null); fi",
            f"printf '{END_MARKER.decode()}%s %s\\n' \"$rc\" \"$st\" >&2",
            # The results follow the marker (small ones: big ones are fetched on their own).
            f"[ \"$(du -sk \"$out\" 2>/dev/null | cut -f1)\" -le {INBAND_RESULTS_KB} ] && "
            "tar -cf - -C \"$out\" . >&2 2>/dev/null",
            # Removal is off the session's path; a next run cleans up if it did not finish.
            "(docker rm -f \"$name\"; rm -f \"$pidf\") </dev/null >/dev/null 2>&1 &",
            "exit $rc",
        ]
        return "\n".join(parts) + "\n"

    def _container_command(self, req: RunRequest, cli: list[str]) -> str:
        """``docker run`` of the test container, or, with ``[compose]``, its creation as the
        tests' service by compose followed by ``docker start -a`` (the same streams)."""
        if self.compose is None:
            return shlex.join(cli)
        log = posixpath.join(req.out, "compose", "create.out")
        return (f"{{ {self.compose.tests_script(req, errors_to=log)} || "
                f"{{ cat {shlex.quote(log)} >&2; false; }}; }} && docker start -a \"$name\"")

    def _kill_command(self, name: str, pgid_file: str) -> str:
        q = shlex.quote
        return (f"p=$(cat {q(pgid_file)} 2>/dev/null); [ -n \"$p\" ] && kill -TERM -- -$p "
                f"2>/dev/null; docker rm -f {q(name)} >/dev/null 2>&1; rm -f {q(pgid_file)}; "
                f"true")

    def run(self, plan: RunPlan, image: str, on_stdout: ByteSink, on_stderr: ByteSink) -> RunEnd:
        """Run the test container on the board, streaming its output as it arrives."""
        conn = self.connect()
        req = self.request(plan, image)
        script = self._run_script(plan, req)
        command = f"exec setsid -w sh -c {shlex.quote(script)}"
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
            conn.run(self._kill_command(req.name, _pgid_file(req)), timeout=30)
            self._dirty = None

    # -- fetch ------------------------------------------------------------------------------
    def fetch(self, plan: RunPlan) -> None:
        """Copy the run's results folder back; after a lost link, reconnect and clean up first."""
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
        if self._dirty is not None:
            name, pgid = self._dirty
            conn.run(self._kill_command(name, pgid), timeout=60)
            self._dirty = None
        remote = out_dir(self.board.remote_dir, plan.run_id)
        try:
            self.fetched = fetch_tree(conn, remote, plan.local_out)
        except ConnectionLostError as err:
            raise SyncFailedError(f"connection lost while fetching results: {err.message}",
                                  target=self.spec.name) from err
        self.timings["fetch"] = round(time.monotonic() - start, 3)

    def close(self) -> None:
        """Stop telemetry, release the lease, close the connection (idempotent)."""
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
