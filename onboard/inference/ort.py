"""The ONNX Runtime strategy: TensorRT EP -> CUDA EP -> CPU, only those available.

* TensorRT EP options put its engine cache and timing cache in a folder whose
  path names the ORT and TensorRT versions, enable FP16, and size the workspace
  as a fraction of the configured GPU memory budget.
* The provider that actually runs is read back from the session.
* When only the CPU provider is active, a one-shot ``cpu fallback`` record is
  written; with ``disallow_cpu_fallback`` the runtime refuses before any CPU
  work (at construction when only CPU is available, and before the first
  inference when the session came up on CPU alone).
* A runtime built as a fallback writes a one-shot ``fallback activated``
  record and calls the alert callback on its first ``infer``.
* Errors from ORT are rewrapped as :class:`InferenceError` with the cause kept.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from onboard.diag.gpu import host_gpu_identity
from onboard.diag.thermal import ThermalState, read_thermal_state
from onboard.errors import CpuFallbackRefused, InferenceError, RuntimeUnavailable
from onboard.inference.base import (
    AlertCallback,
    EngineEntry,
    EngineHandle,
    FallbackNotice,
    RuntimeConfig,
    check_inputs,
)
from onboard.inference.cache import EngineCacheKey
from onboard.model import ModelSpec
from onboard.recorder import FlightRecorder

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
#: The providers this strategy knows how to configure, in order of preference.
KNOWN_PROVIDERS = (TRT_EP, CUDA_EP, CPU_EP)


def import_onnxruntime() -> Any:
    """Import ``onnxruntime`` or raise :class:`RuntimeUnavailable` saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeUnavailable(
            "onnxruntime",
            "onnxruntime is not installed (pip install onnxruntime; onnxruntime-gpu on CUDA hosts)",
        ) from exc
    return onnxruntime


def tensorrt_version() -> str:
    """The installed TensorRT version (for cache folder names), or ``"none"``."""
    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-libs"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        import tensorrt
    except ImportError:
        return "none"
    return str(tensorrt.__version__)


def build_provider_options(
    providers: tuple[str, ...], config: RuntimeConfig, trt_cache_dir: Path
) -> list[tuple[str, dict[str, Any]]]:
    """The ``(provider, options)`` pairs for an ``InferenceSession``, in the given order.

    The TensorRT EP keeps its engine and timing caches in ``trt_cache_dir``,
    builds FP16 engines when the precision is fp16, and gets a workspace of
    ``config.workspace_fraction`` of the GPU memory budget.
    """
    options: list[tuple[str, dict[str, Any]]] = []
    for provider in providers:
        if provider == TRT_EP:
            cache = str(trt_cache_dir)
            options.append(
                (
                    provider,
                    {
                        "device_id": config.device_index,
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": cache,
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": cache,
                        "trt_fp16_enable": config.precision == "fp16",
                        "trt_max_workspace_size": config.workspace_bytes,
                    },
                )
            )
        elif provider == CUDA_EP:
            options.append((provider, {"device_id": config.device_index}))
        else:
            options.append((provider, {}))
    return options


