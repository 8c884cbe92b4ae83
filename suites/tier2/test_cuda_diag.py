"""The CUDA check on a real GPU: device, compute capability, and a matmul that agrees with the CPU."""

from __future__ import annotations

import pytest

from onboard.diag.cuda import MATMUL_RTOL, cuda_check
from onboard.diag.gpu import query_gpus
from onboard.errors import RuntimeUnavailable
from suites._support import attach

pytestmark = pytest.mark.tier2


def test_cuda_check_device_and_matmul_agree_with_cpu() -> None:
    try:
        report = cuda_check()
    except RuntimeUnavailable as exc:
        pytest.skip(str(exc))
    attach("cuda check", report.to_dict())
    assert report.device_name
    major, minor = (int(part) for part in report.compute_capability.split("."))
    assert major >= 5 and minor >= 0
    assert report.matmul_ok, f"GPU matmul error {report.matmul_max_rel_error} > {MATMUL_RTOL}"


def test_gpu_figures_come_from_nvml_or_nvidia_smi() -> None:
    gpus = query_gpus()
    if not gpus:
        pytest.skip("neither NVML (pynvml) nor nvidia-smi answers here (a Jetson uses tegrastats)")
    attach("gpu figures", {"gpus": [g.to_dict() for g in gpus]})
    assert gpus[0].name
    assert gpus[0].memory_total_mib and gpus[0].memory_total_mib > 0
