"""Backends: one module per way of reaching a target, imported only when chosen.

``base`` holds the protocol and the plain data every backend shares;
``docker`` reaches an engine this host talks to directly (Colima, dockerd);
``jetson`` reaches a board's engine over SSH.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hil.backends.base import Backend
    from hil.config import TargetSpec


def load_backend(spec: TargetSpec) -> type[Backend]:
    """The backend class for a target's kind, imported lazily with an install hint."""
    try:
        if spec.kind == "docker":
            from hil.backends.docker import DockerBackend

            return DockerBackend
        if spec.kind == "ssh":
            from hil.backends.jetson.backend import SshBackend

            return SshBackend
    except ImportError as err:
        from hil.errors import ConfigError

        raise ConfigError(
            f"target '{spec.name}' (kind {spec.kind}) needs {err.name}: pip install pytest-hil"
        ) from err
    raise AssertionError(f"no backend for kind {spec.kind}")
