"""The ``hil`` console script: one subcommand per module, imported lazily.

Each subcommand module exposes ``configure_parser(parser)`` and
``run(args) -> int``.  Only the chosen module is imported, so ``hil --help``
and ``hil sim status`` start fast and never import Docker or Fabric.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hil import __version__
from hil.errors import EXIT_CODE_MEANINGS, ExitCode, HilError

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("hil.cli.run", "run the suites on a target and say where the results are"),
    "init": ("hil.cli.init", "write a target from an ssh alias, a compose file or a Dockerfile, "
             "then check it"),
    "doctor": ("hil.cli.doctor", "check that a target is ready (preflight), as a table or JSON"),
    "sim": ("hil.cli.sim", "bring the simulated Jetson + Colima rig up, down, or show it"),
    "report": ("hil.cli.report", "turn Allure results into an HTML report"),
    "nightly": ("hil.cli.nightly", "run every target and publish one report"),
    "lab": ("hil.cli.lab", "a labgrid lab's places, holders and queue; free stale places"),
    "release": ("hil.cli.release", "release what --hil-hold-on-failure kept: containers and leases"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hil",
        description="pytest-hil: hardware-in-the-loop test orchestration.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {name:<11} {text}" for name, (_, text) in COMMANDS.items())
        + "\n\nRun 'hil COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"pytest-hil {__version__}")
    parser.add_argument(
        "--exit-codes", action="store_true", help="print the table of exit codes and exit"
    )
    parser.add_argument("command", nargs="?", choices=sorted(COMMANDS), metavar="COMMAND")
    return parser


def exit_code_table() -> str:
    """The exit-code table as plain text (the README holds the same)."""
    return "\n".join(f"{int(code):>3}  {code.name:<24} {text}" for code, text in EXIT_CODE_MEANINGS.items())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hil`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    split = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    ns = top.parse_args(argv[: split + 1])
    if ns.exit_codes:
        print(exit_code_table())
        return 0
    if ns.command is None:
        top.print_help()
        return int(ExitCode.USAGE_ERROR)
    module_name, text = COMMANDS[ns.command]
    module = importlib.import_module(module_name)
    # A command that hands what it does not know to pytest (``hil run -k onnx -x``) takes
    # its own options by their full names only: pytest's must never match them by prefix.
    passes = bool(getattr(module, "PASSES_UNKNOWN_ARGS", False))
    sub = argparse.ArgumentParser(prog=f"hil {ns.command}", description=text,
                                  allow_abbrev=not passes)
    module.configure_parser(sub)
    if passes:
        args, rest = sub.parse_known_args(argv[split + 1 :])
        args.unknown_args = rest
    else:
        args = sub.parse_args(argv[split + 1 :])
    try:
        return int(module.run(args))
    except HilError as err:
        from hil.progress import printable

        print(f"hil {ns.command}: error: {printable(err.details())}", file=sys.stderr)
        return int(err.exit_code)
    except KeyboardInterrupt:
        print(f"hil {ns.command}: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
