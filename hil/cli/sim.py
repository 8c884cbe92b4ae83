"""``hil sim up [--boards N] | down | status | restore``: the simulated rig from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hil.errors import ExitCode
from hil.sim.lab import COORDINATOR, SimLab
from hil.sim.layout import MAX_POOL_BOARDS
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
    parser.add_argument(
        "--boards",
        type=int,
        default=None,
        metavar="N",
        help=f"up: also N pool boards hil-sim-jetson-1..N beside hil-sim-jetson (0..{MAX_POOL_BOARDS}; "
        "0 takes the pool down; default: keep the pool the rig has)",
    )
    parser.add_argument(
        "--labgrid",
        action="store_true",
        help="up: also a labgrid coordinator (127.0.0.1:20408) and exporter publishing the pool "
        "boards, places hil-sim-jetson-1..N tagged board=sim-orin (needs pytest-hil[lab])",
    )


def _render(status: dict[str, Any]) -> str:
    lines = [
        f"rig: {'up' if status['up'] else 'down'}"
        + (" (healthy)" if status["healthy"] else "")
        + f"   state: {status['state_dir']}   ssh: -F {status['ssh_config']} {status['ssh_alias']}"
    ]
    for name, part in status["parts"].items():
        details = ", ".join(f"{k}={v}" for k, v in part.items() if k != "up" and v not in (None, "", [], {}))
        lines.append(f"  {name:<14} {'up' if part['up'] else 'DOWN':<5} {details}")
    for alias, board in status.get("boards", {}).items():
        parts = " ".join(f"{name}={'up' if part['up'] else 'DOWN'}" for name, part in board["parts"].items())
        state = "up" if board["healthy"] else ("FAULT" if board["up"] else "DOWN")
        lines.append(f"  {alias:<18} {state:<5} {board['address']}  {parts}")
    lab = status.get("lab")
    if lab and lab["up"]:
        procs = " ".join(f"{name}={'up' if p['up'] else 'DOWN'}" for name, p in lab["processes"].items())
        lines.append(f"  labgrid lab        {lab['coordinator']}  {procs}")
        for name, place in lab["places"].items():
            lines.append(f"    place {name:<18} {place}" if name == "error" else
                         f"    place {name:<18} tags={place['tags']} acquired={place['acquired']}")
    for fault in status["faults"]:
        lines.append(f"  fault: {fault}")
    return "\n".join(lines)


def _all_parts_up(status: dict[str, Any]) -> bool:
    boards = status.get("boards", {}).values()
    return all(p["up"] for p in status["parts"].values()) and all(
        p["up"] for b in boards for p in b["parts"].values()
    )


def run(args: argparse.Namespace) -> int:
    """Carry out ``hil sim ACTION``; returns the exit code."""
    for given, option in ((args.boards is not None, "--boards"), (args.labgrid, "--labgrid")):
        if given and args.action != "up":
            print(f"hil sim: {option} goes with up, not {args.action}", file=sys.stderr)
            return int(ExitCode.USAGE_ERROR)
    rig = Rig()
    rig.check_supported()
    lab = SimLab(rig.layout)
    if args.action == "status":
        status = rig.status()
        if lab.pid("coordinator") or lab.pid("exporter"):
            status["lab"] = lab.status()
        print(json.dumps(status, indent=2) if args.json else _render(status))
        return 0 if status["up"] == _all_parts_up(status) else 1
    if args.action == "up":
        rig.up(boards=args.boards)
        if args.labgrid:
            done = lab.up(rig.pool.size())
            said = f"started {', '.join(done)}" if done else "already up"
            print(f"hil sim: lab on {COORDINATOR}: {said}", file=sys.stderr)
    elif args.action == "down":
        rig.down()  # the lab's processes too
    else:
        rig.restore_faults()
        print("faults restored")
    return 0
