"""``hil nightly``: run every target, publish one Allure report, exit with one code.

Each target runs as its own ``python3 -m pytest --target=NAME`` subprocess,
with its own Allure results and reports folders under
``reports/nightly/<stamp>/<target>/``.  Targets that share nothing run at the
same time; targets on the same Docker engine or the same board (the same SSH
host) run one after the other in one *lane*.  Then all results are merged
into one report with history (see :mod:`hil.report.html`) and a per-target table
is printed.

Exit code: the targets' codes combined by the one rule of pools, routing and
shards (:func:`hil.session.ending.combine_exit_codes`: the highest
infrastructure code first, then pytest's 3, 2, 4, then 1, 5, 0).  A report that
could not be generated turns an otherwise green 0 into 3 (internal error); it
never hides a worse code.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hil.config import TargetSpec, load_inventory
from hil.errors import ERROR_KINDS, EXIT_CODE_MEANINGS, ExitCode, HilError
from hil.progress import Progress
from hil.session.ending import INFRA_CODES, combine_exit_codes

#: Seconds added to a target's build + run timeouts before nightly gives up on it.
TIMEOUT_MARGIN = 300.0


def lane_of(spec: TargetSpec) -> str:
    """Targets with the same lane share an engine or a board and must not run at once."""
    if spec.kind == "local":
        return "local"
    if spec.kind == "ssh":
        port = f":{spec.ssh.port}" if spec.ssh.port else ""
        user = f"{spec.ssh.user}@" if spec.ssh.user else ""
        return f"ssh:{user}{spec.ssh.host}{port}"
    engine = spec.docker.engine or (f"context:{spec.docker.context}" if spec.docker.context
                                    else os.environ.get("DOCKER_HOST", "default"))
    return f"docker:{engine}"


def plan_lanes(specs: Sequence[TargetSpec]) -> dict[str, list[TargetSpec]]:
    """Targets grouped by lane, in the order given."""
    lanes: dict[str, list[TargetSpec]] = {}
    for spec in specs:
        lanes.setdefault(lane_of(spec), []).append(spec)
    return lanes


@dataclass
class TargetRun:
    """The outcome of one target's pytest subprocess."""

    target: str
    lane: str
    folder: Path
    command: list[str]
    exit_code: int = -1
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    fault: str = ""

    @property
    def results(self) -> Path:
        """This target's Allure results folder."""
        return self.folder / "allure-results"

    @property
    def log(self) -> Path:
        """pytest's terminal output of this target."""
        return self.folder / "pytest-terminal.log"

    def meaning(self) -> str:
        """What the exit code means, in a few words."""
        try:
            return EXIT_CODE_MEANINGS[ExitCode(self.exit_code)].split(":")[0].split(" (")[0]
        except ValueError:
            return "unknown exit code"


def pytest_command(spec: TargetSpec, folder: Path, pytest_args: Sequence[str],
                   python: str = sys.executable) -> list[str]:
    """The pytest subprocess of one target."""
    return [python, "-m", "pytest", f"--target={spec.name}", "--alluredir",
            str(folder / "allure-results"), "--hil-reports", str(folder), *pytest_args]


