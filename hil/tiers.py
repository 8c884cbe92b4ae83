"""Tiers: what a test needs and what a target serves.

Tiers are ordered: a target serving tier N runs every test of tier <= N.
Unmarked tests are tier 1.  Detecting the local host's tier never imports
torch when it is not installed, and looks for CUDA device nodes first so a
CPU host pays nothing.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
from dataclasses import dataclass

from hil.worker import MARKERS, TIERS, item_tier, register_markers, skip_reason, tier_label

__all__ = ["MARKERS", "TIERS", "Detection", "detect_local_tier", "item_tier", "register_markers",
           "skip_reason", "tier_label"]

@dataclass(frozen=True)
class Detection:
    """The tier the local host serves, and how that was found."""

    tier: int
    how: str


def _cuda_device_nodes() -> bool:
    # Discrete GPUs expose /dev/nvidia0.., Jetsons /dev/nvhost-* or /dev/nvgpu.
    return bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/nvhost-ctrl-gpu")
                or os.path.exists("/dev/nvgpu") or shutil.which("nvidia-smi"))


def _torch_cuda() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if torch.cuda.is_available():
        return f"torch {torch.__version__}: {torch.cuda.get_device_name(0)}"
    return None


def _onnxruntime_cuda() -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    providers = set(onnxruntime.get_available_providers())
    found = providers & {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
    if found:
        return f"onnxruntime {onnxruntime.__version__}: {', '.join(sorted(found))}"
    return None


def detect_local_tier() -> Detection:
    """Tier 2 only when a CUDA device is really usable from this process."""
    if not _cuda_device_nodes():
        return Detection(1, "no CUDA device nodes and no nvidia-smi")
    for probe in (_torch_cuda, _onnxruntime_cuda):
        how = probe()
        if how:
            return Detection(2, how)
    return Detection(1, "CUDA device present but neither torch nor onnxruntime can use it")
