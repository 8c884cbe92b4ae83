"""pytest-xdist inside the target: its workers load this module as a plugin."""

from __future__ import annotations

import os
from typing import Any

import pytest

from .allure import record_allure
from .gate import TierGate
from .resume import RouteFilter, ShareFilter
from .tiers import register_markers

#: What xdist's workers import as a plugin (``PYTEST_PLUGINS``): this module, under the
#: package's name where it runs (``hil_worker`` in a container, ``hil.worker`` on a host).
PLUGIN = __name__
#: The key of the settings in each xdist worker's ``workerinput``.
SETTINGS_KEY = "hil_worker"


class XdistWorkers:
    """Gives xdist's workers, started by this process, what the worker gives pytest here.

    The workers are fresh interpreters that load plugins from their command line
    and ``PYTEST_PLUGINS``: this module is named there before they start, and
    each gets the target, tier and Allure folder in its ``workerinput``.
    """

    def __init__(self, target: str, tier: int, allure_dir: str | None) -> None:
        self.settings = {"target": target, "tier": tier, "allure_dir": allure_dir}

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_setupnodes(self) -> None:
        names = [n for n in os.environ.get("PYTEST_PLUGINS", "").split(",") if n.strip()]
        if PLUGIN not in names:
            os.environ["PYTEST_PLUGINS"] = ",".join([*names, PLUGIN])

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[SETTINGS_KEY] = self.settings


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """In an xdist worker of the worker's pytest: the tier gate and Allure's faster writer."""
    settings = getattr(config, "workerinput", {}).get(SETTINGS_KEY)
    if not settings:
        return
    register_markers(config)
    config.pluginmanager.register(
        TierGate(settings["target"], settings["tier"], settings["allure_dir"],
                 write_environment=False), "hil-tiergate")
    share = ShareFilter.from_env()  # each xdist worker collects: each keeps the same part
    if share is not None:
        config.pluginmanager.register(share, "hil-share")
    route = RouteFilter.from_env()
    if route is not None:
        config.pluginmanager.register(route, "hil-route")
    if settings["allure_dir"]:
        record_allure(config, settings["allure_dir"])


