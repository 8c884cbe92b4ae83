"""Serving through the ONNX Runtime strategy when another runtime cannot load its cached engine.

TensorRT-direct refuses an engine whose key does not match the host before
reading it; an engine whose key matches but whose bytes TensorRT cannot
deserialize (a truncated file, a TensorRT build the key did not tell apart)
would otherwise stop inference.  The product keeps serving instead: the same
model runs through :class:`~onboard.inference.ort.OnnxRuntimeRuntime`, built as
a fallback of the failed runtime, so its first inference writes one
``fallback activated`` record (with the model and the reason) and calls the
alert once.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onboard.inference.base import AlertCallback, EngineEntry, EngineHandle, RuntimeConfig
from onboard.inference.ort import OnnxRuntimeRuntime
from onboard.recorder import FlightRecorder


class OrtFallbackServer:
    """Builds the ONNX Runtime strategy on demand and serves the handles it made."""

    def __init__(
        self,
        failed_runtime: str,
        config: RuntimeConfig,
        recorder: FlightRecorder | None,
        alert: AlertCallback | None,
    ) -> None:
        self.failed_runtime = failed_runtime
        self._config = config
        self._recorder = recorder
        self._alert = alert
        self._runtime: OnnxRuntimeRuntime | None = None

    def serve(self, entry: EngineEntry, reason: str) -> EngineHandle:
        """A ready ONNX Runtime handle for ``entry.model``, in place of the engine that failed.

        Raises :class:`~onboard.errors.RuntimeUnavailable` when ONNX Runtime
        cannot run here either.
        """
        if self._recorder is not None:
            self._recorder.write(
                "fallback step", failed=self.failed_runtime, reason=reason, next="onnxruntime"
            )
        runtime = OnnxRuntimeRuntime(
            self._config,
            recorder=self._recorder,
            alert=self._alert,
            fallback_from=self.failed_runtime,
            fallback_reason=reason,
        )
        self._runtime = runtime
        onnx_entry = EngineEntry(
            runtime.name, entry.model, entry.model.onnx_path, runtime.host_key(entry.model), False, 0.0
        )
        return runtime.deserialize(onnx_entry)

    def owns(self, handle: EngineHandle) -> bool:
        """Whether ``handle`` was made by :meth:`serve`."""
        return self._runtime is not None and handle.runtime == "onnxruntime"

    @property
    def label(self) -> str | None:
        """The serving runtime's label, once :meth:`serve` has built it."""
        return None if self._runtime is None else self._runtime.label

    def infer(self, handle: EngineHandle, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a handle made by :meth:`serve`."""
        assert self._runtime is not None
        return self._runtime.infer(handle, inputs)

    def release(self, handle: EngineHandle) -> None:
        """Release a handle made by :meth:`serve`."""
        if self._runtime is not None:
            self._runtime.release(handle)
