"""Parse ``/etc/nv_tegra_release`` into an L4T version, and map L4T to JetPack.

The file's first line looks like::

    # R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64,
    DATE: Wed Jan  8 01:49:37 UTC 2025

(one line in the file, wrapped here).
R36 + REVISION 4.3 is L4T 36.4.3, which shipped in JetPack 6.2.

The table ends at the newest release it knows (L4T 36.5.0, JetPack 6.2.2).  A
newer L4T has no JetPack here: it is reported as unknown (``jetpack`` is
``None``, ``newer_than_known`` is true) rather than guessed from its neighbours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from onboard.errors import ParseError

#: Where L4T writes its release line.
NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")

#: L4T version -> JetPack release, for the JetPack 6 line.
L4T_TO_JETPACK: dict[str, str] = {
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.2": "6.1.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
    "36.5.0": "6.2.2",
}

_HEAD = re.compile(r"^#\s*R(?P<major>\d+)\s*\((?P<kind>[^)]*)\)\s*,\s*(?P<rest>.*)$")
_FIELD = re.compile(r"(?P<key>[A-Z]+):\s*(?P<value>[^,]*?)\s*(?:,|$)")
_REVISION = re.compile(r"^\d+(?:\.\d+){0,2}$")


@dataclass(frozen=True)
class L4TRelease:
    """One parsed ``nv_tegra_release`` line."""

    major: int
    revision: str
    release_kind: str
    gcid: str | None
    board: str | None
    eabi: str | None
    date: str | None

    @property
    def version(self) -> str:
        """The L4T version with three parts, e.g. ``"36.4.3"`` (``REVISION: 4`` -> ``36.4.0``)."""
        parts = self.revision.split(".")
        parts += ["0"] * (2 - len(parts))
        return ".".join([str(self.major), *parts[:2]])

    @property
    def jetpack(self) -> str | None:
        """The JetPack release of this L4T version, or ``None`` when it is not in the table."""
        return jetpack_for_l4t(self.version)

    @property
    def newer_than_known(self) -> bool:
        """Whether this L4T is newer than every release of the table (so its JetPack is unknown)."""
        return _version_tuple(self.version) > _version_tuple(newest_known_l4t())

    def to_dict(self) -> dict[str, object]:
        """Plain data, with the derived L4T version and JetPack release."""
        return {
            "major": self.major,
            "revision": self.revision,
            "release_kind": self.release_kind,
            "gcid": self.gcid,
            "board": self.board,
            "eabi": self.eabi,
            "date": self.date,
            "l4t": self.version,
            "jetpack": self.jetpack,
            "newer_than_known": self.newer_than_known,
        }


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def newest_known_l4t() -> str:
    """The newest L4T version the table maps to a JetPack release."""
    return max(L4T_TO_JETPACK, key=_version_tuple)


def jetpack_for_l4t(version: str) -> str | None:
    """The JetPack release of an L4T version such as ``"36.4.3"``; ``None`` if unknown."""
    parts = version.strip().split(".")
    parts += ["0"] * (3 - len(parts))
    return L4T_TO_JETPACK.get(".".join(parts[:3]))


def parse_nv_tegra_release(text: str) -> L4TRelease:
    """Parse the content of ``/etc/nv_tegra_release`` (its first non-empty line counts)."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line:
        raise ParseError("nv_tegra_release", text, "empty")
    head = _HEAD.match(line)
    if head is None:
        raise ParseError("nv_tegra_release", line, "expected '# R<major> (<kind>), REVISION: ...'")
    fields = {m["key"]: m["value"] for m in _FIELD.finditer(head["rest"])}
    revision = fields.get("REVISION")
    if revision is None:
        raise ParseError("nv_tegra_release", line, "no REVISION field")
    if not _REVISION.match(revision):
        raise ParseError("nv_tegra_release", line, f"bad REVISION {revision!r}")
    return L4TRelease(
        major=int(head["major"]),
        revision=revision,
        release_kind=head["kind"].strip(),
        gcid=fields.get("GCID"),
        board=fields.get("BOARD"),
        eabi=fields.get("EABI"),
        date=fields.get("DATE"),
    )


def read_l4t_release(path: Path = NV_TEGRA_RELEASE) -> L4TRelease | None:
    """Parse the board's release file; ``None`` on a host that is not a Jetson."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return parse_nv_tegra_release(text)
