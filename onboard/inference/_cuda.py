"""Shared CUDA plumbing for the torch-backed strategies (PyTorch FP16 and TensorRT buffers)."""

from __future__ import annotations

from typing import Any

from onboard.errors import RuntimeUnavailable


def require_cuda_torch(runtime: str, device_index: int = 0) -> Any:
    """Import torch and check that it sees a CUDA device; else raise :class:`RuntimeUnavailable`."""
    try:
        import torch
    except ImportError as exc:
        raise RuntimeUnavailable(
            runtime, "torch is not installed (pip install torch; it is not in the default install)"
        ) from exc
    if not torch.cuda.is_available():
        raise RuntimeUnavailable(
            runtime,
            f"CUDA is not available to torch {torch.__version__} "
            f"(torch.version.cuda={torch.version.cuda}): a CPU-only build or no GPU visible",
        )
    count = torch.cuda.device_count()
    if device_index >= count:
        raise RuntimeUnavailable(runtime, f"CUDA device {device_index} requested, {count} visible")
    return torch


def torch_gpu_identity(torch: Any, device_index: int) -> tuple[str, str]:
    """``(GPU name, "major.minor" compute capability)`` of one CUDA device."""
    major, minor = torch.cuda.get_device_capability(device_index)
    return str(torch.cuda.get_device_name(device_index)), f"{major}.{minor}"
