"""``hil nightly``: every target, one report, one exit code (see :mod:`hil.report.nightly`)."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from hil.cli.report import HELP_ENGINE, HELP_HISTORY, default_history
from hil.errors import ExitCode
from hil.progress import Progress
from hil.report.html import DEFAULT_HISTORY_LIMIT, find_root
from hil.report.nightly import nightly, summary_table


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``hil nightly``."""
    parser.add_argument("targets", nargs="*",
                        help="targets to run (default: $HIL_NIGHTLY_TARGETS, comma-separated, "
                             "or every target of the inventory)")
    parser.add_argument("--pytest-args", default=None,
                        help="arguments for each target's pytest, one shell-quoted string "
                             "(default: 'suites')")
    parser.add_argument("--hil-targets", type=Path, default=None,
                        help="folder of target TOML files (default: the project's inventory)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for each night's per-target output "
                             "(default: reports/nightly)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="folder of the HTML report (default: reports/allure-report)")
    parser.add_argument("--history", type=Path, default=None, help=HELP_HISTORY)
    parser.add_argument("--history-limit", type=int, default=DEFAULT_HISTORY_LIMIT)
    parser.add_argument("--engine", default="auto", choices=("auto", "allure3", "allure2"),
                        help=HELP_ENGINE)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    """``hil nightly``: prints the summary table and returns the combined exit code."""
    root = find_root()
    targets = list(args.targets) or [t for t in os.environ.get("HIL_NIGHTLY_TARGETS", "")
                                     .replace(",", " ").split() if t]
    pytest_args = shlex.split(args.pytest_args) if args.pytest_args is not None else (
        ["suites"] if (root / "suites").is_dir() else [])
    outcome = nightly(
        root, targets, pytest_args, out=args.out or root / "reports" / "nightly",
        report=args.output or root / "reports" / "allure-report",
        history=args.history or default_history(root), history_limit=args.history_limit,
        engine=args.engine, progress=Progress(quiet=args.quiet), targets_dir=args.hil_targets)
    print(summary_table(outcome.runs))
    print(f"report: {outcome.report or 'not generated'}")
    print(f"output: {outcome.folder}")
    print(f"exit:   {outcome.exit_code} ({ExitCode(outcome.exit_code).name.lower()})"
          if outcome.exit_code in {int(c) for c in ExitCode} else f"exit: {outcome.exit_code}")
    return outcome.exit_code
