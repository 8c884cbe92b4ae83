"""GPU evidence on the ``local`` target of a host with a CUDA GPU: sampled in-process
(NVML, else nvidia-smi).  Skipped where this host serves no tier 2: it runs on the
lent GPU machine, where a test forced onto ONNX Runtime's CPU provider is caught."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from hil.tiers import detect_local_tier

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.skipif(detect_local_tier().tier < 2,
                                reason="needs a CUDA GPU on this host (the local target's tier 2)")

FALLBACK_TESTS = '''
import numpy as np
import pytest

from hil.tiers import PROBE_MODEL


@pytest.mark.tier2
def test_inference_forced_onto_the_cpu():
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(PROBE_MODEL, providers=["CPUExecutionProvider"])
    for _ in range(3000):
        session.run(None, {"x": np.ones(1, np.float32)})
    assert session.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.tier2
def test_matmul_on_the_gpu():
    torch = pytest.importorskip("torch")
    a = torch.randn(4096, 4096, device="cuda")
    for _ in range(300):
        a = torch.nn.functional.normalize(a @ a)
    torch.cuda.synchronize()
'''


def _plugin_args() -> list[str]:
    """``-p hil.plugin`` where pytest-hil is not installed (its entry point loads it)."""
    points = importlib.metadata.entry_points(group="pytest11")
    return [] if any(p.value == "hil.plugin" for p in points) else ["-p", "hil.plugin"]


def test_a_tier2_test_on_the_cpu_provider_fails_and_a_gpu_test_passes(
        pytester: pytest.Pytester) -> None:
    # The CPU test first: a CUDA context, once made, stays for the process's life.
    pytester.makepyfile(test_fallback=FALLBACK_TESTS)
    result = pytester.runpytest_subprocess(*_plugin_args(), "--target=local",
                                           "--hil-gpu-evidence=fail", "-p", "no:cacheprovider",
                                           "-rA")
    print(result.stdout.str())  # the evidence, for the run's record
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "E   tier2 test left the GPU idle (peak load 0 %, no CUDA context)",
        "*hil: GPU evidence of tier2 tests (--hil-gpu-evidence=fail)*",
        "sampled in-process through *",
        "test_fallback.py::test_inference_forced_onto_the_cpu: peak load 0 %*GPU IDLE",
        "test_fallback.py::test_matmul_on_the_gpu: peak load *",
        "FAILED test_fallback.py::test_inference_forced_onto_the_cpu - tier2 test left*"])
    (run,) = (pytester.path / "reports" / "runs").iterdir()
    found = {json.loads(line)["nodeid"].split("::")[-1]: json.loads(line)
             for line in (run / "gpu-evidence.jsonl").read_text().splitlines()}
    assert found["test_inference_forced_onto_the_cpu"]["verdict"] == "failed"
    assert found["test_matmul_on_the_gpu"]["state"] == "used"
    assert (run / "telemetry.jsonl").stat().st_size > 0
    assert Path(run / "telemetry.jsonl").read_text().splitlines()[0].startswith('{"t":')
