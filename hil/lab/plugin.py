"""The lab's part in a session: its places are the controller's members, held around the run.

:func:`lab_controller` makes the session's controller for a target with a
``[labgrid]`` table: a pool's (its policies too) when more than one place is
wanted, a single board's for one.  Its members are unknown until the places
are acquired, so :class:`LabPlaces` wraps the controller's
``pytest_runtestloop``: it reserves and acquires the places first (progress
lines show the queue), hands the controller their boards as its members
(:func:`lab_layout`), and whatever ends the loop (the run, a fault, Ctrl-C,
SIGTERM) releases them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import pytest

from hil.config import TargetSpec
from hil.errors import HilError
from hil.lab.lease import LabLease
from hil.progress import terminal_line
from hil.session.shards import shard_levels, share_env
from hil.settings import HilSettings

if TYPE_CHECKING:
    from hil.session.controller import Controller, Layout


def lab_layout(spec: TargetSpec, tier: int, members: Sequence[TargetSpec]) -> Layout:
    """The acquired places' boards as members (``HIL_BOARD`` each, ``HIL_POOL`` all of them)."""
    from hil.session.controller import Layout

    assert spec.labgrid is not None
    pool = spec.labgrid.count != 1
    names = ",".join(m.name for m in members)

    def env(config: pytest.Config, member: TargetSpec, index: int, count: int) -> dict[str, str]:
        shares = [*shard_levels(config), [index, count]] if pool else shard_levels(config)
        return {**spec.env, "HIL_TARGET": spec.name, "HIL_TIER": str(tier),
                "HIL_BOARD": member.name, "HIL_POOL": names, **share_env(config, shares)}

    return Layout(name=spec.name, specs=tuple(members), env=env, word="board", pool=pool)


def lab_controller(config: pytest.Config, settings: HilSettings) -> Controller:
    """The controller of a ``[labgrid]`` target, its members filled in once the places are held."""
    from hil.session import pool
    from hil.session.controller import Controller

    spec = settings.target
    assert spec.labgrid is not None
    controller = Controller(config, settings, lab_layout(spec, settings.tier, ()))
    if spec.labgrid.count != 1:
        pool.install(controller)
    config.pluginmanager.register(LabPlaces(controller), "hil-lab")
    return controller


class LabPlaces:
    """Holds a lab target's places around the controller's run."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.config = controller.config
        self.spec = controller.settings.target
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
                self.controller.layout = lab_layout(
                    self.spec, self.controller.settings.tier, [m.target(self.spec) for m in members])
                return (yield)
        finally:
            self.lease.release()
