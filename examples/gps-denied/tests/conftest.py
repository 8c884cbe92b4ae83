"""The team's own tier switch: tier2 tests (GPU, the real airframe's sensors) run only
where GPS_DENIED_TIER=2 says so. pytest-hil's tiers apply beside it: on a target that
serves tier 1, pytest-hil skips them first, with its own reason."""

import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "tier2: needs the Jetson's GPU (GPS_DENIED_TIER=2)")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("GPS_DENIED_TIER") == "2":
        return
    skip = pytest.mark.skip(reason="tier2: set GPS_DENIED_TIER=2 to run")
    for item in items:
        if "tier2" in item.keywords:
            item.add_marker(skip)
