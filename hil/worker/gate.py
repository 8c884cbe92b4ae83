"""The tier gate: skips tests above the target's tier and labels Allure results with it."""

from __future__ import annotations

import platform
import socket
from pathlib import Path

import pytest

from .allure import allure_target_parameter, write_environment
from .probe import RUNTIME_PACKAGES, package_versions
from .tiers import item_tier, skip_reason


class TierGate:
    """Skips tests above the target's tier and labels every Allure result with the target.

    Used in-process by the local target and inside containers by the worker.
    """

    def __init__(self, target: str, tier: int, allure_dir: str | None = None,
                 environment: dict[str, str] | None = None, *,
                 write_environment: bool = True) -> None:
        self.target = target
        self.tier = tier
        self.allure_dir = allure_dir
        self.environment = environment or {}
        #: False in xdist workers: their controller writes environment.properties.
        self.write_environment = write_environment

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            needed = item_tier(item)
            if needed > self.tier:
                item.add_marker(pytest.mark.skip(reason=skip_reason(needed, self.target, self.tier)))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if self.allure_dir:
            allure_target_parameter(self.target)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Tests skipped at setup never reach a test body; label them here.
        if self.allure_dir and report.when == "setup" and report.skipped:
            allure_target_parameter(self.target)

    def pytest_sessionfinish(self) -> None:
        if self.allure_dir and self.write_environment:
            write_environment(Path(self.allure_dir), self.environment_lines())

    def environment_lines(self) -> dict[str, str]:
        """What Allure shows under Environment for this target."""
        env = {
            "target": self.target,
            "tier": str(self.tier),
            "host": socket.gethostname(),
            "python": platform.python_version(),
        }
        env.update({f"{k}.version": v for k, v in package_versions(RUNTIME_PACKAGES).items()})
        env.update(self.environment)
        return env


