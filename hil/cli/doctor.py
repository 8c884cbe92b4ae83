"""``hil doctor NAME`` (or ``-t NAME``, or ``$HIL_TARGET``): is a target ready?  A table, or ``--json``.

For an SSH target every check runs, also after a failure, so the table shows
all that is wrong at once; the exit code is the one a session would have
ended with (the first required failure's), 0 when the target is ready.  The
CUDA probe (the worker's ``--probe`` in a container of the dependencies
image, when that image is on the board) always runs fresh here (sessions
may reuse a cached probe), and the board's lease is only looked at, never
taken.  A pool (``[ssh] hosts``) has every board checked, at once, each with
its own table; as a pool session runs on the healthy boards, it is ready
when one board is, and otherwise ends with the first board's code.  Docker
targets delegate to their backend's ``preflight()``; the local target
reports the tier it detects.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from hil.backends import load_backend
from hil.backends.base import Check, PreflightReport
from hil.config import DEFAULT_TARGET, TargetSpec, load_inventory
from hil.errors import ConfigError, ExitCode, HilError
from hil.progress import Progress


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``hil doctor``."""
    parser.add_argument("name", nargs="?", default=None, metavar="NAME",
                        help="the target to check (as --target)")
    parser.add_argument("--target", "-t", default=None, metavar="NAME",
                        help=f"the target to check (default: $HIL_TARGET, else {DEFAULT_TARGET})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--rootdir", default=".", metavar="DIR",
                        help="the checkout whose targets/ to read (default: .)")
    parser.add_argument("--hil-targets", dest="targets_dir", default=None, metavar="DIR",
                        help="folder of target TOML files (as the plugin's --hil-targets)")


def _local(spec: TargetSpec) -> PreflightReport:
    from hil.tiers import detect_local_tier

    found = detect_local_tier()
    tier = found.tier if spec.detect_tier else spec.tier
    ok = spec.detect_tier or found.tier >= spec.tier
    return PreflightReport(spec.name, (
        Check("tier", ok, f"serves tier {tier} ({found.how})"),
    ), {"tier": str(tier)})


def _ssh(spec: TargetSpec, root: Path, progress: Progress) -> tuple[PreflightReport, int]:
    from hil.backends.jetson.backend import SshBackend
    from hil.ssh.lease import read_holder

    backend = SshBackend(spec, root, progress)
    backend.eager_lease = False
    backend.fresh_probe = True
    try:
        report = backend.inspect()
        if backend.board.image_present and not backend.board.gpu_checked:
            # The image is there but not the worker: install it and probe (fresh, always).
            backend._late_gpu_check(raise_first=False)
            report = backend.report or report
        held, holder = read_holder(backend.connect())
        lease = Check("lease", True, f"held by {holder.describe()}" if held and holder else
                      "free", required=False)
        report = PreflightReport(report.target, (*report.checks, lease), report.facts)
        failures = backend._failures
        return report, int(failures[0].exit_code) if failures else 0
    finally:
        backend.close()


def _failed(spec: TargetSpec, err: HilError) -> PreflightReport:
    return PreflightReport(spec.name, (Check(err.kind, False, str(err)),), {})


def diagnose(spec: TargetSpec, root: Path, progress: Progress) -> tuple[PreflightReport, int]:
    """The target's preflight report and the exit code a session would get."""
    try:
        if spec.kind == "local":
            report = _local(spec)
            return report, 0 if report.ok else int(ExitCode.TARGET_UNHEALTHY)
        if spec.kind == "ssh":
            return _ssh(spec, root, progress)
        backend = load_backend(spec)(spec, root, progress)
        try:
            return backend.preflight(), 0
        finally:
            backend.close()
    except HilError as err:
        return _failed(spec, err), int(err.exit_code)


def diagnose_pool(spec: TargetSpec, root: Path,
                  progress: Progress) -> tuple[list[tuple[PreflightReport, int]], int]:
    """Every board of a pool checked at once: each one's report and code, and the pool's code."""
    from concurrent.futures import ThreadPoolExecutor

    from hil.session.pool import board_spec

    boards = [board_spec(spec, host) for host in spec.ssh.boards]
    with ThreadPoolExecutor(max_workers=len(boards)) as workers:
        found = list(workers.map(lambda board: diagnose(board, root, progress), boards))
    code = 0 if any(c == 0 for _, c in found) else found[0][1]
    return found, code


def _run_pool(spec: TargetSpec, root: Path, as_json: bool) -> int:
    """``hil doctor`` of a pool: one table (or JSON object) per board."""
    found, code = diagnose_pool(spec, root, Progress(sys.stderr, quiet=as_json))
    if as_json:
        boards = [{**report.as_dict(), "exit_code": c} for report, c in found]
        print(json.dumps({"target": spec.name, "ok": code == 0, "exit_code": code,
                          "boards": boards}, indent=1))
        return code
    for report, _ in found:
        print(report.table())
    sick = [report.target for report, c in found if c]
    if code:
        print(f"hil doctor: pool '{spec.name}' is not ready: no board is (exit {code}: "
              f"{ExitCode(code).name})")
    else:
        print(f"hil doctor: pool '{spec.name}' is ready: {len(found) - len(sick)} of "
              f"{len(found)} board(s)" + (f"; a session quarantines {', '.join(sick)}"
                                           if sick else ""))
    return code


def run(args: argparse.Namespace) -> int:
    """Check one target and print the table (or JSON); returns the exit code."""
    if args.name and args.target and args.name != args.target:
        raise ConfigError(f"hil doctor names two targets: {args.name!r} and --target "
                          f"{args.target!r}", hint="name one")
    name = args.name or args.target or os.environ.get("HIL_TARGET") or DEFAULT_TARGET
    root = Path(args.rootdir).resolve()
    inventory = load_inventory(root, Path(args.targets_dir) if args.targets_dir else None)
    spec = inventory.get(name)
    if spec.labgrid is not None:  # its boards are known only once places are acquired
        raise ConfigError(f"target '{spec.name}' takes its boards from a labgrid coordinator",
                          hint=f"hil lab status --target {spec.name} shows its places")
    if spec.kind == "ssh" and spec.ssh.hosts:
        return _run_pool(spec, root, bool(args.json))
    progress = Progress(sys.stderr, quiet=bool(args.json))
    report, code = diagnose(spec, root, progress)
    if args.json:
        data: dict[str, Any] = report.as_dict()
        data["exit_code"] = code
        print(json.dumps(data, indent=1))
    else:
        print(report.table())
        for key, value in sorted(report.facts.items()):
            print(f"  fact {key}: {value}")
        if code:
            print(f"hil doctor: target '{spec.name}' is not ready (exit {code}: "
                  f"{ExitCode(code).name})")
        else:
            print(f"hil doctor: target '{spec.name}' is ready")
    return code