class OnnxRuntimeRuntime:
    """Runs ONNX models with ONNX Runtime on the best available execution provider."""

    name = "onnxruntime"

    def __init__(
        self,
        config: RuntimeConfig | None = None,
        recorder: FlightRecorder | None = None,
        alert: AlertCallback | None = None,
        fallback_from: str | None = None,
    ) -> None:
        self.config = config or RuntimeConfig()
        self._ort = import_onnxruntime()
        self._recorder = recorder
        self._notice = FallbackNotice(self.name, fallback_from, recorder, alert)
        unknown = [p for p in self.config.providers if p not in KNOWN_PROVIDERS]
        if unknown:
            raise ValueError(f"unknown execution provider(s) {unknown}; known: {KNOWN_PROVIDERS}")
        available = set(self._ort.get_available_providers())
        self.requested_providers: tuple[str, ...] = tuple(self.config.providers)
        self.providers: tuple[str, ...] = tuple(p for p in self.requested_providers if p in available)
        self.active_providers: tuple[str, ...] = ()
        self._cpu_fallback_recorded = False
        if not self.providers:
            raise RuntimeUnavailable(
                self.name,
                f"none of the providers {list(self.requested_providers)} is available "
                f"(available: {sorted(available)})",
            )
        if self.providers == (CPU_EP,) and self.config.disallow_cpu_fallback:
            self._cpu_fallback(active=[CPU_EP], refused=True)
            raise CpuFallbackRefused(
                self.name,
                f"only {CPU_EP} is available (requested {list(self.requested_providers)}) "
                "and disallow_cpu_fallback is set",
            )

    # -- identity ---------------------------------------------------------------------------

    @property
    def version(self) -> str:
        """The ONNX Runtime version."""
        return str(self._ort.__version__)

    @property
    def active_provider(self) -> str:
        """The provider that runs the model (read from the last session), or the planned one."""
        return (self.active_providers or self.providers)[0]

    @property
    def label(self) -> str:
        """``onnxruntime <version> <ActiveProvider>``."""
        return f"onnxruntime {self.version} {self.active_provider}"

    def trt_cache_dir(self) -> Path:
        """The TensorRT EP's engine and timing cache folder, named by the ORT and TRT versions."""
        return self.config.cache_dir / f"ort-{self.version}-trt-{tensorrt_version()}"

    def provider_options(self) -> list[tuple[str, dict[str, Any]]]:
        """Each available provider with its options, in order of preference."""
        return build_provider_options(self.providers, self.config, self.trt_cache_dir())

    def host_key(self, model: ModelSpec) -> EngineCacheKey:
        """The key of ``model``'s compiled form on this host with these providers."""
        gpu_name, capability = host_gpu_identity(self.config.device_index)
        return EngineCacheKey(
            model_sha256=model.sha256(),
            runtime_version=f"ort-{self.version}/trt-{tensorrt_version()}/{self.providers[0]}",
            gpu_name=gpu_name,
            compute_capability=capability,
            precision=self.config.precision if self.providers[0] != CPU_EP else "fp32",
            workspace_bytes=self.config.workspace_bytes if TRT_EP in self.providers else 0,
        )

    # -- lifecycle --------------------------------------------------------------------------

    def _session(self, model: ModelSpec) -> Any:
        ort = self._ort
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.config.disallow_cpu_fallback:
            # ORT itself then refuses a graph that would put nodes on the CPU EP.
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        if TRT_EP in self.providers:
            self.trt_cache_dir().mkdir(parents=True, exist_ok=True)
        names = [p for p, _ in self.provider_options()]
        opts = [o for _, o in self.provider_options()]
        try:
            session = ort.InferenceSession(
                str(model.onnx_path), sess_options=options, providers=names, provider_options=opts
            )
        except Exception as exc:  # ORT raises its own pybind11 exception types
            self._record_error("session", exc)
            raise InferenceError(self.name, f"cannot create a session for {model.onnx_path}: {exc}") from exc
        self.active_providers = tuple(session.get_providers())
        if self.active_providers[:1] == (CPU_EP,):
            if self.config.disallow_cpu_fallback:
                self._cpu_fallback(active=list(self.active_providers), refused=True)
                del session
                raise CpuFallbackRefused(
                    self.name,
                    f"the session came up on {CPU_EP} only (requested {list(self.providers)}) "
                    "and disallow_cpu_fallback is set",
                )
            self._cpu_fallback(active=list(self.active_providers), refused=False)
        return session

    def _engine_files(self) -> list[Path]:
        folder = self.trt_cache_dir()
        return sorted(folder.glob("*.engine")) if folder.is_dir() else []

    def compile(self, model: ModelSpec) -> EngineEntry:
        """Create a session once, which builds the TensorRT EP engine cache when that EP runs."""
        key = self.host_key(model)
        cache_hit = TRT_EP in self.providers and bool(self._engine_files())
        started = time.perf_counter()
        session = self._session(model)
        seconds = time.perf_counter() - started
        del session
        cache_dir = self.trt_cache_dir() if TRT_EP in self.active_providers else None
        if cache_hit:
            self._record("engine cache hit", runtime=self.name, path=str(cache_dir), key=key.to_dict())
        else:
            self._record(
                "engine built",
                runtime=self.name,
                path=str(cache_dir or model.onnx_path),
                key=key.to_dict(),
                seconds=seconds,
            )
        return EngineEntry(self.name, model, model.onnx_path, key, cache_hit, seconds, cache_dir=cache_dir)

    def deserialize(self, entry: EngineEntry) -> EngineHandle:
        """Create the inference session (the TensorRT EP loads its cached engine here)."""
        session = self._session(entry.model)
        return EngineHandle(
            runtime=self.name,
            entry=entry,
            native=session,
            extra={"providers": list(self.active_providers)},
        )

    def infer(self, handle: EngineHandle, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session; ORT errors come back as :class:`InferenceError` with the cause."""
        if handle.released or handle.native is None:
            raise InferenceError(self.name, "infer on a released handle")
        model = handle.entry.model
        feeds = check_inputs(self.name, model, inputs)
        self._notice.on_infer(self.label)
        try:
            outputs = handle.native.run(list(model.output_names), feeds)
        except Exception as exc:  # ORT raises its own pybind11 exception types
            self._record_error("infer", exc)
            raise InferenceError(self.name, f"inference failed: {exc}") from exc
        return {
            name: np.asarray(value, dtype=np.float32)
            for name, value in zip(model.output_names, outputs, strict=True)
        }

    def release(self, handle: EngineHandle) -> None:
        """Drop the session (ORT frees it with the last reference); idempotent."""
        if handle.released:
            return
        handle.native = None
        handle.released = True

    def thermal_state(self) -> ThermalState:
        """The host's thermal state (thermal zones and NVML)."""
        return read_thermal_state()

    # -- records ----------------------------------------------------------------------------

    def _cpu_fallback(self, active: list[str], refused: bool) -> None:
        if self._cpu_fallback_recorded:
            return
        self._cpu_fallback_recorded = True
        self._record(
            "cpu fallback",
            runtime=self.name,
            requested_providers=list(self.requested_providers),
            active_providers=active,
            refused=refused,
        )

    def _record_error(self, stage: str, exc: BaseException) -> None:
        self._record("inference error", runtime=self.name, stage=stage, error=repr(exc)[:500])

    def _record(self, kind: str, **data: Any) -> None:
        if self._recorder is not None:
            self._recorder.write(kind, **data)
