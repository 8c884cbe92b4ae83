"""The runtime factory: names, missing libraries and the recorded fallback chain."""

from __future__ import annotations

from pathlib import Path

import pytest

from onboard.errors import NoRuntimeAvailable, RuntimeUnavailable, UnknownRuntime
from onboard.inference import DEFAULT_CHAIN, RUNTIME_NAMES, RuntimeConfig, build_with_fallback
from onboard.inference.factory import create_runtime
from onboard.inference.ort import CPU_EP
from onboard.model import ModelSpec, make_input
from onboard.recorder import FlightRecorder

pytestmark = pytest.mark.tier1


def _availability(config: RuntimeConfig) -> dict[str, str | None]:
    """Each runtime name -> None when it builds here, else its unavailability reason."""
    result: dict[str, str | None] = {}
    for name in RUNTIME_NAMES:
        try:
            create_runtime(name, config=config)
            result[name] = None
        except RuntimeUnavailable as exc:
            result[name] = exc.reason
    return result


def test_unknown_runtime_name_is_a_clear_error() -> None:
    with pytest.raises(UnknownRuntime, match=r"unknown inference runtime 'tflite'; known: "):
        create_runtime("tflite")


def test_a_chain_with_an_unknown_name_is_refused_before_building_anything(
    recorder: FlightRecorder,
) -> None:
    with pytest.raises(UnknownRuntime, match="'onnx-runtime'"):
        build_with_fallback(("onnxruntime", "onnx-runtime"), recorder=recorder)
    assert recorder.records == ()


def test_empty_chain_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        build_with_fallback(())


def test_missing_library_is_a_clear_runtime_unavailable(tmp_path: Path) -> None:
    reasons = _availability(RuntimeConfig(cache_dir=tmp_path))
    missing = {name: reason for name, reason in reasons.items() if reason}
    if not missing:
        pytest.skip("every runtime library is installed and usable here")
    for name, reason in missing.items():
        assert reason and ("not installed" in reason or "not available" in reason), (name, reason)


def test_fallback_chain_records_each_step_and_the_selection(
    onnx_model: ModelSpec, tmp_path: Path, recorder: FlightRecorder
) -> None:
    config = RuntimeConfig(cache_dir=tmp_path / "engines")
    reasons = _availability(config)
    runtime = build_with_fallback(DEFAULT_CHAIN, config=config, recorder=recorder)
    expected = next(name for name in DEFAULT_CHAIN if reasons[name] is None)
    assert runtime.name == expected
    skipped = DEFAULT_CHAIN[: DEFAULT_CHAIN.index(expected)]
    steps = recorder.of_kind("fallback step")
    assert [s.data["failed"] for s in steps] == list(skipped)
    assert [s.data["reason"] for s in steps] == [reasons[n] for n in skipped]
    (selected,) = recorder.of_kind("runtime selected")
    assert selected.data["runtime"] == expected
    assert selected.data["chain"] == list(DEFAULT_CHAIN)
    assert selected.data["fallback_from"] == (DEFAULT_CHAIN[0] if skipped else None)
    # The records come in order: every step, then the selection.
    kinds = [r.kind for r in recorder.records]
    assert kinds[: len(skipped) + 1] == ["fallback step"] * len(skipped) + ["runtime selected"]
    if skipped:
        runtime.infer(runtime.deserialize(runtime.compile(onnx_model)), {"image": make_input()})
        (activated,) = recorder.of_kind("fallback activated")
        assert activated.data["model_name"] == onnx_model.name
        # The reason names every runtime passed over, in the words of its refusal.
        for name in skipped:
            assert f"{name}: {reasons[name]}" in activated.data["reason"]


def test_a_chain_where_nothing_is_available_says_why_for_each(
    tmp_path: Path, recorder: FlightRecorder
) -> None:
    # The CPU alone, with the gate on: nothing is handed to ORT, whatever this build lists.
    config = RuntimeConfig(cache_dir=tmp_path, providers=(CPU_EP,), disallow_cpu_fallback=True)
    with pytest.raises(NoRuntimeAvailable, match="no runtime of the chain onnxruntime") as caught:
        build_with_fallback(("onnxruntime",), config=config, recorder=recorder)
    assert "disallow_cpu_fallback" in caught.value.reasons[0]
    (step,) = recorder.of_kind("fallback step")
    assert step.data["next"] is None
