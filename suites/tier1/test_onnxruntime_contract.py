"""The ONNX Runtime strategy's contract, on the real CPU onnxruntime.

The provider chain and its gate, a listed provider the session does not use,
the warm-up run, model dtypes in and out, the engine gate and EP-cache staging
of a ``.engine`` entry, foreign handles, and serving through ONNX Runtime when
another runtime cannot load its engine.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from onboard.errors import EngineCacheMismatch, InferenceError
from onboard.inference import EngineCache, EngineEntry, EngineHandle, RuntimeConfig
from onboard.inference import ep_cache as ep_cache_module
from onboard.inference.ep_cache import stage_engine
from onboard.inference.ort import CPU_EP, CUDA_EP, TRT_EP, OnnxRuntimeRuntime
from onboard.inference.ort_fallback import OrtFallbackServer
from onboard.inference.ort_providers import (
    library_load_error,
    loadable_providers,
    probe_provider,
    provider_library,
    provider_load_error,
    refused_providers,
    session_providers,
    unloadable_providers,
)
from onboard.model import ModelSpec, make_input, reference_forward
from onboard.recorder import FlightRecorder
from suites._support import ort_gpu_providers, ort_listed_gpu_providers

pytestmark = pytest.mark.tier1

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
onnx = pytest.importorskip("onnx", reason="onnx is not installed")
from onnx import TensorProto, helper  # noqa: E402

FP32_ATOL = FP32_RTOL = 1e-5


def _cpu_only(tmp_path: Path, **kwargs: object) -> RuntimeConfig:
    return RuntimeConfig(cache_dir=tmp_path / "engines", providers=(CPU_EP,), **kwargs)  # type: ignore[arg-type]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _typed_model(tmp_path: Path) -> ModelSpec:
    """float32 and int64 in; float16 (a Cast) and int64 out."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["half"], to=TensorProto.FLOAT16),
            helper.make_node("Add", ["ids", "ids"], ["twice_ids"]),
        ],
        "typed",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4]),
        ],
        [
            helper.make_tensor_value_info("half", TensorProto.FLOAT16, [1, 4]),
            helper.make_tensor_value_info("twice_ids", TensorProto.INT64, [1, 4]),
        ],
    )
    return ModelSpec(
        name="typed",
        onnx_path=_save(graph, tmp_path / "typed.onnx"),
        input_names=("x", "ids"),
        output_names=("half", "twice_ids"),
        input_shapes=((1, 4), (1, 4)),
    )


