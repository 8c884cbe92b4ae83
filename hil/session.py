"""Controller for container targets (placeholder until the execution core lands)."""

from __future__ import annotations

from typing import Any


class RemoteSession:
    """Drives a container backend and feeds its reports into the local session."""

    def __init__(self, config: Any, settings: Any) -> None:
        self.config = config
        self.settings = settings
