"""What the board's files say about it: the L4T release and its JetPack.

``/etc/nv_tegra_release`` starts with a line such as::

    # R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, ...

R36 with REVISION 4.3 is L4T 36.4.3 (JetPack 6.2).  The framework keeps its
own small reader: it must not import the product under test (``onboard``).
"""

from __future__ import annotations

import re

#: L4T version -> JetPack release (the JetPack 5 and 6 lines).  A newer L4T is unknown.
L4T_TO_JETPACK: dict[str, str] = {
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.2": "6.1.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
    "36.5.0": "6.2.2",
}

_RELEASE = re.compile(r"^#\s*R(?P<major>\d+)\s*\([^)]*\)\s*,\s*REVISION:\s*(?P<rev>\d+(?:\.\d+)?)\s*(?:,|$)")
_L4T_TAG = re.compile(r":r(\d+)\.(\d+)(?:\.(\d+))?")


def l4t_version(nv_tegra_release: str) -> str:
    """The L4T version (``"36.4.3"``) of an ``/etc/nv_tegra_release`` text; "" when unreadable."""
    line = next((ln.strip() for ln in nv_tegra_release.splitlines() if ln.strip()), "")
    m = _RELEASE.match(line)
    if not m:
        return ""
    minor, _, patch = m["rev"].partition(".")
    return f"{m['major']}.{minor}.{patch or 0}"


def jetpack_of(nv_tegra_release: str) -> tuple[str, str]:
    """(L4T version, JetPack release) of an ``/etc/nv_tegra_release`` text ("" if unknown)."""
    version = l4t_version(nv_tegra_release)
    return version, L4T_TO_JETPACK.get(version, "")


def l4t_of_image(image: str) -> str:
    """The L4T version an ``l4t-*`` image tag names (``...:r36.4.0-pth2.5`` -> ``36.4.0``)."""
    tag = image.rsplit("/", 1)[-1]
    m = _L4T_TAG.search(tag)
    if not m:
        return ""
    return ".".join(p for p in (m[1], m[2], m[3] or "0"))
