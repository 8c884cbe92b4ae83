"""The engine cache: serialized engines keyed by everything that makes them host-specific.

A TensorRT engine only runs on the TensorRT version and GPU it was built with,
so an engine's key holds the model's sha256, the runtime version, the GPU name
and compute capability, the precision and the workspace.  Each engine file
``<digest>.engine`` has a sidecar ``<digest>.json`` with its key; loading
compares that key with the host's and refuses a mismatch *before* the bytes
reach the deserializer.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from onboard.errors import EngineCacheMismatch


@dataclass(frozen=True)
class EngineCacheKey:
    """Everything an engine depends on; two engines with equal keys are interchangeable."""

    model_sha256: str
    runtime_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    workspace_bytes: int

    def digest(self) -> str:
        """A stable hex digest of the key: the engine's file name."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the sidecar file and for records."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineCacheKey:
        """Rebuild a key from :meth:`to_dict`; a missing or extra field is a ``ValueError``."""
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(f"engine key fields {sorted(data)} != {sorted(names)}")
        return cls(**data)

    def differences(self, other: EngineCacheKey) -> dict[str, tuple[object, object]]:
        """``{field: (self value, other value)}`` for each field that differs."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        }


class EngineCache:
    """A folder of serialized engines, each with a sidecar key file."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def engine_path(self, key: EngineCacheKey, suffix: str = ".engine") -> Path:
        """Where the engine of ``key`` lives (whether or not it exists)."""
        return self.root / f"{key.digest()}{suffix}"

    def lookup(self, key: EngineCacheKey, suffix: str = ".engine") -> Path | None:
        """The cached engine for ``key``, or ``None`` on a miss."""
        path = self.engine_path(key, suffix)
        sidecar = path.with_suffix(".json")
        return path if path.is_file() and sidecar.is_file() else None

    def store(self, key: EngineCacheKey, payload: bytes, suffix: str = ".engine") -> Path:
        """Write an engine and its key atomically (a reader never sees half a file)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.engine_path(key, suffix)
        _atomic_write(path, payload)
        _atomic_write(path.with_suffix(".json"), json.dumps(key.to_dict(), indent=2).encode())
        return path

    @staticmethod
    def read_key(path: Path) -> EngineCacheKey:
        """The key recorded beside an engine file."""
        sidecar = path.with_suffix(".json")
        try:
            return EngineCacheKey.from_dict(json.loads(sidecar.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise EngineCacheMismatch(
                str(path), {"sidecar": (f"unreadable: {exc}", "a valid key file")}
            ) from exc

    def load(self, path: Path, host_key: EngineCacheKey) -> bytes:
        """The engine's bytes, only if its recorded key equals ``host_key``.

        Raises :class:`EngineCacheMismatch` naming each differing field, without
        reading the engine bytes, when the engine was built for something else.
        """
        differences = self.read_key(path).differences(host_key)
        if differences:
            raise EngineCacheMismatch(str(path), differences)
        return path.read_bytes()


def _atomic_write(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
