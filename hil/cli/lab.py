"""``hil lab status | release --stale``: the places of a labgrid lab, and freeing dead sessions' ones.

``status`` lists the places a target's ``[labgrid]`` matches (or every place
of ``--coordinator``): their tags, who holds each and since when (the age of
a pytest-hil holder's heartbeat too), and the reservations waiting.
``release --stale`` frees the places whose pytest-hil session stopped beating
more than ``timeouts.lab_ttl`` (or ``--ttl``) seconds ago; a place held by
anyone else is never touched.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hil.config import LabgridSpec, Timeouts, load_inventory
from hil.errors import ConfigError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``hil lab`` actions and options to ``parser``."""
    parser.add_argument("action", choices=("status", "release"),
                        help="status: the places, holders and queue; release: free stale places")
    parser.add_argument("--target", default=None, help="a target with a [labgrid] table")
    parser.add_argument("--hil-targets", default=None, help="folder of target TOML files")
    parser.add_argument("--coordinator", default=None,
                        help="HOST[:PORT] of the coordinator (default: the target's, else $LG_COORDINATOR)")
    parser.add_argument("--stale", action="store_true",
                        help="release: free the places whose pytest-hil session stopped beating")
    parser.add_argument("--ttl", type=float, default=None,
                        help="seconds without a heartbeat that make a place stale (default: the "
                        f"target's timeouts.lab_ttl, else {Timeouts().lab_ttl:.0f})")
    parser.add_argument("--json", action="store_true", help="status as JSON")


def _when(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, tz=timezone.utc).isoformat(timespec="seconds")


def status(lab: Any, want: LabgridSpec | None) -> dict[str, Any]:
    """The places (those ``want`` matches, or all), their holders and the waiting reservations."""
    from hil.lab.lease import LEASE_TAG, beat_age, held_since

    now = time.time()
    places = {}
    for name, place in sorted(lab.places().items()):
        if want is not None and not (name in want.places if want.places else
                                     all(place.tags.get(k) == v for k, v in want.tags.items())):
            continue
        age = beat_age(place, now)
        places[name] = {
            "tags": {k: v for k, v in place.tags.items() if k != LEASE_TAG},
            "holder": place.acquired,
            "since": _when(held_since(place) or (place.changed if place.acquired else None)),
            "heartbeat_age_s": None if age is None else round(age, 1),
            "reservation": place.reservation,
        }
    waiting = [{"token": r["token"], "owner": r["owner"], "prio": r["prio"],
                "filters": r["filters"].get("main", {}), "created": _when(r["created"])}
               for r in sorted(lab.reservations(), key=lambda r: (-r["prio"], r["created"]))
               if r["state"] == "waiting"]
    return {"coordinator": lab.address, "places": places, "waiting": waiting}


def _render(data: dict[str, Any]) -> str:
    lines = [f"lab {data['coordinator']}: {len(data['places'])} place(s), "
             f"{len(data['waiting'])} reservation(s) waiting"]
    for name, p in data["places"].items():
        tags = ",".join(f"{k}={v}" for k, v in p["tags"].items())
        held = (f"held by {p['holder']} since {p['since']}" if p["holder"] else "free")
        beat = "" if p["heartbeat_age_s"] is None else f" (heartbeat {p['heartbeat_age_s']} s ago)"
        lines.append(f"  {name:<24} {tags:<28} {held}{beat}")
    for r in data["waiting"]:
        lines.append(f"  waiting: {r['owner']} prio {r['prio']:g} for "
                     + ",".join(f"{k}={v}" for k, v in r["filters"].items()) + f" since {r['created']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Carry out ``hil lab ACTION``; returns the exit code."""
    from hil.lab.coordinator import Coordinator
    from hil.lab.lease import release_stale

    want: LabgridSpec | None = None
    ttl = args.ttl
    address = args.coordinator or ""
    if args.target:
        spec = load_inventory(Path.cwd(), Path(args.hil_targets) if args.hil_targets else None).get(
            args.target)
        if spec.labgrid is None:
            raise ConfigError(f"target '{spec.name}' has no [labgrid] table")
        want = spec.labgrid
        address = address or spec.labgrid.coordinator
        ttl = spec.timeouts.lab_ttl if ttl is None else ttl
    if args.action == "release" and not args.stale:
        raise ConfigError("hil lab release frees stale places only: give --stale "
                          "(a live session releases its own; labgrid-client release for the rest)")
    with Coordinator(address) as lab:
        if args.action == "status":
            data = status(lab, want)
            print(json.dumps(data, indent=2) if args.json else _render(data))
            return 0
        freed = release_stale(lab, Timeouts().lab_ttl if ttl is None else ttl)
    print(f"hil lab: released {', '.join(freed)}" if freed else "hil lab: no stale place")
    return 0
