"""The CUDA check: which device, which compute capability, and does a matmul agree with the CPU."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Largest relative error of the GPU matmul against the float64 CPU result.
MATMUL_RTOL = 1e-4


@dataclass(frozen=True)
class CudaReport:
    """What the CUDA check found."""

    device_name: str
    compute_capability: str
    torch_version: str
    cuda_version: str | None
    device_count: int
    matmul_size: int
    matmul_max_rel_error: float
    matmul_ok: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain data for records and reports."""
        return asdict(self)


def cuda_check(size: int = 512, device_index: int = 0, seed: int = 0) -> CudaReport:
    """Run the check on one device; :class:`RuntimeUnavailable` without torch or CUDA.

    The FP32 matmul runs with TF32 off, so it must match the float64 CPU result
    to :data:`MATMUL_RTOL` (relative to the largest element).
    """
    from onboard.inference._cuda import require_cuda_torch, torch_gpu_identity

    torch = require_cuda_torch("cuda-check", device_index)
    name, capability = torch_gpu_identity(torch, device_index)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    device = torch.device("cuda", device_index)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        got = (torch.from_numpy(a).to(device) @ torch.from_numpy(b).to(device)).cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    error = float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))
    return CudaReport(
        device_name=name,
        compute_capability=capability,
        torch_version=str(torch.__version__),
        cuda_version=torch.version.cuda,
        device_count=int(torch.cuda.device_count()),
        matmul_size=size,
        matmul_max_rel_error=error,
        matmul_ok=error <= MATMUL_RTOL,
    )
