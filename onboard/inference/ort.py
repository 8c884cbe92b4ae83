"""The ONNX Runtime strategy: TensorRT EP -> CUDA EP -> CPU, only those listed.

* TensorRT EP options put its engine cache and timing cache in a folder whose
  path names the ORT and TensorRT versions, enable FP16, and size the workspace
  as a fraction of the configured GPU memory budget.
* With ``disallow_cpu_fallback`` the CPU EP is not handed to ORT at all and
  ORT's ``session.disable_cpu_ep_fallback`` is set; the runtime refuses before
  any CPU work (at construction when only CPU is listed, when the session came
  up on the CPU alone, and when no GPU provider it would hand can load here).
* A TensorRT EP whose library cannot load (no ``libnvinfer``) is not handed
  to ORT: ORT's Python layer would retry the session with the CPU EP named,
  which the gate forbids.  The providers that run are read back
  from the session (``get_providers()``); each asked provider the session does
  not use is logged once at INFO with the reason (the loader's words where it
  has them), and a refused TensorRT EP writes one ``tensorrt ep refused``
  record.  The provider really in use is logged at INFO.
* When only the CPU provider is active, a one-shot ``cpu fallback`` record is
  written (with the model and the reason).
* ``deserialize`` warms the session up with one run on zeros of the model's
  input types.  An entry whose path is a TensorRT ``.engine`` passes the engine
  gate (its key sidecar against the host key) before any session work, then is
  staged into the EP's cache folder; an ``.onnx`` entry has nothing to gate.
* Inputs are fed in the model's input types and outputs come back in the
  model's output types.
* A runtime built as a fallback writes a one-shot ``fallback activated``
  record and calls the alert callback on its first ``infer``.
* Errors from ORT are rewrapped as :class:`InferenceError` with the cause kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onboard.diag.gpu import host_gpu_identity
from onboard.diag.thermal import ThermalState, read_thermal_state
from onboard.errors import CpuFallbackRefused, EngineCacheMismatch, InferenceError, RuntimeUnavailable
from onboard.inference.base import (
    AlertCallback,
    EngineEntry,
    EngineHandle,
    FallbackNotice,
    RuntimeConfig,
    check_inputs,
)
from onboard.inference.cache import EngineCache, EngineCacheKey
from onboard.inference.ep_cache import stage_engine
from onboard.inference.ort_providers import (
    CPU_EP,
    CUDA_EP,
    KNOWN_PROVIDERS,
    TRT_EP,
    build_provider_options,
    loadable_providers,
    refusal_reason,
    refused_providers,
    session_providers,
    tensorrt_version,
    unloadable_providers,
)
from onboard.model import ModelSpec
from onboard.recorder import FlightRecorder

__all__ = [
    "CPU_EP",
    "CUDA_EP",
    "KNOWN_PROVIDERS",
    "TRT_EP",
    "OnnxRuntimeRuntime",
    "build_provider_options",
    "import_onnxruntime",
    "tensorrt_version",
]

logger = logging.getLogger(__name__)

#: ORT's tensor type names -> numpy dtypes (the types the warm-up and the feeds use).
ORT_NUMPY_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


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


def session_input_dtypes(session: Any) -> dict[str, np.dtype[Any]]:
    """Each session input's numpy dtype, from the types the model declares."""
    dtypes: dict[str, np.dtype[Any]] = {}
    for arg in session.get_inputs():
        if arg.type not in ORT_NUMPY_TYPES:
            raise InferenceError("onnxruntime", f"input {arg.name} has unsupported type {arg.type}")
        dtypes[arg.name] = np.dtype(ORT_NUMPY_TYPES[arg.type])
    return dtypes


