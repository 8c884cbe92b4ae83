"""Shared fixtures of pytest-hil's own tests.

Keep this file tidy: one section per area, each fixture with a docstring.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from hil.sim import Rig

# --- the simulated rig (hil sim) ---------------------------------------------

SIM_REQUIRED_ENV = "HIL_SIM_REQUIRED"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sim_restart: takes the simulated rig down and up again; runs last")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that restart the rig run after every other test of the session.
    items.sort(key=lambda item: item.get_closest_marker("sim_restart") is not None)


@pytest.fixture(scope="session")
def sim_rig() -> Iterator[Rig]:
    """The simulated rig, brought up if needed; yields :class:`hil.sim.Rig`.

    Skips where the rig cannot run (not Linux, not root, tools missing) unless
    ``HIL_SIM_REQUIRED=1``, which makes that a failure.  It never takes the
    rig down (``hil sim down`` does), but undoes every fault injected through it.
    """
    rig = Rig()
    reason = rig.unsupported_reason()
    if reason:
        if os.environ.get(SIM_REQUIRED_ENV) == "1":
            pytest.fail(f"{SIM_REQUIRED_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    rig.ensure_up()
    try:
        yield rig
    finally:
        rig.restore_injected()
