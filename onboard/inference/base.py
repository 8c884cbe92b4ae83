"""The :class:`InferenceRuntime` protocol and the plain data its strategies exchange."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from onboard.diag.thermal import ThermalState
from onboard.inference.cache import EngineCacheKey
from onboard.model import ModelSpec
from onboard.recorder import FlightRecorder

#: Called once with (runtime label, message) when a fallback runtime serves its first inference.
AlertCallback = Callable[[str, str], None]

#: Default root of every engine cache (overridden by :class:`RuntimeConfig`).
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "onboard" / "engines"


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings shared by every runtime strategy.

    ``gpu_memory_budget_bytes`` is the GPU memory the product grants inference;
    TensorRT's workspace is ``workspace_fraction`` of it.
    """

    cache_dir: Path = DEFAULT_CACHE_DIR
    precision: str = "fp16"
    gpu_memory_budget_bytes: int = 2 << 30
    workspace_fraction: float = 0.25
    providers: tuple[str, ...] = (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    disallow_cpu_fallback: bool = False
    device_index: int = 0

    def __post_init__(self) -> None:
        if self.precision not in ("fp16", "fp32"):
            raise ValueError(f"precision must be 'fp16' or 'fp32', not {self.precision!r}")
        if not 0.0 < self.workspace_fraction <= 1.0:
            raise ValueError(f"workspace_fraction must be in (0, 1], not {self.workspace_fraction}")
        if self.gpu_memory_budget_bytes <= 0:
            raise ValueError("gpu_memory_budget_bytes must be positive")

    @property
    def workspace_bytes(self) -> int:
        """The TensorRT workspace memory-pool limit, in bytes."""
        return int(self.gpu_memory_budget_bytes * self.workspace_fraction)


@dataclass(frozen=True)
class EngineEntry:
    """What ``compile`` produced: a serialized engine (or session cache) and its key.

    ``path`` is the engine file, the state-dict file, or for ONNX Runtime the
    ONNX model whose provider caches live in ``cache_dir``.
    """

    runtime: str
    model: ModelSpec
    path: Path
    key: EngineCacheKey
    cache_hit: bool
    build_seconds: float
    cache_dir: Path | None = None


@dataclass
class EngineHandle:
    """A deserialized engine, ready for ``infer``; ``release`` empties it."""

    runtime: str
    entry: EngineEntry
    native: Any
    extra: dict[str, Any] = field(default_factory=dict)
    released: bool = False


@runtime_checkable
class InferenceRuntime(Protocol):
    """One way to run a model on this host (PyTorch FP16, TensorRT, ONNX Runtime)."""

    #: Short strategy name used by the factory: ``"torch-fp16"``, ``"tensorrt"``, ``"onnxruntime"``.
    name: str

    @property
    def label(self) -> str:
        """Human-readable runtime label, including what actually executes (e.g. the provider)."""
        ...

    def compile(self, model: ModelSpec) -> EngineEntry:
        """Build (or find in the cache) the engine for ``model``."""
        ...

    def deserialize(self, entry: EngineEntry) -> EngineHandle:
        """Load a compiled engine; refuse one built for another host."""
        ...

    def infer(self, handle: EngineHandle, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named inputs; return named numpy outputs in the model's dtypes."""
        ...

    def release(self, handle: EngineHandle) -> None:
        """Free the handle's resources; calling it again does nothing."""
        ...

    def thermal_state(self) -> ThermalState:
        """The host's thermal state now."""
        ...


class FallbackNotice:
    """The one-shot ``fallback activated`` record and alert of a runtime built as a fallback.

    ``reason`` says why the preferred runtime does not serve (its unavailability,
    or the engine it could not load); it travels in the record and the alert.
    """

    def __init__(
        self,
        runtime: str,
        fallback_from: str | None,
        recorder: FlightRecorder | None,
        alert: AlertCallback | None,
        reason: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.fallback_from = fallback_from
        self.reason = reason
        self._recorder = recorder
        self._alert = alert
        self._done = fallback_from is None
        self._lock = threading.Lock()

    def on_infer(self, label: str, model_name: str) -> None:
        """Record and alert on the first call only, and only for a fallback runtime."""
        if self._done:
            return
        with self._lock:
            if self._done:
                return
            self._done = True
        assert self.fallback_from is not None
        if self._recorder is not None:
            self._recorder.write(
                "fallback activated",
                runtime=self.runtime,
                label=label,
                fallback_from=self.fallback_from,
                model_name=model_name,
                reason=self.reason,
            )
        if self._alert is not None:
            why = f" ({self.reason})" if self.reason else ""
            self._alert(
                label,
                f"fallback activated: {label} serves {model_name} instead of {self.fallback_from}{why}",
            )


def check_inputs(
    runtime: str,
    model: ModelSpec,
    inputs: Mapping[str, np.ndarray],
    dtypes: Mapping[str, np.dtype[Any]] | None = None,
) -> dict[str, np.ndarray]:
    """Check the input names against the model; return contiguous arrays.

    Each input becomes ``dtypes[name]`` where given (the model's own input type),
    else float32.
    """
    from onboard.errors import InferenceError

    missing = [n for n in model.input_names if n not in inputs]
    unknown = [n for n in inputs if n not in model.input_names]
    if missing or unknown:
        raise InferenceError(
            runtime,
            f"inputs do not match the model {model.name}: missing {missing}, unknown {unknown}",
        )
    wanted = dtypes or {}
    return {n: np.ascontiguousarray(inputs[n], dtype=wanted.get(n, np.float32)) for n in model.input_names}
