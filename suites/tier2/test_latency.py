"""Session-creation and inference latency per runtime, next to the product budgets.

Reported (Allure attachment, flight record, stdout).  Inference latency is
never asserted: shared and noisy hosts make it a measurement, not a pass/fail
criterion.  The session-creation budgets are the product's own p95 limits
(30 s with an empty engine cache, 5 s with a warm one), far above any noise,
and are asserted for each runtime that runs here.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from onboard.inference import RUNTIME_NAMES, RuntimeConfig
from onboard.model import ModelSpec, make_input
from onboard.recorder import FlightRecorder
from suites._support import attach, percentiles, runtime_or_skip

pytestmark = pytest.mark.tier2

#: Product budgets (p95): session creation with a cold and with a warm engine cache.
BUDGET_COLD_SESSION_MS = 30_000.0
BUDGET_WARM_SESSION_MS = 5_000.0
COLD_RUNS = 3
WARM_RUNS = 10
WARMUP_INFERENCES = 10
TIMED_INFERENCES = 200


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_session_creation_and_inference_latency(
    name: str, onnx_model: ModelSpec, tmp_path: Path, recorder: FlightRecorder
) -> None:
    runtime_or_skip(name, RuntimeConfig(cache_dir=tmp_path / "probe"))
    cold: list[float] = []
    for run in range(COLD_RUNS):
        # A fresh cache folder and runtime each time: compile + load from nothing.
        config = RuntimeConfig(cache_dir=tmp_path / f"cold{run}")
        runtime = runtime_or_skip(name, config, recorder)
        started = time.perf_counter()
        handle = runtime.deserialize(runtime.compile(onnx_model))
        cold.append(time.perf_counter() - started)
        runtime.release(handle)
    warm: list[float] = []
    config = RuntimeConfig(cache_dir=tmp_path / f"cold{COLD_RUNS - 1}")
    for _ in range(WARM_RUNS):
        runtime = runtime_or_skip(name, config, recorder)
        started = time.perf_counter()
        handle = runtime.deserialize(runtime.compile(onnx_model))
        warm.append(time.perf_counter() - started)
        runtime.release(handle)
    handle = runtime.deserialize(runtime.compile(onnx_model))
    feeds = {"image": make_input()}
    for _ in range(WARMUP_INFERENCES):
        runtime.infer(handle, feeds)
    timings: list[float] = []
    for _ in range(TIMED_INFERENCES):
        started = time.perf_counter()
        runtime.infer(handle, feeds)
        timings.append(time.perf_counter() - started)
    runtime.release(handle)

    phases = {
        "session creation, cold cache": (percentiles(cold), BUDGET_COLD_SESSION_MS),
        "session creation, warm cache": (percentiles(warm), BUDGET_WARM_SESSION_MS),
        "inference (batch 1, host-to-host)": (percentiles(timings), None),
    }
    report = {"runtime": runtime.label, "phases": {}}
    lines = [f"latency of {runtime.label}"]
    for phase, (stats, budget) in phases.items():
        recorder.write(
            "latency",
            runtime=name,
            label=runtime.label,
            phase=phase,
            samples=int(stats["samples"]),
            p50_ms=stats["p50_ms"],
            p95_ms=stats["p95_ms"],
            budget_ms=budget,
        )
        within = "" if budget is None else ("  within" if stats["p95_ms"] <= budget else "  OVER")
        shown = "-" if budget is None else f"{budget:.0f} ms"
        lines.append(
            f"  {phase:36s} n={int(stats['samples']):4d} p50={stats['p50_ms']:9.3f} ms "
            f"p95={stats['p95_ms']:9.3f} ms  budget(p95)={shown}{within}"
        )
        report["phases"][phase] = {**stats, "budget_p95_ms": budget}  # type: ignore[index]
    attach(f"latency {name}", report)
    attach(f"latency {name} (table)", "\n".join(lines))
    assert all(value > 0 for value in cold + warm + timings)
    for phase, (stats, budget) in phases.items():
        if budget is not None:
            shown = f"{runtime.label}: {phase} p95 {stats['p95_ms']:.0f} ms > budget {budget:.0f} ms"
            assert stats["p95_ms"] <= budget, shown
