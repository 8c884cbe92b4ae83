"""``hil release``: free what ``--hil-hold-on-failure`` kept (containers and leases)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hil.errors import HilError
from hil.session.hold import release_script


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """``hil release``: the options."""
    parser.add_argument("--target", required=True,
                        help="the target whose boards' holds to release (every board of a pool)")
    parser.add_argument("--all", action="store_true", dest="every",
                        help="release every holder's holds, not only yours (this user@host)")
    parser.add_argument("--hil-targets", default=None, help="folder of target TOML files")


def run(args: argparse.Namespace) -> int:
    """Release the holds (containers and leases) on the target's boards; every board is
    tried, and the ones that could not be reached are named at the end."""
    from hil.config import load_inventory
    from hil.session.pool import board_spec
    from hil.ssh.connection import connect
    from hil.ssh.lease import Holder

    folder = Path(args.hil_targets) if args.hil_targets else None
    spec = load_inventory(Path.cwd(), folder).get(args.target)
    if spec.kind != "ssh":
        print(f"hil release: target '{spec.name}' is not an ssh target: nothing is held")
        return 0
    owner = Holder.me().owner
    missed: list[tuple[str, HilError]] = []
    for host in spec.ssh.boards:
        try:
            conn = connect(board_spec(spec, host))
            try:
                res = conn.run(release_script(owner, args.every), timeout=120)
            finally:
                conn.close()
        except HilError as err:
            missed.append((host, err))
            print(f"hil release: board {host}: {err.message}")
            continue
        print(f"hil release: board {host}: {_said(res.stdout, res.stderr, owner)}")
    if missed:
        names = ", ".join(host for host, _ in missed)
        print(f"hil release: {len(missed)} of {len(spec.ssh.boards)} boards of "
              f"'{spec.name}' not reached, their holds are left: {names}")
        return int(missed[0][1].exit_code)
    return 0


def _said(stdout: str, stderr: str, owner: str) -> str:
    """The board's answer: ``released N`` and how many holds of others were left."""
    lines = stdout.split()
    if len(lines) >= 2 and lines[0] == "released":
        text = f"released {lines[1]}"
        if "others" in lines:
            text += (f" ({lines[lines.index('others') + 1]} of other holders left; "
                     f"yours are {owner}'s; --all releases them too)")
        return text
    return stdout.strip() or stderr.strip()
