"""``hil report``: Allure results -> one HTML report (see :mod:`hil.report.html`)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import sys
import webbrowser
from pathlib import Path

from hil.errors import ConfigError
from hil.progress import Progress
from hil.report.html import DEFAULT_HISTORY_LIMIT, ReportRequest, build_report, find_root

HELP_RESULTS = "Allure results folders (default: reports/allure-results); several merge into one"
HELP_OUTPUT = "folder the HTML report is written to (default: reports/allure-report)"
HELP_HISTORY = ("folder keeping the trend history between runs, e.g. cached by CI "
                "(default: $HIL_REPORT_HISTORY or reports/history)")
HELP_LIMIT = f"runs kept in the history (default: {DEFAULT_HISTORY_LIMIT})"
HELP_ENGINE = "auto (Allure 3 when Node.js is there, else Allure 2 on PATH), allure3 or allure2"


def serve(folder: Path, port: int, open_browser: bool = True) -> None:
    """Serve ``folder`` on localhost until Ctrl-C (Allure 3 and 2 reports both work)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        print(f"hil report: serving {folder} at {url} (Ctrl-C stops)", file=sys.stderr)
        if open_browser:
            with contextlib.suppress(Exception):
                webbrowser.open(url)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


def default_history(root: Path) -> Path:
    """``$HIL_REPORT_HISTORY`` or ``<root>/reports/history``."""
    env = os.environ.get("HIL_REPORT_HISTORY")
    return Path(env) if env else root / "reports" / "history"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``hil report``."""
    parser.add_argument("results", nargs="*", type=Path, help=HELP_RESULTS)
    parser.add_argument("-o", "--output", type=Path, default=None, help=HELP_OUTPUT)
    parser.add_argument("--history", type=Path, default=None, help=HELP_HISTORY)
    parser.add_argument("--no-history", action="store_true", help="generate without trends")
    parser.add_argument("--history-limit", type=int, default=DEFAULT_HISTORY_LIMIT,
                        help=HELP_LIMIT)
    parser.add_argument("--engine", default="auto", choices=("auto", "allure3", "allure2"),
                        help=HELP_ENGINE)
    parser.add_argument("--name", default="pytest-hil", help="the report's title")
    parser.add_argument("--multi-file", action="store_true",
                        help="Allure 3: write a folder of files instead of one index.html "
                             "(needs a web server to view)")
    parser.add_argument("--open", action="store_true", help="serve the report and open it")
    parser.add_argument("--port", type=int, default=0, help="port for --open (default: any)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    """``hil report``: returns 0, or raises a HilError (the CLI prints it)."""
    root = find_root()
    results = tuple(args.results) or (root / "reports" / "allure-results",)
    # Absolute: Allure runs in a work folder of its own.
    output = args.output.absolute() if args.output else root / "reports" / "allure-report"
    history = None if args.no_history else (args.history or default_history(root))
    if args.history_limit < 1:
        raise ConfigError("--history-limit must be at least 1")
    progress = Progress(quiet=args.quiet)
    outcome = build_report(ReportRequest(
        results=results, output=output, root=root, history=history,
        history_limit=args.history_limit, engine=args.engine, name=args.name,
        single_file=False if args.multi_file else None), progress)
    print(outcome.index)
    if args.open:
        serve(output, args.port)
    return 0
