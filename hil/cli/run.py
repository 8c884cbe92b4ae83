"""``hil run``: the main job — the HIL suites on a target, then where the results are."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``hil run``; everything after them goes to pytest unchanged."""
    parser.add_argument("--target", default=os.environ.get("HIL_TARGET", "local"),
                        help="target to run on (default: $HIL_TARGET or 'local')")
    parser.add_argument("--suites", default="suites", help="folder of HIL suites (default: suites)")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER,
                        help="extra pytest arguments, e.g. -k onnx -x")


def run(args: argparse.Namespace) -> int:
    """Run pytest on the suites and say where the Allure results went."""
    extra = [a for a in args.pytest_args if a != "--"]
    if not Path(args.suites).exists():
        print(f"hil run: no suites folder {args.suites!r} here (run from the project root)",
              file=sys.stderr)
        return 4
    command = [sys.executable, "-m", "pytest", f"--target={args.target}", args.suites, *extra]
    print("hil run:", " ".join(command[2:]), flush=True)
    code = subprocess.call(command)
    results = Path("reports") / "allure-results"
    print(f"\nhil run: pytest exited {code}; Allure results in {results.resolve()}/")
    print("hil run: make an HTML report with: hil report")
    return code
