"""The TensorRT strategy, on the TensorRT 10 API.

Build: ONNX parser -> network -> builder config (workspace memory-pool limit,
FP16) -> ``build_serialized_network``; the serialized engine goes to the
engine cache under its host key.  Run: ``deserialize_cuda_engine``, named I/O
tensors (``num_io_tensors``, ``get_tensor_name``, ``set_tensor_address``) and
``execute_async_v3`` on a torch CUDA stream; buffers are torch CUDA tensors,
so no pycuda is needed.

A cached engine whose key matches the host but which TensorRT cannot
deserialize is not the end of inference: the model is then served through the
ONNX Runtime strategy (:class:`~onboard.inference.ort_fallback.OrtFallbackServer`),
with one ``fallback activated`` record and one alert.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from onboard.diag.thermal import ThermalState, read_thermal_state
from onboard.errors import EngineCacheMismatch, InferenceError, RuntimeUnavailable
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
from onboard.inference.ort_fallback import OrtFallbackServer
from onboard.model import ModelSpec
from onboard.recorder import FlightRecorder

#: The lowest TensorRT major version whose API this strategy uses.
MIN_TENSORRT_MAJOR = 10


def import_tensorrt() -> Any:
    """Import ``tensorrt`` (10 or later) or raise :class:`RuntimeUnavailable` saying why."""
    try:
        import tensorrt
    except ImportError as exc:
        raise RuntimeUnavailable(
            "tensorrt", "tensorrt is not installed (pip install tensorrt, or a JetPack 6 image)"
        ) from exc
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        raise RuntimeUnavailable(
            "tensorrt", f"TensorRT {tensorrt.__version__} found, the TensorRT 10 API is required"
        )
    return tensorrt


class TensorRTRuntime:
    """Builds, caches and runs TensorRT engines from ONNX models."""

    name = "tensorrt"

    def __init__(
        self,
        config: RuntimeConfig | None = None,
        recorder: FlightRecorder | None = None,
        alert: AlertCallback | None = None,
        fallback_from: str | None = None,
        fallback_reason: str | None = None,
    ) -> None:
        self.config = config or RuntimeConfig()
        self._trt = import_tensorrt()
        self._torch = require_cuda_torch(self.name, self.config.device_index)
        self._device = self._torch.device("cuda", self.config.device_index)
        self._logger = self._trt.Logger(self._trt.Logger.WARNING)
        self._recorder = recorder
        self._cache = EngineCache(self.config.cache_dir / "tensorrt")
        self._notice = FallbackNotice(self.name, fallback_from, recorder, alert, fallback_reason)
        self._gpu_name, self._capability = torch_gpu_identity(self._torch, self.config.device_index)
        self._ort_fallback = OrtFallbackServer(self.name, self.config, recorder, alert)

    @property
    def version(self) -> str:
        """The TensorRT version."""
        return str(self._trt.__version__)

    @property
    def label(self) -> str:
        """``tensorrt <version> <precision> (<GPU name>)``."""
        return f"tensorrt {self.version} {self.config.precision} ({self._gpu_name})"

    def host_key(self, model: ModelSpec) -> EngineCacheKey:
        """The key an engine of ``model`` must have to run on this host with this config."""
        return EngineCacheKey(
            model_sha256=model.sha256(),
            runtime_version=self.version,
            gpu_name=self._gpu_name,
            compute_capability=self._capability,
            precision=self.config.precision,
            workspace_bytes=self.config.workspace_bytes,
        )

    def compile(self, model: ModelSpec) -> EngineEntry:
        """Return the cached engine of ``model`` for this host, building it on a miss."""
        key = self.host_key(model)
        cached = self._cache.lookup(key)
        if cached is not None:
            self._record("engine cache hit", runtime=self.name, path=str(cached), key=key.to_dict())
            return EngineEntry(self.name, model, cached, key, cache_hit=True, build_seconds=0.0)
        started = time.perf_counter()
        payload = self._build(model)
        path = self._cache.store(key, payload)
        seconds = time.perf_counter() - started
        self._record("engine built", runtime=self.name, path=str(path), key=key.to_dict(), seconds=seconds)
        return EngineEntry(self.name, model, path, key, cache_hit=False, build_seconds=seconds)

    def _build(self, model: ModelSpec) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(model.onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise InferenceError(self.name, f"ONNX parser rejected {model.onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.config.workspace_bytes)
        if self.config.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        self._add_profile(builder, network, config, model)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise InferenceError(self.name, f"engine build failed for {model.onnx_path}")
        return bytes(serialized)

    def _add_profile(self, builder: Any, network: Any, config: Any, model: ModelSpec) -> None:
        """Give dynamic inputs one optimization profile fixed at the model's declared shapes."""
        shapes = dict(zip(model.input_names, model.input_shapes, strict=False))
        profile = None
        for index in range(network.num_inputs):
            tensor = network.get_input(index)
            if all(dim >= 0 for dim in tensor.shape):
                continue
            shape = shapes.get(tensor.name)
            if shape is None:
                raise InferenceError(self.name, f"input {tensor.name} is dynamic and has no shape")
            profile = profile or builder.create_optimization_profile()
            profile.set_shape(tensor.name, shape, shape, shape)
        if profile is not None:
            config.add_optimization_profile(profile)

    def deserialize(self, entry: EngineEntry) -> EngineHandle:
        """Deserialize an engine after checking its key against this host.

        A foreign engine is refused (:class:`EngineCacheMismatch`); an engine of
        this host that TensorRT cannot deserialize is served through ONNX Runtime.
        """
        try:
            payload = self._cache.load(entry.path, self.host_key(entry.model))
        except EngineCacheMismatch as exc:
            self._record(
                "engine refused",
                runtime=self.name,
                path=str(entry.path),
                differences={k: [str(a), str(b)] for k, (a, b) in exc.differences.items()},
            )
            raise
        runtime = self._trt.Runtime(self._logger)
        try:
            engine = runtime.deserialize_cuda_engine(payload)
        except Exception as exc:  # TensorRT raises its own pybind11 types
            engine, failure = None, f"{exc}"
        else:
            failure = "it returned None"
        if engine is None:
            reason = f"deserialize_cuda_engine failed for {entry.path} ({failure})"
            self._record("inference error", runtime=self.name, stage="deserialize", error=reason)
            return self._ort_fallback.serve(entry, reason)
        context = engine.create_execution_context()
        if context is None:
            raise InferenceError(self.name, "create_execution_context failed")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        outputs = [n for n in names if engine.get_tensor_mode(n) == self._trt.TensorIOMode.OUTPUT]
        stream = self._torch.cuda.Stream(device=self._device)
        return EngineHandle(
            runtime=self.name,
            entry=entry,
            native=context,
            extra={"engine": engine, "runtime": runtime, "stream": stream, "outputs": outputs},
        )

    def _torch_dtype(self, trt_dtype: Any) -> Any:
        trt, torch = self._trt, self._torch
        table = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.int32: torch.int32,
            trt.int8: torch.int8,
            trt.bool: torch.bool,
        }
        for trt_name, torch_name in (("int64", "int64"), ("bf16", "bfloat16")):
            if hasattr(trt, trt_name):
                table[getattr(trt, trt_name)] = getattr(torch, torch_name)
        if trt_dtype not in table:
            raise InferenceError(self.name, f"unsupported tensor dtype {trt_dtype}")
        return table[trt_dtype]

    def infer(self, handle: EngineHandle, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Bind torch CUDA tensors by name and run ``execute_async_v3`` on the handle's stream."""
        if self._ort_fallback.owns(handle):
            return self._ort_fallback.infer(handle, inputs)
        if handle.released or handle.native is None:
            raise InferenceError(self.name, "infer on a released handle")
        model = handle.entry.model
        arrays = check_inputs(self.name, model, inputs)
        torch, context = self._torch, handle.native
        engine, stream = handle.extra["engine"], handle.extra["stream"]
        self._notice.on_infer(self.label, model.name)
        keep: list[Any] = []  # buffers must outlive the asynchronous execution
        for name in model.input_names:
            dtype = self._torch_dtype(engine.get_tensor_dtype(name))
            tensor = torch.from_numpy(arrays[name]).to(self._device).to(dtype).contiguous()
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise InferenceError(self.name, f"input {name}: shape {tuple(tensor.shape)} refused")
            context.set_tensor_address(name, tensor.data_ptr())
            keep.append(tensor)
        results: dict[str, Any] = {}
        for name in handle.extra["outputs"]:
            shape = tuple(context.get_tensor_shape(name))
            dtype = self._torch_dtype(engine.get_tensor_dtype(name))
            out = torch.empty(shape, dtype=dtype, device=self._device)
            context.set_tensor_address(name, out.data_ptr())
            results[name] = out
        # The inputs were copied on torch's current stream; order the engine after them.
        stream.wait_stream(torch.cuda.current_stream(self._device))
        if not context.execute_async_v3(stream.cuda_stream):
            raise InferenceError(self.name, "execute_async_v3 returned False")
        stream.synchronize()
        del keep
        return {name: out.float().cpu().numpy() for name, out in results.items()}

    def release(self, handle: EngineHandle) -> None:
        """Destroy the execution context and engine; idempotent; a foreign handle is left alone."""
        if self._ort_fallback.owns(handle):
            self._ort_fallback.release(handle)
            return
        if handle.runtime != self.name or handle.released:
            return
        handle.native = None
        handle.extra.clear()
        handle.released = True

    def thermal_state(self) -> ThermalState:
        """The host's thermal state (thermal zones and NVML)."""
        return read_thermal_state()

    def _record(self, kind: str, **data: Any) -> None:
        if self._recorder is not None:
            self._recorder.write(kind, **data)
