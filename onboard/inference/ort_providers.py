"""ONNX Runtime execution providers: which to hand to ORT, which really load, and why one did not.

``onnxruntime.get_available_providers()`` lists what the build was compiled
with, not what can load here: onnxruntime-gpu lists the TensorRT EP on a host
without ``libnvinfer``, and a session asked for it quietly runs on the next
provider.  Worse, ORT's Python layer answers a TensorRT EP that fails to load
by retrying the session with the CPU EP named explicitly, which a session that
disables CPU fallback refuses ("Conflicting session configuration").  So the
ONNX Runtime strategy trusts neither the list nor that retry:

* :func:`session_providers` leaves the CPU EP out when CPU fallback is
  disallowed (ORT refuses a session that lists the CPU EP and also disables
  fallback to it);
* :func:`unloadable_providers` loads the TensorRT EP's shared library the way
  ORT does, so an EP that cannot load is not handed to ORT at all, and its
  reason is the loader's own (``libnvinfer.so.10: cannot open shared object
  file ...``).  Only the TensorRT EP is tried ahead: it is the one ORT's Python
  layer retries on; the CUDA EP's libraries may be found by ORT's own preloading
  at session time, and a CUDA EP that does not load is seen in the session;
* :func:`refused_providers` compares what was asked with what the session
  really uses (``get_providers()``), which also catches an EP whose library
  loads but which ORT declines;
* :func:`loadable_providers` probes each listed GPU EP (its library, then a
  one-node session): the "can it run here" question the suites skip on.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from onboard.inference.base import RuntimeConfig

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
#: The providers the ONNX Runtime strategy knows how to configure, in order of preference.
KNOWN_PROVIDERS = (TRT_EP, CUDA_EP, CPU_EP)
#: The GPU providers, whose listing says nothing about whether they load.
GPU_PROVIDERS = (TRT_EP, CUDA_EP)
#: The providers whose library is tried before a session is handed them (see the module docstring).
PRECHECKED_PROVIDERS = (TRT_EP,)

#: The shared library ORT loads for each provider (``lib<stem>.so``, ``<stem>.dll``).
_LIBRARY_STEMS = {
    TRT_EP: "onnxruntime_providers_tensorrt",
    CUDA_EP: "onnxruntime_providers_cuda",
}
_SHARED_STEM = "onnxruntime_providers_shared"


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


def session_providers(providers: Sequence[str], disallow_cpu_fallback: bool) -> tuple[str, ...]:
    """The providers to hand to ``InferenceSession``: without the CPU EP when the gate is on."""
    if disallow_cpu_fallback:
        return tuple(p for p in providers if p != CPU_EP)
    return tuple(providers)


def refused_providers(asked: Sequence[str], used: Sequence[str]) -> tuple[str, ...]:
    """The asked providers (the CPU EP aside, ORT always has it) that the session does not use."""
    in_use = set(used)
    return tuple(p for p in asked if p != CPU_EP and p not in in_use)


def provider_library(ort: Any, provider: str) -> Path | None:
    """The shared library of ``provider`` inside this onnxruntime, or ``None`` if it has none."""
    stem = _LIBRARY_STEMS.get(provider)
    if stem is None:
        return None
    capi = Path(ort.__file__).parent / "capi"
    for name in (f"lib{stem}.so", f"{stem}.dll", f"lib{stem}.dylib"):
        if (capi / name).is_file():
            return capi / name
    return capi / f"lib{stem}.so"


def library_load_error(library: Path) -> str | None:
    """The loader's words when ``library`` cannot be loaded, ``None`` when it loads.

    ORT loads ``onnxruntime_providers_shared`` with global symbols before any
    provider library; so does this, so a library that fails here fails for
    ORT's reason (a missing dependency), not for a symbol ORT would provide.
    """
    if not library.is_file():
        return f"{library.name} is not part of this onnxruntime build"
    for stem in _LIBRARY_STEMS.values():
        shared = library.with_name(library.name.replace(stem, _SHARED_STEM))
        if stem in library.name and shared.is_file():
            # A failure here shows again, with its reason, when the provider library loads.
            with contextlib.suppress(OSError):
                ctypes.CDLL(str(shared), mode=getattr(os, "RTLD_GLOBAL", 0))
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return str(exc)
    return None


def provider_load_error(ort: Any, provider: str) -> str | None:
    """The loader's words when ``provider``'s library cannot load; ``None`` when it loads (or has none)."""
    library = provider_library(ort, provider)
    return library_load_error(library) if library is not None else None


def unloadable_providers(ort: Any, providers: Sequence[str]) -> dict[str, str]:
    """The pre-checked providers among ``providers`` whose library cannot load here, with the reason."""
    found: dict[str, str] = {}
    for provider in providers:
        if provider in PRECHECKED_PROVIDERS:
            error = provider_load_error(ort, provider)
            if error is not None:
                found[provider] = error
    return found


def refusal_reason(
    ort: Any, provider: str, asked: Sequence[str], used: Sequence[str], load_error: str | None = None
) -> str:
    """Why ``provider`` is not in use: what was asked and used, and the loader's error if any."""
    error = load_error if load_error is not None else provider_load_error(ort, provider)
    uses = ", ".join(used) or "nothing (no session was created)"
    base = f"{provider} was asked ({', '.join(asked)}) but the session uses {uses}"
    return f"{base}: {error}" if error else f"{base}; its library loads, so ORT declined it"


@functools.cache
def _probe_model() -> bytes:
    """A one-node ONNX model (``y = x + x`` on float[1, 4]), serialized."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "provider_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def probe_provider(ort: Any, provider: str) -> bool:
    """Whether a session asked for ``provider`` (then the CPU EP) really registers it."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            _probe_model(), sess_options=options, providers=[provider, CPU_EP]
        )
    except Exception:  # ORT raises its own pybind11 types; a session that fails is no proof
        return False
    return provider in session.get_providers()


@functools.cache
def loadable_providers() -> tuple[str, ...]:
    """The known providers this onnxruntime lists *and* can load here, in ORT's order.

    Empty without onnxruntime.  Each listed GPU provider costs one tiny session
    (once per process), the TensorRT EP only if its library loads; the CPU EP is
    taken on trust.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return ()
    def loads(provider: str) -> bool:
        if provider == CPU_EP:
            return True
        if provider not in GPU_PROVIDERS:
            return False
        if provider in PRECHECKED_PROVIDERS and provider_load_error(ort, provider) is not None:
            return False
        return probe_provider(ort, provider)

    loadable = [p for p in ort.get_available_providers() if loads(p)]
    return tuple(loadable)
