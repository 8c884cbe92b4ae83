"""Every inference strategy conforms to the InferenceRuntime protocol."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from onboard.diag.thermal import ThermalState
from onboard.errors import InferenceError, RuntimeUnavailable
from onboard.inference import InferenceRuntime, RuntimeConfig, create_runtime
from onboard.inference.ort import OnnxRuntimeRuntime
from onboard.inference.tensorrt import TensorRTRuntime
from onboard.inference.torch_fp16 import TorchFp16Runtime
from onboard.model import ModelSpec, make_input

pytestmark = pytest.mark.tier1

STRATEGIES = [TorchFp16Runtime, TensorRTRuntime, OnnxRuntimeRuntime]
METHODS = ["compile", "deserialize", "infer", "release", "thermal_state"]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda cls: cls.name)
def test_strategy_has_every_protocol_member_with_the_protocol_signature(strategy: type) -> None:
    assert isinstance(strategy.name, str) and strategy.name
    assert isinstance(inspect.getattr_static(strategy, "label"), property)
    for method in METHODS:
        expected = list(inspect.signature(getattr(InferenceRuntime, method)).parameters)
        actual = list(inspect.signature(getattr(strategy, method)).parameters)
        assert actual == expected, f"{strategy.__name__}.{method}{actual} != protocol {expected}"


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda cls: cls.name)
def test_strategy_constructor_takes_config_recorder_alert_and_fallback_origin(
    strategy: type,
) -> None:
    params = list(inspect.signature(strategy.__init__).parameters)
    assert params == ["self", "config", "recorder", "alert", "fallback_from", "fallback_reason"]


def test_onnxruntime_lifecycle_compile_deserialize_infer_release(
    onnx_model: ModelSpec, config: RuntimeConfig
) -> None:
    runtime = create_runtime("onnxruntime", config=config)
    assert isinstance(runtime, InferenceRuntime)
    entry = runtime.compile(onnx_model)
    handle = runtime.deserialize(entry)
    outputs = runtime.infer(handle, {"image": make_input()})
    assert set(outputs) == {"embedding"}
    assert outputs["embedding"].shape == (1, 128)
    assert outputs["embedding"].dtype == np.float32
    assert "onnxruntime" in runtime.label and runtime.label.endswith("ExecutionProvider")
    runtime.release(handle)
    runtime.release(handle)  # idempotent
    assert handle.released
    with pytest.raises(InferenceError, match="released handle"):
        runtime.infer(handle, {"image": make_input()})
    assert isinstance(runtime.thermal_state(), ThermalState)


def _unavailable(name: str) -> RuntimeUnavailable | None:
    try:
        create_runtime(name, config=RuntimeConfig())
    except RuntimeUnavailable as exc:
        return exc
    return None


def test_torch_fp16_without_cuda_raises_runtime_unavailable_when_constructed() -> None:
    exc = _unavailable("torch-fp16")
    if exc is None:
        pytest.skip("CUDA is available to torch here; the FP16 runtime is exercised in tier2")
    assert exc.runtime == "torch-fp16"
    assert "torch is not installed" in exc.reason or "CUDA is not available" in exc.reason


def test_tensorrt_without_library_raises_runtime_unavailable_when_constructed() -> None:
    exc = _unavailable("tensorrt")
    if exc is None:
        pytest.skip("TensorRT and CUDA are available here; the engine path is exercised in tier2")
    assert exc.runtime == "tensorrt"
    assert exc.reason  # e.g. "tensorrt is not installed (...)"
    assert "Traceback" not in str(exc)


def test_wrong_input_names_are_an_inference_error(onnx_model: ModelSpec, config: RuntimeConfig) -> None:
    runtime = create_runtime("onnxruntime", config=config)
    handle = runtime.deserialize(runtime.compile(onnx_model))
    with pytest.raises(InferenceError, match=r"missing \['image'\], unknown \['pixels'\]"):
        runtime.infer(handle, {"pixels": make_input()})
