"""A board's preflight, read: the output of ``scripts/preflight.sh`` turned into checks.

The script runs every check in one round trip and prints its findings in
sections (``@@hil:NAME`` lines, see :func:`sections`).  Here each group of
checks reads its own sections and has one job: the board's identity, the
remote folder, the engine and its runtime, disk, swap, L4T against the base
image, tools, the image, the CUDA probe.  A check's failure is a row of the
table and, when required, the :class:`~hil.errors.HilError` a session ends
with (:class:`CheckList`); what later steps reuse lands in :class:`BoardState`.
Nothing here touches the connection.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from hil.backends.base import CONTAINER_LIB, CONTAINER_WORKER, Check, PreflightReport
from hil.backends.jetson.facts import jetpack_of, l4t_of_image
from hil.backends.jetson.shell import board_command, script_text
from hil.config import TargetSpec
from hil.errors import (
    ConfigError,
    DiskLowError,
    EngineDownError,
    HilError,
    RuntimeMissingError,
    TargetUnhealthyError,
)
from hil.ssh.sync import check_remote_dir
from hil.tiers import probe_words

#: Tools the session needs on the board.
BOARD_TOOLS = ("rsync", "flock", "tar")


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


def sections(text: str) -> dict[str, str]:
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


def preflight_command(spec: TargetSpec, tag: str, lib: str, fresh_probe: bool) -> str:
    """``scripts/preflight.sh`` with the target's parameters: every check in one round trip.

    The CUDA probe (``scripts/gpu-probe.sh``: the worker's ``--probe`` in a
    container of the dependencies image ``tag`` with the target's runtime)
    starts first, in the background, when the image and the worker (in the
    home-relative folder ``lib``) are on the board; its successful result is
    cached there under a key of the boot id, the engine, daemon.json's mtime,
    the image id, the runtime and the worker's content: a session reuses it
    while none of those changed; ``fresh_probe`` (``hil doctor``) always runs it.
    """
    raw = spec.ssh.remote_dir.strip()
    rel = raw[2:] if raw.startswith("~/") else raw
    return board_command(
        "preflight",
        TAG=tag,
        RUNTIME=spec.docker.runtime,
        REMOTE=rel or ".",
        SYNCED="1" if raw and raw not in ("~", "/", ".") else "0",
        LIB=lib,
        LIB_MOUNT=CONTAINER_LIB,
        WORKER_IN=CONTAINER_WORKER,
        FRESH="1" if fresh_probe else "0",
        PROBE=script_text("gpu-probe"),
    )


def gpu_probe_command(spec: TargetSpec, tag: str, lib: str, fresh_probe: bool,
                      lib_b64: str | None) -> str:
    """``scripts/gpu-probe.sh`` on its own, for an image preflight found absent (after its
    build); ``lib_b64`` brings the worker's files where the board lacks them."""
    return board_command("gpu-probe", tag, spec.docker.runtime, lib,
                         "1" if fresh_probe else "0", CONTAINER_LIB, CONTAINER_WORKER,
                         LIB_B64=lib_b64)


class CheckList:
    """The rows of a preflight table as they are judged, and the facts found on the way."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.checks: list[Check] = []
        #: The errors of the required checks that failed, in order: the first is the code.
        self.failures: list[HilError] = []
        self.facts: dict[str, str] = {}

    def add(self, name: str, ok: bool, detail: str, error: HilError | None = None,
            required: bool = True) -> None:
        """One row; a required row that failed keeps ``error`` for the session."""
        self.checks.append(Check(name, ok, detail, required))
        if not ok and required and error is not None:
            self.failures.append(error)

    def report(self) -> PreflightReport:
        """The table so far."""
        return PreflightReport(self.target, tuple(self.checks), dict(self.facts))


@dataclass(frozen=True)
class Findings:
    """What one run of the preflight script gives to judge, besides the target."""

    #: The script's output, split into sections.
    sec: dict[str, str]
    #: ``user@host:port`` and the ssh_config alias it was reached as.
    user: str
    where: str
    alias: str
    host_key: str
    #: The dependencies image's tag ("" when the target has no image recipe).
    tag: str = ""


def judge_preflight(spec: TargetSpec, found: Findings, board: BoardState) -> CheckList:
    """Every check of the script's findings, in the table's order; ``board`` is filled in."""
    rows = CheckList(spec.name)
    rows.add("ssh", True, f"{found.where} as '{found.alias}', host key {found.host_key} known")
    rows.facts["ssh"] = found.where
    sec = found.sec
    read_identity(sec, board, rows)
    check_folder(spec, sec, board, rows)
    if check_engine(spec, sec, found.user, rows):
        check_runtime(spec, rows)
        check_disk(spec, sec, rows)
    check_swap(spec, sec, rows)
    check_l4t(spec, sec, rows)
    check_tools(board, rows)
    if found.tag:
        board.image_id = sec.get("image", "").strip()
        board.image_present = bool(board.image_id)
        rows.add("image", True, f"{found.tag} " + ("present" if board.image_present else
                                                   "absent: will be built"), required=False)
    judge_gpu(spec, found.tag, board, sec.get("gpu", ""), rows)
    return rows


def read_identity(sec: dict[str, str], board: BoardState, rows: CheckList) -> None:
    """The board's user ids, home, tools and what it already holds (worker, last sync)."""
    board.uid, board.gid = [*sec.get("id", "").split(), "", ""][:2]
    rows.facts["board.hostname"] = sec.get("host", "")
    rows.facts["board.arch"] = sec.get("arch", "")
    board.home = sec.get("home", "")
    board.tools = set(sec.get("tools", "").split())
    board.lib_present = sec.get("worker", "").strip() == "present"
    board.synced = sec.get("synced", "").strip()


def check_folder(spec: TargetSpec, sec: dict[str, str], board: BoardState,
                 rows: CheckList) -> None:
    """``remote_dir``: checked as written, then as the board resolves it (symlinks)."""
    try:
        check_remote_dir(spec.ssh.remote_dir, board.home,
                         allow_outside_home=spec.ssh.allow_outside_home, target=spec.name)
        board.remote_dir = check_remote_dir(sec.get("dir", ""), board.home,
                                            allow_outside_home=spec.ssh.allow_outside_home,
                                            target=spec.name)
        rows.add("remote dir", True, board.remote_dir)
    except ConfigError as err:
        rows.add("remote dir", False, str(err), err)
    rows.facts["remote_dir"] = board.remote_dir


def check_engine(spec: TargetSpec, sec: dict[str, str], user: str, rows: CheckList) -> bool:
    """``docker info`` as the board's user: whether the engine answers (facts: version, root,
    runtimes)."""
    lines = sec.get("info", "").splitlines()
    rc = lines[-1].removeprefix("rc=") if lines else "?"
    if rc == "0":
        fields = lines[0].rsplit("|", 1)[0].split("|", 2)
        version, root_dir, rt_json = [*fields, "", ""][:3]
        runtimes: list[str] = []
        with contextlib.suppress(ValueError):
            runtimes = sorted(json.loads(rt_json))
        rows.facts.update({"docker.version": version, "docker.root": root_dir,
                           "runtimes": ",".join(runtimes)})
        rows.add("engine", True, f"Docker {version} answers for {user}; data root {root_dir}")
        return True
    # Without an engine, --format still prints its empty fields ("||null|"): dropped.
    text = "\n".join(line for line in lines[:-1]
                     if line.strip().strip("|") not in ("", "null")).strip()
    hint = ("add the user to the docker group: sudo usermod -aG docker " + user
            if "permission denied" in text.lower() else
            "start it on the board: sudo systemctl start docker")
    rows.add("engine", False, f"docker info failed: {text.splitlines()[-1] if text else '?'}",
             EngineDownError(f"the board's Docker engine does not answer for {user}",
                             target=spec.name, command="docker info",
                             exited=int(rc) if rc.isdigit() else None, tail=text, hint=hint))
    return False


def check_runtime(spec: TargetSpec, rows: CheckList) -> None:
    """The target's ``docker.runtime`` is registered with the engine (when it names one)."""
    runtime = spec.docker.runtime
    if not runtime:
        return
    runtimes = [r for r in rows.facts.get("runtimes", "").split(",") if r]
    ok = runtime in runtimes
    rows.add("runtime", ok, f"'{runtime}' registered" if ok else
             f"no '{runtime}' runtime (has: {', '.join(runtimes)})",
             RuntimeMissingError(
                 f"the engine has no '{runtime}' runtime (it has: {', '.join(runtimes)})",
                 target=spec.name, command="docker info",
                 hint="install nvidia-container-toolkit, then: sudo nvidia-ctk runtime "
                      "configure --runtime=docker && sudo systemctl restart docker"))


def check_disk(spec: TargetSpec, sec: dict[str, str], rows: CheckList) -> None:
    """Free space on the engine's data root against ``preflight.min_free_mb``."""
    df = sec.get("df", "").split()
    root = rows.facts.get("docker.root")
    if len(df) < 4 or not df[3].isdigit():
        rows.add("disk", False, "free space of the data root unknown", required=False)
        return
    free, need = int(df[3]), spec.preflight.min_free_mb
    rows.facts["docker.free_mb"] = str(free)
    rows.add("disk", free >= need, f"{free} MB free on {root} (need {need} MB)",
             DiskLowError(f"only {free} MB free on the engine's data root {root} "
                          f"(need {need} MB)", target=spec.name,
                          hint="free space: docker system prune, or remove old images"))


def check_swap(spec: TargetSpec, sec: dict[str, str], rows: CheckList) -> None:
    """The board's swap, required by ``preflight.require_swap``."""
    swap_kb = sec.get("swap", "0")
    swap_mb = int(swap_kb) // 1024 if swap_kb.isdigit() else 0
    rows.facts["swap_mb"] = str(swap_mb)
    if not spec.preflight.require_swap:
        rows.add("swap", True, f"{swap_mb} MB" if swap_mb else "none (not required)",
                 required=False)
        return
    rows.add("swap", swap_mb > 0, f"{swap_mb} MB" if swap_mb else "no swap (required)",
             TargetUnhealthyError("the board has no swap and the target requires it",
                                  target=spec.name,
                                  hint="create a swap file (JetPack: sudo systemctl enable "
                                       "--now nvzramconfig, or a swapfile)"))


def check_l4t(spec: TargetSpec, sec: dict[str, str], rows: CheckList) -> None:
    """The board's L4T (``/etc/nv_tegra_release``) against the base image's, by major."""
    tegra = sec.get("tegra", "")
    base = spec.docker.build_args.get("BASE_IMAGE", "")
    want = l4t_of_image(base)
    if not tegra:
        if want:
            rows.add("l4t", False, f"no /etc/nv_tegra_release; base image wants L4T {want}",
                     TargetUnhealthyError(f"the board is not a Jetson (no /etc/nv_tegra_release) "
                                          f"but the base image {base} is L4T {want}",
                                          target=spec.name))
        return
    l4t, jetpack = jetpack_of(tegra)
    rows.facts.update({"l4t": l4t, "jetpack": jetpack})
    seen = f"L4T {l4t} (JetPack {jetpack or '?'})"
    if not want:
        rows.add("l4t", True, seen, required=False)
        return
    major = l4t.split(".")[0] if l4t else "?"
    rows.add("l4t", bool(l4t) and major == want.split(".")[0], f"{seen}; base image L4T {want}",
             TargetUnhealthyError(
                 f"the board runs L4T {l4t or '?'} but the base image {base} is built "
                 f"for L4T {want}", target=spec.name,
                 hint=f"use a base image of the board's L4T major (BASE_IMAGE tag r{major}.x)"))


def check_tools(board: BoardState, rows: CheckList) -> None:
    """The tools a session uses on the board, and the telemetry source it has."""
    missing = [t for t in BOARD_TOOLS if t not in board.tools]
    rows.add("tools", not missing, f"{', '.join(BOARD_TOOLS)} present" if not missing else
             f"missing on the board: {', '.join(missing)}",
             TargetUnhealthyError(f"the board lacks {', '.join(missing)}", target=rows.target,
                                  hint=f"sudo apt install {' '.join(missing)}"))
    board.telemetry = ("tegrastats" if "tegrastats" in board.tools else
                       "nvidia-smi" if "nvidia-smi" in board.tools else "")
    rows.facts["telemetry"] = board.telemetry or "none"


def _probe_result(lines: list[str]) -> tuple[str, list[str], dict[str, Any] | None]:
    """(exit code, output lines, the probe's JSON) of ``scripts/gpu-probe.sh``'s output."""
    rc = lines[-1].removeprefix("rc=") if lines and lines[-1].startswith("rc=") else "?"
    body = lines[:-1] if rc != "?" else lines
    for line in reversed(body):
        with contextlib.suppress(ValueError):
            found = json.loads(line)
            if isinstance(found, dict):
                return rc, body, found
    return rc, body, None


def judge_gpu(spec: TargetSpec, image: str, board: BoardState, text: str,
              rows: CheckList) -> None:
    """Judge the output of ``scripts/gpu-probe.sh`` (empty: the probe could not run yet)."""
    runtime = spec.docker.runtime or "the default runtime"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        why = ("no image recipe" if not image else
               f"{image} is not on the board yet" if not board.image_present else
               "the worker is not on the board yet")
        rows.add("gpu", True, f"{why}: the CUDA probe runs after the build", required=False)
        return
    board.gpu_checked = True
    cached = lines[0] == "cached:yes"
    rc, body, info = _probe_result(lines[1:] if cached else lines)
    if rc != "0" or info is None:
        what = f"the CUDA probe in a container of {image} with {runtime} failed (exit {rc})"
        rows.add("gpu", False, what, TargetUnhealthyError(
            what, target=spec.name, exited=int(rc) if rc.isdigit() else None,
            command=f"docker run --runtime {spec.docker.runtime or 'runc'} {image} "
                    f"python3 {CONTAINER_WORKER} --probe",
            tail="\n".join(body[-20:])))
        return
    words = probe_words(info, image)
    cuda = bool(info.get("cuda"))
    rows.facts["cuda"] = "usable" if cuda else "not usable"
    seen = ("(cached probe) " if cached else "") + words
    if spec.tier < 2:
        rows.add("gpu", True, seen + f"; tier {spec.tier} declared: the declared capabilities "
                 "hold", required=False)
        return
    rows.add("gpu", cuda, seen + f"; tier {spec.tier} declared", TargetUnhealthyError(
        f"declares tier {spec.tier} (CUDA GPU) but {words}", target=spec.name,
        hint=f"check nvidia-container-toolkit and the target's docker.runtime "
             f"({runtime}), and that the image keeps CUDA builds of torch and "
             "onnxruntime (no CPU wheels shadowing the base image's)"))
