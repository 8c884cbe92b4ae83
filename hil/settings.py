"""What the plugin resolved at configure time, kept in the config's stash."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from hil.config import TargetSpec


@dataclass(frozen=True)
class HilSettings:
    """What the plugin resolved at configure time (kept in the config's stash)."""

    target: TargetSpec
    #: The checkout root: where the target was declared (the rootdir or a parent of it).
    root: Path
    tier: int
    tier_how: str
    reports: Path
    allure_dir: Path | None
    keep_results: bool
    plan: bool


SETTINGS_KEY = pytest.StashKey[HilSettings]()


def git_commit(root: Path) -> str:
    """The checkout's commit (with ``-dirty``), or '' outside git."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""
