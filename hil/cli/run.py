"""``hil run``: the main job — the HIL suites on a target, then where the results are."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

#: Every argument ``hil run`` does not know goes to pytest, in its order (``-k onnx -x``).
PASSES_UNKNOWN_ARGS = True


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``hil run``; every other argument goes to pytest unchanged."""
    parser.epilog = ("Any other argument goes to pytest unchanged, e.g. `hil run -k onnx -x` "
                     "(after `--`, even one spelt like hil run's own: `hil run -- --suites x`).")
    parser.add_argument("--target", default=os.environ.get("HIL_TARGET", "local"),
                        help="target to run on (default: $HIL_TARGET or 'local')")
    parser.add_argument("--suites", default="suites", help="folder of HIL suites (default: suites)")


def run(args: argparse.Namespace) -> int:
    """Run pytest on the suites and say where the Allure results went."""
    extra = list(getattr(args, "unknown_args", []))
    if "--" in extra:  # argparse keeps what follows "--" as it is; the marker itself goes
        extra.remove("--")
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
