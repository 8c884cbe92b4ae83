"""The PyTorch FP16 strategy: the model's own ``nn.Module``, ``model.half().cuda()``.

The "engine" is the FP16 state dict, cached under the same kind of key as a
TensorRT engine (model sha256, torch version, GPU, precision).
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from onboard.diag.thermal import ThermalState, read_thermal_state
from onboard.errors import EngineCacheMismatch, InferenceError
from onboard.inference._cuda import require_cuda_torch, torch_gpu_identity
from onboard.inference.base import (
    AlertCallback,
    EngineEntry,
    EngineHandle,
    FallbackNotice,
    RuntimeConfig,
    check_inputs,
)
from onboard.inference.cache import EngineCache, EngineCacheKey
from onboard.model import ModelSpec
from onboard.recorder import FlightRecorder


class TorchFp16Runtime:
    """Runs the model's ``torch.nn.Module`` in half precision on a CUDA device.

    Raises :class:`~onboard.errors.RuntimeUnavailable` when constructed on a
    host without torch or without CUDA.
    """

    name = "torch-fp16"

    def __init__(
        self,
        config: RuntimeConfig | None = None,
        recorder: FlightRecorder | None = None,
        alert: AlertCallback | None = None,
        fallback_from: str | None = None,
        fallback_reason: str | None = None,
    ) -> None:
        self.config = config or RuntimeConfig()
        self._torch = require_cuda_torch(self.name, self.config.device_index)
        self._device = self._torch.device("cuda", self.config.device_index)
        self._recorder = recorder
        self._cache = EngineCache(self.config.cache_dir / "torch")
        self._notice = FallbackNotice(self.name, fallback_from, recorder, alert, fallback_reason)
        self._gpu_name, self._capability = torch_gpu_identity(self._torch, self.config.device_index)

    @property
    def label(self) -> str:
        """``torch-fp16 (torch <version>, <GPU name>)``."""
        return f"torch-fp16 (torch {self._torch.__version__}, {self._gpu_name})"

    def host_key(self, model: ModelSpec) -> EngineCacheKey:
        """The cache key an FP16 state dict of ``model`` has on this host."""
        return EngineCacheKey(
            model_sha256=model.sha256(),
            runtime_version=f"torch-{self._torch.__version__}",
            gpu_name=self._gpu_name,
            compute_capability=self._capability,
            precision="fp16",
            workspace_bytes=0,
        )

    def compile(self, model: ModelSpec) -> EngineEntry:
        """Convert the module's weights to FP16 and cache them (or find them cached)."""
        if model.torch_factory is None:
            raise InferenceError(self.name, f"model {model.name} has no torch_factory")
        key = self.host_key(model)
        cached = self._cache.lookup(key, ".pt")
        if cached is not None:
            self._record("engine cache hit", runtime=self.name, path=str(cached), key=key.to_dict())
            return EngineEntry(self.name, model, cached, key, cache_hit=True, build_seconds=0.0)
        started = time.perf_counter()
        module = model.torch_factory().half()
        buffer = io.BytesIO()
        self._torch.save(module.state_dict(), buffer)
        path = self._cache.store(key, buffer.getvalue(), ".pt")
        seconds = time.perf_counter() - started
        self._record("engine built", runtime=self.name, path=str(path), key=key.to_dict(), seconds=seconds)
        return EngineEntry(self.name, model, path, key, cache_hit=False, build_seconds=seconds)

    def deserialize(self, entry: EngineEntry) -> EngineHandle:
        """Load the FP16 weights into a fresh module on the GPU: ``model.half().cuda()``."""
        host = self.host_key(entry.model)
        try:
            payload = self._cache.load(entry.path, host)
        except EngineCacheMismatch as exc:
            self._record(
                "engine refused",
                runtime=self.name,
                path=str(entry.path),
                differences={k: [str(a), str(b)] for k, (a, b) in exc.differences.items()},
            )
            raise
        state = self._torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        module = entry.model.torch_factory()
        module.load_state_dict(state)
        module = module.half().cuda(self._device).eval()
        return EngineHandle(runtime=self.name, entry=entry, native=module)

    def infer(self, handle: EngineHandle, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the FP16 module; inputs are cast to FP16 on the GPU, outputs come back FP32."""
        if handle.released or handle.native is None:
            raise InferenceError(self.name, "infer on a released handle")
        model = handle.entry.model
        arrays = check_inputs(self.name, model, inputs)
        torch = self._torch
        self._notice.on_infer(self.label, model.name)
        with torch.inference_mode():
            tensors = [
                torch.from_numpy(arrays[n]).to(self._device, non_blocking=False).half()
                for n in model.input_names
            ]
            result: Any = handle.native(*tensors)
            outputs = result if isinstance(result, (tuple, list)) else (result,)
            return {
                name: out.float().cpu().numpy() for name, out in zip(model.output_names, outputs, strict=True)
            }

    def release(self, handle: EngineHandle) -> None:
        """Drop the module and return its memory to the CUDA caching allocator; idempotent.

        A handle of another runtime is left alone.
        """
        if handle.runtime != self.name or handle.released:
            return
        handle.native = None
        handle.released = True
        self._torch.cuda.empty_cache()

    def thermal_state(self) -> ThermalState:
        """The host's thermal state (thermal zones and NVML)."""
        return read_thermal_state()

    def _record(self, kind: str, **data: Any) -> None:
        if self._recorder is not None:
            self._recorder.write(kind, **data)
