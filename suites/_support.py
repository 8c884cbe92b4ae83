"""Helpers shared by the suites: skipping with exact reasons, percentiles, Allure attachments."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from onboard.errors import RuntimeUnavailable
from onboard.inference import InferenceRuntime, RuntimeConfig, create_runtime
from onboard.inference.ort_providers import (
    GPU_PROVIDERS,
    library_load_error,
    loadable_providers,
    provider_library,
)
from onboard.recorder import FlightRecorder

try:  # allure-pytest is optional: the suites also run where it is absent
    import allure
except ImportError:  # pragma: no cover - depends on the host
    allure = None


def runtime_or_skip(
    name: str,
    config: RuntimeConfig,
    recorder: FlightRecorder | None = None,
    **kwargs: Any,
) -> InferenceRuntime:
    """Build a runtime, or skip the test with the runtime's own reason (e.g. not installed)."""
    try:
        return create_runtime(name, config=config, recorder=recorder, **kwargs)
    except RuntimeUnavailable as exc:
        pytest.skip(str(exc))


def ort_listed_gpu_providers() -> set[str]:
    """The GPU execution providers the installed onnxruntime *lists* (whether or not they load)."""
    try:
        import onnxruntime
    except ImportError:
        return set()
    return set(onnxruntime.get_available_providers()) & set(GPU_PROVIDERS)


def ort_gpu_providers() -> set[str]:
    """The GPU execution providers that really load here (a tiny session each, once per process).

    onnxruntime-gpu lists the TensorRT EP on a host without TensorRT; a skip
    condition asks this, not the list.
    """
    return set(loadable_providers()) & set(GPU_PROVIDERS)


def ort_unloadable_reason(provider: str) -> str:
    """Why a listed provider does not load here (the loader's words), for skip reasons."""
    import onnxruntime

    library = provider_library(onnxruntime, provider)
    error = library_load_error(library) if library is not None else None
    return f"{provider} is listed by onnxruntime {onnxruntime.__version__} but does not load here" + (
        f": {error}" if error else ""
    )


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50 and p95 in milliseconds of samples in seconds."""
    values = np.asarray(samples_s, dtype=np.float64) * 1000.0
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p95_ms": float(np.percentile(values, 95)),
        "min_ms": float(values.min()),
        "max_ms": float(values.max()),
        "samples": len(values),
    }


def attach(name: str, payload: dict[str, Any] | str) -> None:
    """Attach JSON or text to the Allure result when allure is importable; always print it."""
    body = payload if isinstance(payload, str) else json.dumps(payload, indent=2, sort_keys=True)
    print(f"--- {name} ---\n{body}")
    if allure is None:
        return
    kind = allure.attachment_type.TEXT if isinstance(payload, str) else allure.attachment_type.JSON
    allure.attach(body, name=name, attachment_type=kind)
