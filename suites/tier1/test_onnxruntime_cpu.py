"""ONNX Runtime on the CPU: FP32 reference agreement, the cpu-fallback record and gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onboard.errors import CpuFallbackRefused, InferenceError
from onboard.inference import RuntimeConfig, create_runtime
from onboard.inference.ort import (
    CPU_EP,
    CUDA_EP,
    TRT_EP,
    OnnxRuntimeRuntime,
    build_provider_options,
)
from onboard.model import ModelSpec, build_onnx_model, make_input, reference_forward
from onboard.recorder import FlightRecorder
from suites._support import ort_gpu_providers, ort_listed_gpu_providers

pytestmark = pytest.mark.tier1

#: ORT FP32 on the CPU against the float64 numpy reference.
FP32_ATOL = 1e-5
FP32_RTOL = 1e-5

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")


def _cpu_config(tmp_path: Path, **kwargs: object) -> RuntimeConfig:
    # Request the full chain where ORT has no GPU provider (it then falls back to CPU by
    # itself); on a GPU build, ask for the CPU alone so the CPU path is what is tested.
    providers = (CPU_EP,) if ort_gpu_providers() else (TRT_EP, CUDA_EP, CPU_EP)
    return RuntimeConfig(cache_dir=tmp_path / "engines", providers=providers, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("batch", [1, 4])
def test_cpu_inference_equals_fp32_reference(tmp_path: Path, batch: int) -> None:
    spec = build_onnx_model(tmp_path / f"embedder_b{batch}.onnx", batch=batch)
    runtime = create_runtime("onnxruntime", config=_cpu_config(tmp_path))
    handle = runtime.deserialize(runtime.compile(spec))
    image = make_input(batch)
    got = runtime.infer(handle, {"image": image})["embedding"]
    np.testing.assert_allclose(got, reference_forward(image), atol=FP32_ATOL, rtol=FP32_RTOL)
    assert runtime.active_provider == CPU_EP


def test_cpu_fallback_is_recorded_once_per_runtime(
    onnx_model: ModelSpec, tmp_path: Path, recorder: FlightRecorder
) -> None:
    runtime = OnnxRuntimeRuntime(_cpu_config(tmp_path), recorder=recorder)
    for _ in range(2):
        handle = runtime.deserialize(runtime.compile(onnx_model))
        runtime.infer(handle, {"image": make_input()})
        runtime.release(handle)
    records = recorder.of_kind("cpu fallback")
    assert len(records) == 1
    assert records[0].data["active_providers"] == [CPU_EP]
    assert records[0].data["refused"] is False
    assert records[0].data["requested_providers"] == list(runtime.requested_providers)
    assert records[0].data["model_name"] == onnx_model.name
    assert f"came up on {CPU_EP} only" in records[0].data["reason"]


def test_disallow_cpu_fallback_refuses_before_any_cpu_work(tmp_path: Path, recorder: FlightRecorder) -> None:
    config = RuntimeConfig(cache_dir=tmp_path / "engines", providers=(CPU_EP,), disallow_cpu_fallback=True)
    with pytest.raises(CpuFallbackRefused, match="disallow_cpu_fallback is set"):
        # Refused at construction: no model was read and no session was created.
        OnnxRuntimeRuntime(config, recorder=recorder)
    (record,) = recorder.of_kind("cpu fallback")
    assert record.data["refused"] is True
    assert record.data["model_name"] is None  # refused before any model was read
    assert "disallow_cpu_fallback is set" in record.data["reason"]
    assert not recorder.of_kind("engine built")
    assert not (tmp_path / "engines").exists()


def test_disallow_cpu_fallback_with_the_full_chain_on_a_cpu_only_onnxruntime(
    tmp_path: Path, recorder: FlightRecorder
) -> None:
    if ort_listed_gpu_providers():
        pytest.skip(f"onnxruntime here lists {sorted(ort_listed_gpu_providers())}: no CPU-only build")
    config = RuntimeConfig(cache_dir=tmp_path / "engines", disallow_cpu_fallback=True)
    with pytest.raises(CpuFallbackRefused, match="only CPUExecutionProvider is available"):
        OnnxRuntimeRuntime(config, recorder=recorder)


def test_fallback_activated_is_recorded_and_alerted_once_on_first_infer(
    onnx_model: ModelSpec, tmp_path: Path, recorder: FlightRecorder
) -> None:
    alerts: list[tuple[str, str]] = []
    runtime = create_runtime(
        "onnxruntime",
        config=_cpu_config(tmp_path),
        recorder=recorder,
        alert=lambda label, message: alerts.append((label, message)),
        fallback_from="tensorrt",
        fallback_reason="tensorrt: tensorrt is not installed",
    )
    handle = runtime.deserialize(runtime.compile(onnx_model))
    assert not recorder.of_kind("fallback activated")  # nothing before the first inference
    for _ in range(3):
        runtime.infer(handle, {"image": make_input()})
    (record,) = recorder.of_kind("fallback activated")
    assert record.data["fallback_from"] == "tensorrt"
    assert record.data["model_name"] == onnx_model.name
    assert record.data["reason"] == "tensorrt: tensorrt is not installed"
    assert len(alerts) == 1
    assert alerts[0][0] == runtime.label
    assert f"serves {onnx_model.name} instead of tensorrt" in alerts[0][1]
    assert "(tensorrt: tensorrt is not installed)" in alerts[0][1]


def test_a_primary_runtime_writes_no_fallback_activated(
    onnx_model: ModelSpec, tmp_path: Path, recorder: FlightRecorder
) -> None:
    alerts: list[str] = []
    runtime = create_runtime(
        "onnxruntime",
        config=_cpu_config(tmp_path),
        recorder=recorder,
        alert=lambda label, message: alerts.append(message),
    )
    runtime.infer(runtime.deserialize(runtime.compile(onnx_model)), {"image": make_input()})
    assert not recorder.of_kind("fallback activated")
    assert alerts == []


def test_onnxruntime_errors_are_rewrapped_with_the_cause_kept(
    onnx_model: ModelSpec, tmp_path: Path, recorder: FlightRecorder
) -> None:
    runtime = create_runtime("onnxruntime", config=_cpu_config(tmp_path), recorder=recorder)
    handle = runtime.deserialize(runtime.compile(onnx_model))
    wrong_shape = np.zeros((1, 3, 32, 32), dtype=np.float32)
    with pytest.raises(InferenceError, match="inference failed") as caught:
        runtime.infer(handle, {"image": wrong_shape})
    cause = caught.value.__cause__
    assert cause is not None
    assert type(cause).__module__.startswith("onnxruntime")
    (record,) = recorder.of_kind("inference error")
    assert record.data["stage"] == "infer"


def test_a_corrupt_model_is_an_inference_error_with_the_cause_kept(
    tmp_path: Path, recorder: FlightRecorder
) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"this is not a protobuf")
    spec = ModelSpec(name="corrupt", onnx_path=bad)
    runtime = create_runtime("onnxruntime", config=_cpu_config(tmp_path), recorder=recorder)
    with pytest.raises(InferenceError, match="cannot create a session") as caught:
        runtime.compile(spec)
    assert caught.value.__cause__ is not None
    assert recorder.of_kind("inference error")[0].data["stage"] == "session"


def test_tensorrt_ep_options_cache_folder_fp16_and_workspace(tmp_path: Path) -> None:
    config = RuntimeConfig(cache_dir=tmp_path, gpu_memory_budget_bytes=4 << 30, workspace_fraction=0.25)
    runtime = OnnxRuntimeRuntime(RuntimeConfig(cache_dir=tmp_path, providers=(CPU_EP,)))
    cache_dir = runtime.trt_cache_dir()
    assert f"ort-{ort.__version__}-trt-" in cache_dir.name
    options = dict(build_provider_options((TRT_EP, CUDA_EP, CPU_EP), config, cache_dir))
    trt = options[TRT_EP]
    assert trt["trt_engine_cache_enable"] is True
    assert trt["trt_engine_cache_path"] == str(cache_dir)
    assert trt["trt_timing_cache_enable"] is True
    assert trt["trt_timing_cache_path"] == str(cache_dir)
    assert trt["trt_fp16_enable"] is True
    assert trt["trt_max_workspace_size"] == 1 << 30  # a quarter of the 4 GiB budget
    assert options[CUDA_EP] == {"device_id": 0}
    assert options[CPU_EP] == {}
    assert list(options) == [TRT_EP, CUDA_EP, CPU_EP]


def test_only_available_providers_are_requested(tmp_path: Path) -> None:
    runtime = OnnxRuntimeRuntime(RuntimeConfig(cache_dir=tmp_path))
    available = set(ort.get_available_providers())
    assert runtime.providers
    assert set(runtime.providers) <= available
    assert runtime.providers[-1] == CPU_EP
