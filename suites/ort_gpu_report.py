"""What ONNX Runtime really does on this GPU host: providers, the CPU gate, and CUDA EP latencies.

Run it where onnxruntime-gpu is installed (``python3 -m suites.ort_gpu_report
[OUT.json]``).  It prints, and writes as JSON:

* the onnxruntime version, the providers it lists and those that really load
  (in a fresh interpreter without torch, and after torch has started CUDA);
* the gate on with the default chain (TensorRT EP -> CUDA EP, no CPU EP handed):
  the provider the session runs on, the ``tensorrt ep refused`` records and
  ``cpu fallback`` records written over two sessions, and the INFO log lines;
* the CUDA EP's session creation (cold: a new runtime and cache folder each,
  the first of them also paying for CUDA's start in this process; warm: the
  same runtime again) and batch-1 inference, host to host, p50/p95.

Measurements, not verdicts: nothing here passes or fails.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onboard.errors import OnboardError
from onboard.inference import RuntimeConfig
from onboard.inference.ort import CPU_EP, CUDA_EP, OnnxRuntimeRuntime
from onboard.inference.ort_providers import loadable_providers
from onboard.model import build_onnx_model, make_input, reference_forward
from onboard.recorder import FlightRecorder

COLD_RUNS = 5
WARM_RUNS = 10
WARMUP_INFERENCES = 10
TIMED_INFERENCES = 200


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def _stats(samples_s: list[float]) -> dict[str, float]:
    values = np.asarray(samples_s) * 1000.0
    return {
        "n": len(values),
        "p50_ms": float(np.percentile(values, 50)),
        "p95_ms": float(np.percentile(values, 95)),
    }


def _timed(action: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def gate_on_default_chain(root: Path) -> dict[str, Any]:
    """Two sessions with the gate on and the default chain; what ran and what was recorded."""
    model = build_onnx_model(root / "gate" / "embedder.onnx")
    lines = _Lines()
    logging.getLogger("onboard.inference.ort").addHandler(lines)
    logging.getLogger("onboard.inference.ort").setLevel(logging.INFO)
    recorder = FlightRecorder()
    runtime = OnnxRuntimeRuntime(
        RuntimeConfig(cache_dir=root / "gate" / "engines", disallow_cpu_fallback=True), recorder=recorder
    )
    image = make_input()
    for _ in range(2):
        handle = runtime.deserialize(runtime.compile(model))
        got = runtime.infer(handle, {"image": image})["embedding"]
        runtime.release(handle)
    return {
        "asked": list(runtime.session_providers),
        "handed": list(runtime.handed_providers()),
        "active": list(runtime.active_providers),
        "label": runtime.label,
        "max_abs_difference_to_fp32_reference": float(np.max(np.abs(got - reference_forward(image)))),
        "tensorrt_ep_refused": [dict(r.data) for r in recorder.of_kind("tensorrt ep refused")],
        "cpu_fallback": [dict(r.data) for r in recorder.of_kind("cpu fallback")],
        "info_log": lines.lines,
    }


def cuda_ep_latency(root: Path) -> dict[str, Any]:
    """Session creation cold and warm, and inference, on the CUDA EP alone (no CPU EP handed)."""
    model = build_onnx_model(root / "latency" / "embedder.onnx")

    def runtime_at(folder: Path) -> OnnxRuntimeRuntime:
        config = RuntimeConfig(cache_dir=folder, providers=(CUDA_EP, CPU_EP), disallow_cpu_fallback=True)
        return OnnxRuntimeRuntime(config)

    cold: list[float] = []
    for run in range(COLD_RUNS):
        runtime = runtime_at(root / "latency" / f"cold{run}")
        handle, seconds = _timed(lambda r=runtime: r.deserialize(r.compile(model)))
        cold.append(seconds)
        runtime.release(handle)
    warm: list[float] = []
    for _ in range(WARM_RUNS):
        handle, seconds = _timed(lambda r=runtime: r.deserialize(r.compile(model)))
        warm.append(seconds)
        runtime.release(handle)
    handle = runtime.deserialize(runtime.compile(model))
    feeds = {"image": make_input()}
    for _ in range(WARMUP_INFERENCES):
        runtime.infer(handle, feeds)
    timings = [_timed(lambda: runtime.infer(handle, feeds))[1] for _ in range(TIMED_INFERENCES)]
    return {
        "label": runtime.label,
        "session_creation_cold": _stats(cold),
        "session_creation_warm": _stats(warm),
        "inference_batch1": _stats(timings),
    }


def main(argv: list[str]) -> int:
    """Print the report; write it as JSON to ``argv[0]`` when given."""
    # The suites run with torch imported (the plugin's tier probe), and torch loads CUDA's
    # libraries; so the probe runs once in a fresh interpreter without torch, then with it.
    probe = "from onboard.inference.ort_providers import loadable_providers as p; print(list(p()))"
    alone = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.cuda.is_available()
    import onnxruntime

    report: dict[str, Any] = {
        "onnxruntime": onnxruntime.__version__,
        "listed": onnxruntime.get_available_providers(),
        "loadable_without_torch": alone.stdout.strip() or alone.stderr.strip()[-500:],
        "torch_imported": "torch" in sys.modules,
        "loadable": list(loadable_providers()),
    }
    sections = {"gate_on_default_chain": gate_on_default_chain, "cuda_ep_latency": cuda_ep_latency}
    with tempfile.TemporaryDirectory() as folder:
        for name, section in sections.items():
            try:
                report[name] = section(Path(folder))
            except OnboardError as exc:  # reported as what happened, not hidden
                report[name] = {"error": f"{type(exc).__name__}: {exc}"}
    text = json.dumps(report, indent=2)
    print(text)
    if argv:
        Path(argv[0]).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
