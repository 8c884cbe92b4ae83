"""``hil sim up | down | status | restore``: the simulated rig from the command line."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hil.sim.rig import Rig


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``hil sim`` actions and options to ``parser``."""
    parser.add_argument(
        "action",
        choices=("up", "down", "status", "restore"),
        help="up: start every part (idempotent); down: stop and remove every part; "
        "status: show each part; restore: undo injected faults",
    )
    parser.add_argument("--json", action="store_true", help="status as JSON")


def _render(status: dict[str, Any]) -> str:
    lines = [
        f"rig: {'up' if status['up'] else 'down'}"
        + (" (healthy)" if status["healthy"] else "")
        + f"   state: {status['state_dir']}   ssh: -F {status['ssh_config']} {status['ssh_alias']}"
    ]
    for name, part in status["parts"].items():
        details = ", ".join(f"{k}={v}" for k, v in part.items() if k != "up" and v not in (None, "", [], {}))
        lines.append(f"  {name:<14} {'up' if part['up'] else 'DOWN':<5} {details}")
    for fault in status["faults"]:
        lines.append(f"  fault: {fault}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Carry out ``hil sim ACTION``; returns the exit code."""
    rig = Rig()
    rig.check_supported()
    if args.action == "status":
        status = rig.status()
        print(json.dumps(status, indent=2) if args.json else _render(status))
        return 0 if status["up"] == all(p["up"] for p in status["parts"].values()) else 1
    if args.action == "up":
        rig.up()
    elif args.action == "down":
        rig.down()
    else:
        rig.restore_faults()
        print("faults restored")
    return 0
