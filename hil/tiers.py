"""Tiers: what a test needs and what a target serves (the one home of the vocabulary).

Tiers are ordered: a target serving tier N runs every test of tier <= N.
Unmarked tests are tier 1.  Detecting the local host's tier never imports
torch when it is not installed, and looks for CUDA device nodes first so a
CPU host pays nothing.

Standard library and pytest only: this file is mounted into every target
beside the worker (as ``hil_tiers.py``), so the skip reasons on a board and
on the laptop are the same strings.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
from dataclasses import dataclass

import pytest

TIERS: dict[int, str] = {
    1: "any host CPU",
    2: "CUDA GPU",
    3: "real airframe hardware",
}


MARKERS: dict[str, str] = {
    f"tier{n}": f"tier{n}: needs {what}; skipped on targets serving a lower tier"
    for n, what in TIERS.items()
}


def register_markers(config: pytest.Config) -> None:
    """Declare the tier markers, so ``--strict-markers`` accepts them."""
    for line in MARKERS.values():
        config.addinivalue_line("markers", line)


def tier_label(tier: int) -> str:
    """``'tier2 (CUDA GPU)'``."""
    return f"tier{tier} ({TIERS.get(tier, 'unknown')})"


def skip_reason(test_tier: int, target: str, target_tier: int) -> str:
    """The reason a test above its target's tier is skipped with."""
    return f"{tier_label(test_tier)} test; target '{target}' serves tier {target_tier}"


def item_tier(item: pytest.Item) -> int:
    """The tier a test needs: its highest ``tierN`` marker, 1 when unmarked."""
    names = {m.name for m in item.iter_markers()}
    return max((n for n in TIERS if f"tier{n}" in names), default=1)


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
