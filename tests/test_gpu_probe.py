"""The CUDA probe: the worker's ``--probe`` (torch, and the onnxruntime providers that
really load), run here and inside a docker target's built image.  The rig has no
GPU, so a tier-2 declaration must fail with the probe's own words."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hil.backends.base import RunPlan
from hil.backends.docker import DockerBackend
from hil.config import load_inventory
from hil.errors import ExitCode, TargetUnhealthyError
from hil.progress import Progress
from hil.tiers import PROBE_MODEL, detect_local_tier, onnxruntime_providers, probe_words

REPO = Path(__file__).resolve().parent.parent


def test_the_embedded_model_loads_in_onnxruntime() -> None:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(PROBE_MODEL, providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert [i.name for i in session.get_inputs()] == ["x"]


def test_onnxruntime_counts_only_providers_that_load() -> None:
    pytest.importorskip("onnxruntime")
    found = onnxruntime_providers()
    assert found is not None and not found["error"]
    assert "CPUExecutionProvider" in found["loadable"]
    assert set(found["loadable"]) <= set(found["listed"])
    # What is neither loadable nor the CPU was refused, with ORT's reason.
    assert all(found["refused"][p] for p in found["refused"])


def test_worker_probe_prints_json_the_host_side_words_read() -> None:
    res = subprocess.run([sys.executable, str(REPO / "hil" / "worker" / "__main__.py"), "--probe"],
                         capture_output=True, text=True, check=True, timeout=120)
    info = json.loads(res.stdout.splitlines()[-1])
    words = probe_words(info, "this host")
    assert "onnxruntime providers that load: CPUExecutionProvider" in words
    if "torch" not in info:
        assert "torch is not installed inside this host" in words
    if not info["cuda"]:  # the local detection asks the same functions
        assert detect_local_tier().tier == 1


def test_probe_words_say_what_torch_and_onnxruntime_found() -> None:
    info = {"torch": {"version": "2.5.0", "cuda": False, "device": "", "error": ""},
            "onnxruntime": {"loadable": ["CPUExecutionProvider"],
                            "refused": {"TensorrtExecutionProvider": "libnvinfer.so.10: cannot "
                                        "open shared object file"}, "error": ""}}
    assert probe_words(info, "hil-deps:ab12") == (
        "torch.cuda.is_available() is False inside hil-deps:ab12 (torch 2.5.0); onnxruntime "
        "providers that load: CPUExecutionProvider; listed but refused: "
        "TensorrtExecutionProvider (libnvinfer.so.10: cannot open shared object file)")


def _colima(sim_rig: Any, tier: int) -> Any:
    spec = load_inventory(REPO).get("sim-colima")
    return dataclasses.replace(spec, tier=tier)


def test_docker_tier2_without_cuda_in_the_built_image_is_unhealthy(sim_rig: Any,
                                                                   sim_project: Path,
                                                                   tmp_path: Path) -> None:
    spec = _colima(sim_rig, 2)
    plan = RunPlan(run_id=f"t{time.time_ns() % 10**12}", pytest_args=(), subdir="", env={},
                   local_out=tmp_path / "out")
    first = DockerBackend(spec, sim_project, Progress(io.StringIO()))
    try:
        # Present image: preflight probes it; absent: the build does, right after.
        with pytest.raises(TargetUnhealthyError) as info:
            first.preflight()
            first.prepare(plan)
    finally:
        first.close()
    second = DockerBackend(spec, sim_project, Progress(io.StringIO()))
    try:
        with pytest.raises(TargetUnhealthyError) as again:
            second.preflight()  # the image is there now: preflight's own probe
    finally:
        second.close()
    for err in (info.value, again.value):
        assert err.exit_code == ExitCode.TARGET_UNHEALTHY
        assert "declares tier 2 (CUDA GPU) but torch is not installed inside hil-deps:" in str(err)
        assert "onnxruntime providers that load: CPUExecutionProvider" in str(err)


def test_docker_tier1_is_not_probed(sim_rig: Any, sim_project: Path) -> None:
    backend = DockerBackend(_colima(sim_rig, 1), sim_project, Progress(io.StringIO()))
    try:
        report = backend.preflight()
    finally:
        backend.close()
    gpu = next(c for c in report.checks if c.name == "gpu")
    assert gpu.ok and "not probed" in gpu.detail
