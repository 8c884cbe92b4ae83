"""The simulated rig (``hil sim``): a Jetson and a Colima that are real but for the GPU.

Stdlib only; every part is driven through its own command-line tool (``ip``,
``dockerd``, ``sshd``, ``ssh-keygen``, ``debootstrap``, ``docker``).

    from hil.sim import Rig
    rig = Rig()
    rig.up()
    with rig.link_cut():
        ...
"""

from __future__ import annotations

from hil.sim._proc import NotReadyError, wait_until
from hil.sim.layout import RigLayout
from hil.sim.rig import REQUIRED_TOOLS, Rig, RigUnsupportedError

__all__ = [
    "REQUIRED_TOOLS",
    "NotReadyError",
    "Rig",
    "RigLayout",
    "RigUnsupportedError",
    "wait_until",
]
