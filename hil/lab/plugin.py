"""The lab's part in a session: places acquired before the run, released after it on every path.

Registered by the plugin for a target with a ``[labgrid]`` table.  Its
``pytest_runtestloop`` wraps the session's own: the places are reserved and
acquired first (progress lines show the queue), their boards become the
session's members (:func:`lab_members`), and whatever ends the loop (the run,
a fault, Ctrl-C, SIGTERM) releases them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hil.config import TargetSpec
from hil.errors import HilError
from hil.lab.lease import LabLease
from hil.progress import terminal_line

#: The acquired places' one-board targets, for the session to build its members from.
MEMBERS_KEY = pytest.StashKey[list[TargetSpec]]()


def lab_members(config: pytest.Config) -> list[TargetSpec]:
    """The one-board targets of the places this session holds (empty before they are acquired)."""
    return config.stash.get(MEMBERS_KEY, [])


class LabPlaces:
    """Holds a lab target's places around the session's run."""

    def __init__(self, config: pytest.Config, spec: TargetSpec) -> None:
        self.config = config
        self.spec = spec
        self.lease: LabLease | None = None

    def _say(self, text: str) -> None:
        terminal_line(self.config, f"hil: {text}", cyan=True)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Iterator[None]:
        from hil.session.controller import sigterm_as_interrupt

        self.lease = LabLease(self.spec, self._say,
                              lease_timeout=self.config.getoption("hil_lease_timeout", None))
        try:
            with sigterm_as_interrupt():
                try:
                    members = self.lease.acquire()
                except HilError as err:
                    pytest.exit(f"hil: {err}", returncode=int(err.exit_code))
                self.config.stash[MEMBERS_KEY] = [m.target(self.spec) for m in members]
                return (yield)
        finally:
            self.lease.release()
