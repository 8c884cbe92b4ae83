"""The error hierarchy of the onboard software.

Every error says what the operator needs to act on: which runtime, which
library or file, and the underlying cause (kept as ``__cause__``).
"""

from __future__ import annotations


class OnboardError(Exception):
    """Base class of every error raised by :mod:`onboard`."""


class RuntimeUnavailable(OnboardError):
    """An inference runtime cannot run on this host (library or device missing).

    Raised when the runtime is constructed, never deep inside a test, so a
    suite can skip with ``str(exc)`` as the reason.
    """

    def __init__(self, runtime: str, reason: str) -> None:
        super().__init__(f"{runtime}: {reason}")
        self.runtime = runtime
        self.reason = reason


class UnknownRuntime(OnboardError, ValueError):
    """A runtime name that the factory does not know."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        super().__init__(f"unknown inference runtime {name!r}; known: {', '.join(known)}")
        self.name = name
        self.known = known


class CpuFallbackRefused(RuntimeUnavailable):
    """Only the CPU would run the model and the configuration disallows it."""


class NoRuntimeAvailable(OnboardError):
    """Every runtime of a fallback chain was unavailable."""

    def __init__(self, chain: tuple[str, ...], reasons: tuple[str, ...]) -> None:
        lines = "; ".join(reasons)
        super().__init__(f"no runtime of the chain {' -> '.join(chain)} is available: {lines}")
        self.chain = chain
        self.reasons = reasons


class InferenceError(OnboardError):
    """A runtime failed while compiling, loading or running a model; the cause is kept."""

    def __init__(self, runtime: str, message: str) -> None:
        super().__init__(f"{runtime}: {message}")
        self.runtime = runtime


class EngineCacheMismatch(OnboardError):
    """A cached engine was built for another host or setting; refused before deserializing."""

    def __init__(self, path: str, differences: dict[str, tuple[object, object]]) -> None:
        parts = ", ".join(
            f"{field}: engine {engine!r} != host {host!r}"
            for field, (engine, host) in sorted(differences.items())
        )
        super().__init__(f"engine {path} does not match this host ({parts})")
        self.path = path
        self.differences = differences


class RecordSchemaError(OnboardError, ValueError):
    """A flight-data record does not match the schema of its kind."""


class ParseError(OnboardError, ValueError):
    """A diagnostic text (tegrastats line, nv_tegra_release, nvidia-smi CSV) is malformed."""

    def __init__(self, what: str, text: str, reason: str) -> None:
        shown = text if len(text) <= 160 else text[:157] + "..."
        super().__init__(f"cannot parse {what}: {reason}: {shown!r}")
        self.what = what
        self.text = text
        self.reason = reason