def run_target(spec: TargetSpec, run: TargetRun, root: Path, progress: Progress,
               env: Mapping[str, str], timeout: float) -> None:
    """Run one target's pytest to completion (or its timeout) and record the outcome."""
    run.folder.mkdir(parents=True, exist_ok=True)
    progress.step(f"{spec.name}: starting ({run.lane}): {shlex.join(run.command)}")
    started = time.monotonic()
    with open(run.log, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(run.command, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(env), start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            code = int(ExitCode.RUN_TIMED_OUT)
            run.fault = f"hil nightly stopped it after {timeout:.0f} s"
    if code < 0:  # killed by a signal: the run was lost
        run.fault = f"pytest was killed by signal {-code}"
        code = int(ExitCode.RUN_LOST)
    run.exit_code = code
    run.seconds = time.monotonic() - started
    progress.step(f"{spec.name}: exit {code} ({run.meaning()}) after {run.seconds:.0f} s")


def _kind_of(code: int) -> str:
    for kind, cls in ERROR_KINDS.items():
        if int(cls.exit_code) == code:
            return kind
    return "error"


def ensure_infrastructure_result(run: TargetRun) -> None:
    """Make sure an infrastructure fault shows in the report even when pytest wrote nothing.

    The session writes the synthetic result itself; this covers faults raised
    before it (plugin configure time) and runs killed by nightly.
    """
    from hil.report.allure import (
        is_infrastructure_result,
        read_result,
        result_target,
        write_infrastructure_result,
    )

    if run.exit_code not in INFRA_CODES:
        return
    run.results.mkdir(parents=True, exist_ok=True)
    for path in run.results.glob("*-result.json"):
        result = read_result(path)
        if (result is not None and result_target(result) == run.target
                and is_infrastructure_result(result)):
            return
    write_infrastructure_result(run.results, run.target, _kind_of(run.exit_code), run.exit_code,
                                run.fault or _fault_message(run))


def _fault_message(run: TargetRun) -> str:
    try:
        lines = run.log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "no output"
    for line in reversed(lines):
        if "hil" in line and ("error" in line.lower() or "exit" in line.lower()):
            line = line.strip().strip("!").strip()
            return line.removeprefix("Exit: ").removeprefix("hil: ")
    return lines[-1].strip() if lines else "no output"


def count_statuses(run: TargetRun) -> dict[str, int]:
    """Allure statuses of a target's results (failed, broken, passed, skipped)."""
    from hil.report.allure import read_result

    counts: dict[str, int] = {}
    if run.results.is_dir():
        for path in run.results.glob("*-result.json"):
            result = read_result(path)
            if result is not None:
                status = str(result.status or "unknown")
                counts[status] = counts.get(status, 0) + 1
    return counts


def summary_table(runs: Sequence[TargetRun]) -> str:
    """The per-target table printed at the end."""
    header = ("target", "lane", "exit", "meaning", "passed", "failed", "broken", "skipped",
              "time")
    rows: list[tuple[str, ...]] = [header]
    for r in runs:
        rows.append((r.target, r.lane, str(r.exit_code), r.meaning(),
                     *(str(r.statuses.get(s, 0)) for s in ("passed", "failed", "broken",
                                                           "skipped")),
                     f"{r.seconds:.0f}s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass(frozen=True)
class NightlyOutcome:
    """What one nightly produced."""

    exit_code: int
    runs: tuple[TargetRun, ...]
    report: Path | None
    folder: Path


def nightly(root: Path, targets: Sequence[str], pytest_args: Sequence[str], *,
            out: Path, report: Path, history: Path | None, history_limit: int,
            engine: str = "auto", progress: Progress | None = None,
            env: Mapping[str, str] | None = None, name: str = "pytest-hil nightly",
            targets_dir: Path | None = None) -> NightlyOutcome:
    """Run ``targets`` (lanes in parallel), build the report, combine the exit codes."""
    from hil.report.html import ReportRequest, build_report

    progress = progress or Progress()
    env = dict(os.environ if env is None else env)
    inventory = load_inventory(root, targets_dir)
    specs = [inventory.get(t) for t in (targets or inventory.names())]
    folder = out / time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while folder.exists():
        folder = out / f"{time.strftime('%Y%m%d-%H%M%S')}-{n}"
        n += 1
    extra = ["--hil-targets", str(targets_dir)] if targets_dir else []
    runs = {s.name: TargetRun(s.name, lane_of(s), folder / s.name,
                              pytest_command(s, folder / s.name, [*extra, *pytest_args]))
            for s in specs}
    lanes = plan_lanes(specs)
    progress.step(f"nightly: {len(specs)} target(s) in {len(lanes)} lane(s): "
                  + "; ".join(f"{lane}: {', '.join(s.name for s in group)}"
                              for lane, group in lanes.items()))

    def lane_worker(group: list[TargetSpec]) -> None:
        for spec in group:
            timeout = spec.timeouts.build + spec.timeouts.run + TIMEOUT_MARGIN
            run_target(spec, runs[spec.name], root, progress, env, timeout)

    threads = [threading.Thread(target=lane_worker, args=(group,), name=f"lane {lane}")
               for lane, group in lanes.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for run in runs.values():
        ensure_infrastructure_result(run)
        run.statuses = count_statuses(run)
    code = combine_exit_codes([r.exit_code for r in runs.values()])
    index: Path | None = None
    try:
        outcome = build_report(ReportRequest(
            results=tuple(r.results for r in runs.values() if r.results.is_dir()),
            output=report, root=root, history=history, history_limit=history_limit,
            engine=engine, name=name, environ=env), progress)
        index = outcome.index
    except HilError as err:
        progress.step(f"nightly: the report could not be generated: {err.details()}")
        if code == 0:
            code = int(ExitCode.INTERNAL_ERROR)
    ordered = tuple(runs[s.name] for s in specs)
    (folder / "nightly.json").write_text(json.dumps({
        "exit_code": code, "report": str(index) if index else None,
        "targets": [{**asdict(r), "folder": str(r.folder)} for r in ordered],
    }, indent=1, default=str), encoding="utf-8")
    return NightlyOutcome(exit_code=code, runs=ordered, report=index, folder=folder)
