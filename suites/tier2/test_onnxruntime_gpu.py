"""ONNX Runtime on a GPU: the CPU-fallback gate with the default chain, and a refused TensorRT EP.

onnxruntime-gpu lists the TensorRT EP wherever it was built with it; on a host
without TensorRT the session runs on the next provider.  These tests hold the
runtime to what the session really uses.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from onboard.errors import CpuFallbackRefused
from onboard.inference import RuntimeConfig
from onboard.inference.ort import CPU_EP, CUDA_EP, TRT_EP, OnnxRuntimeRuntime
from onboard.model import ModelSpec, make_input, reference_forward
from onboard.recorder import FlightRecorder
from suites._support import attach, ort_gpu_providers, ort_listed_gpu_providers

pytestmark = pytest.mark.tier2

#: The CUDA EP runs the FP32 model in FP32 (TF32 convolutions at worst); the TensorRT EP in FP16.
CUDA_ATOL = CUDA_RTOL = 1e-3
FP16_ATOL = FP16_RTOL = 1e-2


def _trt_listed_but_not_loadable() -> bool:
    return TRT_EP in ort_listed_gpu_providers() and TRT_EP not in ort_gpu_providers()


def test_the_gate_on_with_the_default_chain_runs_on_a_gpu_provider(
    onnx_model: ModelSpec, tmp_path: Path, recorder: FlightRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    loadable = ort_gpu_providers()
    if not loadable:
        pytest.skip(f"no onnxruntime GPU provider loads here (listed: {sorted(ort_listed_gpu_providers())})")
    caplog.set_level(logging.INFO, logger="onboard.inference.ort")
    runtime = OnnxRuntimeRuntime(
        RuntimeConfig(cache_dir=tmp_path / "engines", disallow_cpu_fallback=True), recorder=recorder
    )
    assert CPU_EP not in runtime.session_providers
    expected = next(p for p in (TRT_EP, CUDA_EP) if p in loadable)
    image = make_input()
    for _ in range(2):  # two sessions: the refusal is noted once, not per session
        handle = runtime.deserialize(runtime.compile(onnx_model))
        got = runtime.infer(handle, {"image": image})["embedding"]
        runtime.release(handle)
    assert runtime.active_provider == expected
    assert got.dtype == np.float32
    tolerance = FP16_ATOL if expected == TRT_EP else CUDA_ATOL
    np.testing.assert_allclose(got, reference_forward(image), atol=tolerance, rtol=tolerance)
    assert not recorder.of_kind("cpu fallback")
    refusals = recorder.of_kind("tensorrt ep refused")
    attach(
        "gate on, default chain",
        {
            "label": runtime.label,
            "asked": list(runtime.session_providers),
            "handed": list(runtime.handed_providers()),
            "active": list(runtime.active_providers),
            "tensorrt ep refused": [dict(r.data) for r in refusals],
            "max_abs_difference": float(np.max(np.abs(got - reference_forward(image)))),
        },
    )
    in_use = [r.getMessage() for r in caplog.records if f"runs on {expected}" in r.getMessage()]
    assert in_use, "no INFO log names the provider in use"
    if _trt_listed_but_not_loadable():
        (refused,) = refusals
        assert refused.data["model_name"] == onnx_model.name
        assert refused.data["requested_providers"] == list(runtime.session_providers)
        assert TRT_EP not in refused.data["active_providers"]
        assert expected in refused.data["reason"]
    else:
        assert refusals == []


def test_the_gate_on_with_only_an_unloadable_tensorrt_ep_is_a_refusal(
    onnx_model: ModelSpec, tmp_path: Path, recorder: FlightRecorder
) -> None:
    if not _trt_listed_but_not_loadable():
        pytest.skip("needs an onnxruntime that lists the TensorRT EP on a host where it does not load")
    runtime = OnnxRuntimeRuntime(
        RuntimeConfig(cache_dir=tmp_path / "engines", providers=(TRT_EP,), disallow_cpu_fallback=True),
        recorder=recorder,
    )
    with pytest.raises(CpuFallbackRefused, match="disallow_cpu_fallback is set"):
        runtime.compile(onnx_model)
    (refused,) = recorder.of_kind("tensorrt ep refused")
    assert refused.data["active_providers"] == []
    (fallback,) = recorder.of_kind("cpu fallback")
    assert fallback.data["refused"] is True
    assert fallback.data["model_name"] == onnx_model.name
    attach("tensorrt ep refused", dict(refused.data))


def test_the_cuda_ep_alone_with_the_gate_on(
    onnx_model: ModelSpec, tmp_path: Path, recorder: FlightRecorder
) -> None:
    if CUDA_EP not in ort_gpu_providers():
        listed = sorted(ort_listed_gpu_providers())
        pytest.skip(f"the onnxruntime CUDA EP does not load here (listed: {listed})")
    config = RuntimeConfig(
        cache_dir=tmp_path / "engines", providers=(CUDA_EP, CPU_EP), disallow_cpu_fallback=True
    )
    runtime = OnnxRuntimeRuntime(config, recorder=recorder)
    assert runtime.session_providers == (CUDA_EP,)
    handle = runtime.deserialize(runtime.compile(onnx_model))
    assert handle.extra["warmup_seconds"] > 0
    image = make_input(seed=5)
    got = runtime.infer(handle, {"image": image})["embedding"]
    runtime.release(handle)
    assert runtime.active_provider == CUDA_EP
    np.testing.assert_allclose(got, reference_forward(image), atol=CUDA_ATOL, rtol=CUDA_RTOL)
    assert not recorder.of_kind("cpu fallback")
    assert not recorder.of_kind("tensorrt ep refused")