def _fails_when_run(tmp_path: Path) -> ModelSpec:
    """A session that is created fine but whose first run fails: [N, 4] reshaped to [3]."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [3])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "fails_when_run",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        initializer=[shape],
    )
    return ModelSpec(
        name="fails_when_run",
        onnx_path=_save(graph, tmp_path / "fails.onnx"),
        input_names=("x",),
        output_names=("y",),
        input_shapes=((1, 4),),
    )


def _listed_but_unloadable(runtime: OnnxRuntimeRuntime) -> None:
    """Hand ORT the TensorRT EP first, as onnxruntime-gpu lists it on a host without TensorRT."""
    if TRT_EP in ort_gpu_providers():
        pytest.skip("the TensorRT EP loads here: nothing is refused")
    runtime.providers = (TRT_EP, CPU_EP)
    runtime.session_providers = session_providers(runtime.providers, runtime.config.disallow_cpu_fallback)


# -- the provider chain and its gate ----------------------------------------------------------


def test_the_gate_leaves_the_cpu_ep_out_of_what_ort_is_handed() -> None:
    chain = (TRT_EP, CUDA_EP, CPU_EP)
    assert session_providers(chain, disallow_cpu_fallback=True) == (TRT_EP, CUDA_EP)
    assert session_providers(chain, disallow_cpu_fallback=False) == chain
    assert session_providers((CPU_EP,), disallow_cpu_fallback=True) == ()


def test_a_provider_asked_but_not_in_use_is_refused_the_cpu_ep_never() -> None:
    asked = (TRT_EP, CUDA_EP, CPU_EP)
    assert refused_providers(asked, (CUDA_EP, CPU_EP)) == (TRT_EP,)
    assert refused_providers(asked, (CPU_EP,)) == (TRT_EP, CUDA_EP)
    assert refused_providers(asked, asked) == ()


def test_only_a_tensorrt_ep_that_cannot_load_is_kept_from_ort() -> None:
    unloadable = unloadable_providers(ort, (TRT_EP, CUDA_EP, CPU_EP))
    assert set(unloadable) <= {TRT_EP}  # the CUDA EP is judged by the session, not ahead
    if TRT_EP not in ort_gpu_providers():
        assert unloadable[TRT_EP] == provider_load_error(ort, TRT_EP)
        assert unloadable[TRT_EP]  # the loader's words (or "not part of this onnxruntime build")


def test_a_real_session_reports_an_unlisted_provider_as_not_in_use() -> None:
    if CUDA_EP in ort_listed_gpu_providers():
        pytest.skip("this onnxruntime lists the CUDA EP")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ORT warns that the provider is not listed
        assert probe_provider(ort, CUDA_EP) is False
    assert loadable_providers() == tuple(p for p in ort.get_available_providers() if p == CPU_EP)


def test_a_provider_library_that_cannot_load_says_why(tmp_path: Path) -> None:
    not_elf = tmp_path / "libonnxruntime_providers_tensorrt.so"
    not_elf.write_bytes(b"not a shared object")
    error = library_load_error(not_elf)
    assert error and str(not_elf) in error
    assert "not part of this onnxruntime build" in str(library_load_error(tmp_path / "absent.so"))
    shared = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_shared.so"
    if shared.is_file():
        assert library_load_error(shared) is None
    library = provider_library(ort, TRT_EP)
    assert library is not None and library.name.startswith("libonnxruntime_providers_tensorrt")


def test_a_listed_tensorrt_ep_that_does_not_load_is_recorded_once_and_logged(
    onnx_model: ModelSpec, tmp_path: Path, recorder: FlightRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="onboard.inference.ort")
    runtime = OnnxRuntimeRuntime(_cpu_only(tmp_path), recorder=recorder)
    _listed_but_unloadable(runtime)
    assert runtime.handed_providers() == (CPU_EP,)  # its library does not load: not handed to ORT
    for _ in range(2):
        handle = runtime.deserialize(runtime.compile(onnx_model))
        runtime.infer(handle, {"image": make_input()})
    assert runtime.active_providers == (CPU_EP,)
    (refused,) = recorder.of_kind("tensorrt ep refused")
    assert refused.data["model_name"] == onnx_model.name
    assert refused.data["requested_providers"] == [TRT_EP, CPU_EP]
    assert refused.data["active_providers"] == [CPU_EP]
    reason = refused.data["reason"]
    assert reason.startswith(f"{TRT_EP} was asked ({TRT_EP}, {CPU_EP}) but the session uses {CPU_EP}: ")
    assert "its library loads" not in reason  # the loader's own words follow
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sum(reason in m for m in messages) == 1
    assert sum(f"{onnx_model.name} runs on {CPU_EP}" in m for m in messages) == 1
    (fallback,) = recorder.of_kind("cpu fallback")
    assert fallback.data["model_name"] == onnx_model.name


# -- warm-up and dtypes -------------------------------------------------------------------------


def test_deserialize_warms_the_session_up_with_a_real_run(tmp_path: Path, recorder: FlightRecorder) -> None:
    # The session is created fine; only running it fails, so the failure proves the warm-up ran.
    runtime = OnnxRuntimeRuntime(_cpu_only(tmp_path), recorder=recorder)
    spec = _fails_when_run(tmp_path)
    entry = runtime.compile(spec)
    with pytest.raises(InferenceError, match="warm-up run failed for fails_when_run") as caught:
        runtime.deserialize(entry)
    assert caught.value.__cause__ is not None
    assert [r.data["stage"] for r in recorder.of_kind("inference error")] == ["warmup"]


def test_inputs_and_outputs_keep_the_model_dtypes(tmp_path: Path) -> None:
    runtime = OnnxRuntimeRuntime(_cpu_only(tmp_path))
    spec = _typed_model(tmp_path)
    handle = runtime.deserialize(runtime.compile(spec))
    assert handle.extra["warmup_seconds"] > 0
    assert handle.extra["input_dtypes"] == {"x": np.dtype(np.float32), "ids": np.dtype(np.int64)}
    x = np.array([[0.5, 1.5, -2.0, 3.25]])  # float64 and int32 in: fed as float32 and int64
    ids = np.array([[1, 2, 3, 2**31 - 1]], dtype=np.int32)
    out = runtime.infer(handle, {"x": x, "ids": ids})
    assert out["half"].dtype == np.float16
    assert out["twice_ids"].dtype == np.int64
    np.testing.assert_array_equal(out["half"], x.astype(np.float16))
    np.testing.assert_array_equal(out["twice_ids"], ids.astype(np.int64) * 2)  # no int32 overflow


# -- the engine gate and staging ----------------------------------------------------------------


def _engine_entry(
    runtime: OnnxRuntimeRuntime, spec: ModelSpec, folder: Path, **key_changes: str
) -> EngineEntry:
    key = replace(runtime.host_key(spec), **key_changes)  # type: ignore[arg-type]
    path = EngineCache(folder).store(key, b"serialized TensorRT engine bytes")
    return EngineEntry(runtime.name, spec, path, key, cache_hit=True, build_seconds=0.0)


def test_an_engine_entry_of_another_host_is_refused_before_any_session_work(
    tmp_path: Path, recorder: FlightRecorder
) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf: a session on it would fail")
    spec = ModelSpec(name="corrupt", onnx_path=corrupt)
    runtime = OnnxRuntimeRuntime(_cpu_only(tmp_path), recorder=recorder)
    foreign = _engine_entry(runtime, spec, tmp_path / "shipped", gpu_name="Orin (nvgpu)")
    with pytest.raises(EngineCacheMismatch, match="gpu_name"):
        runtime.deserialize(foreign)
    (refused,) = recorder.of_kind("engine refused")
    assert set(refused.data["differences"]) == {"gpu_name"}
    assert not recorder.of_kind("inference error")  # no session was attempted
    # The same engine with this host's key passes the gate and reaches the session.
    own = _engine_entry(runtime, spec, tmp_path / "own")
    with pytest.raises(InferenceError, match="cannot create a session"):
        runtime.deserialize(own)


def test_an_engine_entry_without_its_key_or_its_file_is_refused(
    onnx_model: ModelSpec, tmp_path: Path, recorder: FlightRecorder
) -> None:
    runtime = OnnxRuntimeRuntime(_cpu_only(tmp_path), recorder=recorder)
    entry = _engine_entry(runtime, onnx_model, tmp_path / "shipped")
    entry.path.with_suffix(".json").unlink()
    with pytest.raises(EngineCacheMismatch, match="sidecar"):
        runtime.deserialize(entry)
    entry.path.unlink()
    with pytest.raises(EngineCacheMismatch, match="engine: engine 'missing'"):
        runtime.deserialize(entry)
    assert len(recorder.of_kind("engine refused")) == 2


def test_an_engine_entry_of_this_host_serves_and_an_onnx_entry_skips_the_gate(
    onnx_model: ModelSpec, tmp_path: Path, recorder: FlightRecorder
) -> None:
    runtime = OnnxRuntimeRuntime(_cpu_only(tmp_path), recorder=recorder)
    image = make_input()
    handle = runtime.deserialize(_engine_entry(runtime, onnx_model, tmp_path / "shipped"))
    got = runtime.infer(handle, {"image": image})["embedding"]
    np.testing.assert_allclose(got, reference_forward(image), atol=FP32_ATOL, rtol=FP32_RTOL)
    assert not recorder.of_kind("engine staged")  # this runtime does not ask for the TensorRT EP
    # An .onnx entry has no key to check: even an unreadable sidecar beside it changes nothing.
    model_copy = tmp_path / "copy" / "embedder.onnx"
    model_copy.parent.mkdir()
    shutil.copyfile(onnx_model.onnx_path, model_copy)
    model_copy.with_suffix(".json").write_text("{not json")
    spec = replace(onnx_model, onnx_path=model_copy)
    runtime.infer(runtime.deserialize(runtime.compile(spec)), {"image": image})
    assert not recorder.of_kind("engine refused")


def test_an_engine_entry_is_staged_into_the_tensorrt_ep_cache_when_that_ep_is_asked_for(
    onnx_model: ModelSpec, tmp_path: Path, recorder: FlightRecorder
) -> None:
    runtime = OnnxRuntimeRuntime(_cpu_only(tmp_path), recorder=recorder)
    _listed_but_unloadable(runtime)
    entry = _engine_entry(runtime, onnx_model, tmp_path / "shipped")  # keyed for the TensorRT EP
    handle = runtime.deserialize(entry)
    (staged,) = recorder.of_kind("engine staged")
    target = runtime.trt_cache_dir() / entry.path.name
    assert staged.data["target"] == str(target)
    assert staged.data["how"] == "symlink"
    assert target.is_symlink() and target.resolve() == entry.path.resolve()
    assert runtime.infer(handle, {"image": make_input()})["embedding"].shape == (1, 128)


def test_staging_links_then_leaves_in_place_then_replaces_a_stale_file(tmp_path: Path) -> None:
    engine = tmp_path / "cache" / "abc.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"engine v1")
    folder = tmp_path / "ep"
    first = stage_engine(engine, folder)
    assert first.how == "symlink" and first.target.read_bytes() == b"engine v1"
    assert stage_engine(engine, folder).how == "in place"
    first.target.unlink()
    first.target.write_bytes(b"stale engine")
    again = stage_engine(engine, folder)
    assert again.how == "symlink" and again.target.read_bytes() == b"engine v1"
    assert sorted(p.name for p in folder.iterdir()) == ["abc.engine"]  # no staging leftovers


def test_staging_copies_where_symlinks_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = tmp_path / "abc.engine"
    engine.write_bytes(b"engine bytes")

    def no_symlinks(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")  # what a FAT or locked-down mount says

    monkeypatch.setattr(ep_cache_module.os, "symlink", no_symlinks)
    staged = stage_engine(engine, tmp_path / "ep")
    assert staged.how == "copy"
    assert not staged.target.is_symlink() and staged.target.read_bytes() == b"engine bytes"
    assert os.listdir(tmp_path / "ep") == ["abc.engine"]


# -- handles and serving ------------------------------------------------------------------------


def test_release_leaves_a_handle_of_another_runtime_alone(onnx_model: ModelSpec, tmp_path: Path) -> None:
    runtime = OnnxRuntimeRuntime(_cpu_only(tmp_path))
    entry = runtime.compile(onnx_model)
    native = object()
    foreign = EngineHandle(runtime="tensorrt", entry=entry, native=native)
    runtime.release(foreign)
    assert foreign.native is native and not foreign.released
    own = runtime.deserialize(entry)
    runtime.release(own)
    assert own.released and own.native is None


def test_serving_through_onnxruntime_when_another_runtime_cannot_load_its_engine(
    onnx_model: ModelSpec, tmp_path: Path, recorder: FlightRecorder
) -> None:
    alerts: list[tuple[str, str]] = []
    server = OrtFallbackServer(
        "tensorrt", _cpu_only(tmp_path), recorder, lambda label, message: alerts.append((label, message))
    )
    engine = EngineCache(tmp_path / "tensorrt").store(
        OnnxRuntimeRuntime(_cpu_only(tmp_path)).host_key(onnx_model), b"truncated engine"
    )
    failed = EngineEntry("tensorrt", onnx_model, engine, EngineCache.read_key(engine), True, 0.0)
    reason = f"deserialize_cuda_engine failed for {engine} (it returned None)"
    handle = server.serve(failed, reason)
    assert server.owns(handle)
    image = make_input()
    for _ in range(3):
        got = server.infer(handle, {"image": image})["embedding"]
    np.testing.assert_allclose(got, reference_forward(image), atol=FP32_ATOL, rtol=FP32_RTOL)
    (step,) = recorder.of_kind("fallback step")
    assert step.data == {"failed": "tensorrt", "reason": reason, "next": "onnxruntime"}
    (activated,) = recorder.of_kind("fallback activated")
    assert activated.data["fallback_from"] == "tensorrt"
    assert activated.data["model_name"] == onnx_model.name
    assert activated.data["reason"] == reason
    assert len(alerts) == 1 and alerts[0][0] == server.label
    assert reason in alerts[0][1]
    server.release(handle)
    assert handle.released
