"""``hil release``: free what ``--hil-hold-on-failure`` kept (containers and leases)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hil.session.hold import release_script


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """``hil release``: the options."""
    parser.add_argument("--target", required=True,
                        help="the target whose boards' holds to release (every board of a pool)")
    parser.add_argument("--hil-targets", default=None, help="folder of target TOML files")


def run(args: argparse.Namespace) -> int:
    """Release the holds (containers and leases) on the target's boards."""
    from hil.config import load_inventory
    from hil.session.pool import board_spec
    from hil.ssh.connection import connect

    folder = Path(args.hil_targets) if args.hil_targets else None
    spec = load_inventory(Path.cwd(), folder).get(args.target)
    if spec.kind != "ssh":
        print(f"hil release: target '{spec.name}' is not an ssh target: nothing is held")
        return 0
    for host in spec.ssh.boards:
        conn = connect(board_spec(spec, host))
        try:
            res = conn.run(release_script(), timeout=120)
        finally:
            conn.close()
        print(f"hil release: {host}: {res.stdout.strip() or res.stderr.strip()}")
    return 0
