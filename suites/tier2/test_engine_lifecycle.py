"""Engine build -> cache hit -> deserialize -> infer, and refusal of a foreign engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onboard.errors import EngineCacheMismatch
from onboard.inference import RuntimeConfig
from onboard.inference.ort import CPU_EP, TRT_EP
from onboard.model import ModelSpec, make_input, reference_forward
from onboard.recorder import FlightRecorder
from suites._support import (
    ort_gpu_providers,
    ort_listed_gpu_providers,
    ort_unloadable_reason,
    runtime_or_skip,
)

pytestmark = pytest.mark.tier2

FP16_ATOL = 1e-2
FP16_RTOL = 1e-2
#: Product budgets for creating a session: engine built from nothing, and found in the EP cache.
BUDGET_COLD_SESSION_S = 30.0
BUDGET_WARM_SESSION_S = 5.0


@pytest.mark.parametrize("name", ["tensorrt", "torch-fp16"])
def test_build_cache_hit_deserialize_infer_and_foreign_engine_refused(
    name: str, onnx_model: ModelSpec, config: RuntimeConfig, recorder: FlightRecorder
) -> None:
    runtime = runtime_or_skip(name, config, recorder)
    built = runtime.compile(onnx_model)
    assert not built.cache_hit and built.path.is_file()
    again = runtime.compile(onnx_model)
    assert again.cache_hit and again.path == built.path
    assert len(recorder.of_kind("engine built")) == 1
    assert len(recorder.of_kind("engine cache hit")) == 1
    handle = runtime.deserialize(again)
    image = make_input()
    got = runtime.infer(handle, {"image": image})["embedding"]
    np.testing.assert_allclose(got, reference_forward(image), atol=FP16_ATOL, rtol=FP16_RTOL)
    runtime.release(handle)
    runtime.release(handle)

    # The same file, now claiming another GPU: refused before deserializing.
    sidecar = built.path.with_suffix(".json")
    key = json.loads(sidecar.read_text())
    key.update(gpu_name="Orin (nvgpu)", compute_capability="8.7")
    sidecar.write_text(json.dumps(key))
    with pytest.raises(EngineCacheMismatch, match="gpu_name"):
        runtime.deserialize(built)
    (refused,) = recorder.of_kind("engine refused")
    assert set(refused.data["differences"]) == {"gpu_name", "compute_capability"}


def test_onnxruntime_tensorrt_ep_build_cache_hit_deserialize_infer(
    onnx_model: ModelSpec, config: RuntimeConfig, recorder: FlightRecorder
) -> None:
    if TRT_EP not in ort_listed_gpu_providers():
        pytest.skip(
            "onnxruntime TensorrtExecutionProvider is not available "
            "(needs onnxruntime-gpu with TensorRT installed)"
        )
    if TRT_EP not in ort_gpu_providers():
        pytest.skip(ort_unloadable_reason(TRT_EP))
    trt_config = RuntimeConfig(
        cache_dir=config.cache_dir, providers=(TRT_EP, CPU_EP), disallow_cpu_fallback=True
    )
    runtime = runtime_or_skip("onnxruntime", trt_config, recorder)
    cold = runtime.compile(onnx_model)
    assert runtime.active_providers[0] == TRT_EP
    assert CPU_EP not in runtime.session_providers  # the gate hands ORT no CPU EP
    cache_dir = runtime.trt_cache_dir()
    assert list(cache_dir.glob("*.engine")), f"no TensorRT EP engine written to {cache_dir}"
    assert not cold.cache_hit
    warm = runtime.compile(onnx_model)
    assert warm.cache_hit
    handle = runtime.deserialize(warm)
    image = make_input()
    got = runtime.infer(handle, {"image": image})["embedding"]
    np.testing.assert_allclose(got, reference_forward(image), atol=FP16_ATOL, rtol=FP16_RTOL)
    runtime.release(handle)
    assert not recorder.of_kind("tensorrt ep refused")
    # The session-creation budgets, on the path that has them: the EP builds, then loads.
    assert cold.build_seconds <= BUDGET_COLD_SESSION_S
    assert warm.build_seconds <= BUDGET_WARM_SESSION_S