def warmup_feeds(session: Any, model: ModelSpec) -> dict[str, np.ndarray]:
    """Zeros of each input's type and shape: the model's declared shape, else 1 per free dim."""
    declared = dict(zip(model.input_names, model.input_shapes, strict=False))
    dtypes = session_input_dtypes(session)
    feeds: dict[str, np.ndarray] = {}
    for arg in session.get_inputs():
        shape = declared.get(arg.name) or tuple(d if isinstance(d, int) and d >= 0 else 1 for d in arg.shape)
        feeds[arg.name] = np.zeros(shape, dtype=dtypes[arg.name])
    return feeds


class OnnxRuntimeRuntime:
    """Runs ONNX models with ONNX Runtime on the best execution provider that loads."""

    name = "onnxruntime"

    def __init__(
        self,
        config: RuntimeConfig | None = None,
        recorder: FlightRecorder | None = None,
        alert: AlertCallback | None = None,
        fallback_from: str | None = None,
        fallback_reason: str | None = None,
    ) -> None:
        self.config = config or RuntimeConfig()
        self._ort = import_onnxruntime()
        self._recorder = recorder
        self._notice = FallbackNotice(self.name, fallback_from, recorder, alert, fallback_reason)
        unknown = [p for p in self.config.providers if p not in KNOWN_PROVIDERS]
        if unknown:
            raise ValueError(f"unknown execution provider(s) {unknown}; known: {KNOWN_PROVIDERS}")
        listed = set(self._ort.get_available_providers())
        self.requested_providers: tuple[str, ...] = tuple(self.config.providers)
        #: The requested providers this onnxruntime lists (whether they load is the session's word).
        self.providers: tuple[str, ...] = tuple(p for p in self.requested_providers if p in listed)
        #: What is handed to ``InferenceSession``: no CPU EP when CPU fallback is disallowed.
        self.session_providers = session_providers(self.providers, self.config.disallow_cpu_fallback)
        self.active_providers: tuple[str, ...] = ()
        self._cpu_fallback_recorded = False
        self._refusals_noted: set[str] = set()
        self._logged_provider: str | None = None
        self._unloadable: dict[str, str] | None = None
        if not self.providers:
            raise RuntimeUnavailable(
                self.name,
                f"none of the providers {list(self.requested_providers)} is available "
                f"(available: {sorted(listed)})",
            )
        if not self.session_providers:
            reason = (
                f"only {CPU_EP} is available (requested {list(self.requested_providers)}) "
                "and disallow_cpu_fallback is set"
            )
            self._cpu_fallback(None, active=[CPU_EP], refused=True, reason=reason)
            raise CpuFallbackRefused(self.name, reason)

    # -- identity ---------------------------------------------------------------------------

    @property
    def version(self) -> str:
        """The ONNX Runtime version."""
        return str(self._ort.__version__)

    @property
    def active_provider(self) -> str:
        """The provider that runs the model (read from the last session), or the planned one."""
        return (self.active_providers or self.session_providers)[0]

    @property
    def label(self) -> str:
        """``onnxruntime <version> <ActiveProvider>``."""
        return f"onnxruntime {self.version} {self.active_provider}"

    def trt_cache_dir(self) -> Path:
        """The TensorRT EP's engine and timing cache folder, named by the ORT and TRT versions."""
        return self.config.cache_dir / f"ort-{self.version}-trt-{tensorrt_version()}"

    def handed_providers(self) -> tuple[str, ...]:
        """What a session is handed: the session providers less a TensorRT EP that cannot load here.

        Its library is tried once per runtime, as ORT would load it.
        """
        if self._unloadable is None:
            self._unloadable = unloadable_providers(self._ort, self.session_providers)
        return tuple(p for p in self.session_providers if p not in self._unloadable)

    def provider_options(self) -> list[tuple[str, dict[str, Any]]]:
        """Each provider handed to ORT with its options, in order of preference."""
        return build_provider_options(self.handed_providers(), self.config, self.trt_cache_dir())

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

    # -- sessions ---------------------------------------------------------------------------

    def _session(self, model: ModelSpec) -> Any:
        ort = self._ort
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.config.disallow_cpu_fallback:
            # ORT itself then refuses a graph that would put nodes on the CPU EP.
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        if not self.handed_providers():  # only with the gate on: the CPU EP is handed otherwise
            self.active_providers = ()
            self._note_refusals(model, self.session_providers, ())
            reason = f"none of the providers {list(self.session_providers)} can load here"
            self._cpu_fallback(model.name, [], refused=True, reason=reason)
            raise CpuFallbackRefused(self.name, f"{reason} and disallow_cpu_fallback is set")
        if TRT_EP in self.handed_providers():
            self.trt_cache_dir().mkdir(parents=True, exist_ok=True)
        pairs = self.provider_options()
        try:
            session = ort.InferenceSession(
                str(model.onnx_path),
                sess_options=options,
                providers=[p for p, _ in pairs],
                provider_options=[o for _, o in pairs],
            )
        except Exception as exc:  # ORT raises its own pybind11 exception types
            self._record_error("session", exc)
            if self.config.disallow_cpu_fallback:
                self._refuse_when_no_gpu_provider_loads(model, exc)
            raise InferenceError(self.name, f"cannot create a session for {model.onnx_path}: {exc}") from exc
        self.active_providers = tuple(session.get_providers())
        self._note_providers(model)
        if self.active_providers[:1] == (CPU_EP,):
            refused = self.config.disallow_cpu_fallback
            reason = f"the session came up on {CPU_EP} only (handed {list(self.handed_providers())})"
            self._cpu_fallback(model.name, list(self.active_providers), refused, reason)
            if refused:
                del session
                raise CpuFallbackRefused(self.name, f"{reason} and disallow_cpu_fallback is set")
        return session

    def _note_providers(self, model: ModelSpec) -> None:
        """Note the providers the session refused; log the provider in use when it changes."""
        active = self.active_providers
        self._note_refusals(model, refused_providers(self.session_providers, active), active)
        if active[:1] != (self._logged_provider,):
            self._logged_provider = active[0] if active else None
            handed = list(self.handed_providers())
            logger.info("%s: %s runs on %s (handed %s)", self.name, model.name, active[0], handed)

    def _note_refusals(self, model: ModelSpec, refused: tuple[str, ...], active: tuple[str, ...]) -> None:
        """Log each refused provider once, with ORT's reason; a refused TensorRT EP is also recorded."""
        asked = self.session_providers
        for provider in refused:
            if provider in self._refusals_noted:
                continue
            self._refusals_noted.add(provider)
            load_error = (self._unloadable or {}).get(provider)
            reason = refusal_reason(self._ort, provider, asked, active, load_error)
            logger.info("%s: %s", self.name, reason)
            if provider == TRT_EP:
                self._record(
                    "tensorrt ep refused",
                    runtime=self.name,
                    model_name=model.name,
                    requested_providers=list(asked),
                    active_providers=list(active),
                    reason=reason,
                )

    def _refuse_when_no_gpu_provider_loads(self, model: ModelSpec, exc: BaseException) -> None:
        """With the gate on, a session that failed because no handed provider loads is a refusal."""
        loadable = set(loadable_providers())
        if any(p in loadable for p in self.handed_providers()):
            return
        self.active_providers = ()
        self._note_refusals(model, self.session_providers, ())
        reason = (
            f"none of the handed providers {list(self.handed_providers())} loads here "
            f"(loadable: {sorted(loadable)})"
        )
        self._cpu_fallback(model.name, [], refused=True, reason=reason)
        raise CpuFallbackRefused(self.name, f"{reason} and disallow_cpu_fallback is set") from exc

    # -- lifecycle --------------------------------------------------------------------------

    def _engine_files(self) -> list[Path]:
        folder = self.trt_cache_dir()
        return sorted(folder.glob("*.engine")) if folder.is_dir() else []

    def compile(self, model: ModelSpec) -> EngineEntry:
        """Create a session once, which builds the TensorRT EP engine cache when that EP runs."""
        key = self.host_key(model)
        cache_hit = TRT_EP in self.handed_providers() and bool(self._engine_files())
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

    def _pass_engine_gate(self, entry: EngineEntry) -> None:
        """Refuse a ``.engine`` entry built for another host, before any session work."""
        if not entry.path.is_file():
            differences: dict[str, tuple[object, object]] = {"engine": ("missing", "a file")}
        else:
            try:
                differences = EngineCache.read_key(entry.path).differences(self.host_key(entry.model))
            except EngineCacheMismatch as exc:  # no readable key sidecar
                differences = exc.differences
        if differences:
            self._record(
                "engine refused",
                runtime=self.name,
                path=str(entry.path),
                differences={k: [str(a), str(b)] for k, (a, b) in differences.items()},
            )
            raise EngineCacheMismatch(str(entry.path), differences)

    def deserialize(self, entry: EngineEntry) -> EngineHandle:
        """Create the session and warm it up (the TensorRT EP loads its cached engine here).

        A ``.engine`` entry is gated, then staged into the TensorRT EP's cache
        folder when the runtime asks for that EP.
        """
        if entry.path.suffix == ".engine":
            self._pass_engine_gate(entry)
            if TRT_EP in self.session_providers:
                staged = stage_engine(entry.path, self.trt_cache_dir())
                self._record(
                    "engine staged",
                    runtime=self.name,
                    source=str(staged.source),
                    target=str(staged.target),
                    how=staged.how,
                )
        session = self._session(entry.model)
        started = time.perf_counter()
        try:
            session.run(None, warmup_feeds(session, entry.model))
        except Exception as exc:  # ORT raises its own pybind11 exception types
            self._record_error("warmup", exc)
            raise InferenceError(self.name, f"warm-up run failed for {entry.model.name}: {exc}") from exc
        return EngineHandle(
            runtime=self.name,
            entry=entry,
            native=session,
            extra={
                "providers": list(self.active_providers),
                "input_dtypes": session_input_dtypes(session),
                "warmup_seconds": time.perf_counter() - started,
            },
        )

    def infer(self, handle: EngineHandle, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session; outputs keep the model's types; ORT errors become :class:`InferenceError`."""
        if handle.released or handle.native is None:
            raise InferenceError(self.name, "infer on a released handle")
        model = handle.entry.model
        feeds = check_inputs(self.name, model, inputs, handle.extra.get("input_dtypes"))
        self._notice.on_infer(self.label, model.name)
        try:
            outputs = handle.native.run(list(model.output_names), feeds)
        except Exception as exc:  # ORT raises its own pybind11 exception types
            self._record_error("infer", exc)
            raise InferenceError(self.name, f"inference failed: {exc}") from exc
        return {name: np.asarray(value) for name, value in zip(model.output_names, outputs, strict=True)}

    def release(self, handle: EngineHandle) -> None:
        """Drop the session (ORT frees it with the last reference); idempotent.

        A handle of another runtime is not this runtime's to release: it is left as it is.
        """
        if handle.runtime != self.name or handle.released:
            return
        handle.native = None
        handle.released = True

    def thermal_state(self) -> ThermalState:
        """The host's thermal state (thermal zones and NVML)."""
        return read_thermal_state()

    # -- records ----------------------------------------------------------------------------

    def _cpu_fallback(self, model_name: str | None, active: list[str], refused: bool, reason: str) -> None:
        if self._cpu_fallback_recorded:
            return
        self._cpu_fallback_recorded = True
        self._record(
            "cpu fallback",
            runtime=self.name,
            requested_providers=list(self.requested_providers),
            active_providers=active,
            refused=refused,
            model_name=model_name,
            reason=reason,
        )

    def _record_error(self, stage: str, exc: BaseException) -> None:
        self._record("inference error", runtime=self.name, stage=stage, error=repr(exc)[:500])

    def _record(self, kind: str, **data: Any) -> None:
        if self._recorder is not None:
            self._recorder.write(kind, **data)
