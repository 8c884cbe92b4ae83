"""Tiers: what a test needs and what a target serves (the one home of the vocabulary).

Tiers are ordered: a target serving tier N runs every test of tier <= N.
Unmarked tests are tier 1.  Detecting the local host's tier never imports
torch when it is not installed, and looks for CUDA device nodes first so a
CPU host pays nothing.

Standard library and pytest only: this module is part of the worker's
package, mounted into every target, and ``hil.tiers`` on the host is this
same module, so the skip reasons on a board and on the laptop are the same
strings.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
from dataclasses import dataclass
from typing import Any

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


#: A 71-byte ONNX model (one Identity node, float[1] -> float[1]): a session of it tells
#: whether an execution provider really loads here, without the onnx package.
PROBE_MODEL = (b"\x08\x07\x12\x00:;\n\x10\n\x01x\x12\x01y\"\x08Identity\x12\x05probeZ\x0f\n\x01x"
               b"\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04"
               b"\n\x02\x08\x01B\x04\n\x00\x10\r")
#: The providers that mean "a CUDA GPU is usable".
CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def torch_cuda() -> dict[str, Any] | None:
    """torch's view of CUDA (``version``, ``cuda``, ``device``, ``error``); None without torch."""
    if importlib.util.find_spec("torch") is None:
        return None
    found: dict[str, Any] = {"version": "", "cuda": False, "device": "", "error": ""}
    try:
        import torch

        found["version"] = str(torch.__version__)
        if torch.cuda.is_available():
            found["cuda"] = True
            found["device"] = torch.cuda.get_device_name(0)
    except Exception as err:  # a broken torch is a finding, not a crash
        found["error"] = f"{type(err).__name__}: {err}"[:500]
    return found


def onnxruntime_providers() -> dict[str, Any] | None:
    """The onnxruntime providers listed, those that load, and why others did not; None without it.

    Only the CPU and the CUDA/TensorRT providers count.  A GPU provider loads
    when a session of :data:`PROBE_MODEL` created with it (CPU as the
    fallback) really uses it (``session.get_providers()``): ORT lists
    providers whose libraries are missing, and falls back silently.  The
    suites ask the same question (``onboard.inference.ort_providers``).
    """
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    found: dict[str, Any] = {"version": "", "listed": [], "loadable": [], "refused": {},
                             "error": ""}
    try:
        import onnxruntime as ort

        found["version"] = str(ort.__version__)
        listed = list(ort.get_available_providers())
        found["listed"] = listed
        options = ort.SessionOptions()
        options.log_severity_level = 4  # a refused provider is reported here, not logged
        for provider in listed:
            if provider == "CPUExecutionProvider":
                found["loadable"].append(provider)
                continue
            if provider not in CUDA_PROVIDERS:
                continue  # neither a GPU nor the CPU (Azure, ...): not this probe's question
            try:
                session = ort.InferenceSession(PROBE_MODEL, sess_options=options,
                                               providers=[provider, "CPUExecutionProvider"])
                used = session.get_providers()
            except Exception as err:
                found["refused"][provider] = f"{type(err).__name__}: {err}"[:300]
                continue
            if provider in used:
                found["loadable"].append(provider)
            else:
                found["refused"][provider] = "the session fell back to " + ", ".join(used)
    except Exception as err:
        found["error"] = f"{type(err).__name__}: {err}"[:500]
    return found


def _torch_cuda() -> str | None:
    found = torch_cuda()
    if found and found["cuda"]:
        return f"torch {found['version']}: {found['device']}"
    return None


def _onnxruntime_cuda() -> str | None:
    found = onnxruntime_providers()
    loads = [p for p in (found or {}).get("loadable", ()) if p in CUDA_PROVIDERS]
    if found and loads:
        return f"onnxruntime {found['version']}: {', '.join(loads)} load"
    return None


def detect_local_tier() -> Detection:
    """Tier 2 only when a CUDA device is really usable from this process.

    The same checks as the worker's ``--probe`` in a target's image: torch's
    ``cuda.is_available()``, and the onnxruntime providers that really load.
    """
    if not _cuda_device_nodes():
        return Detection(1, "no CUDA device nodes and no nvidia-smi")
    for probe in (_torch_cuda, _onnxruntime_cuda):
        how = probe()
        if how:
            return Detection(2, how)
    return Detection(1, "CUDA device present but neither torch nor onnxruntime can use it")


def probe_words(info: dict[str, Any], where: str) -> str:
    """What the worker's ``--probe`` found about CUDA inside ``where``, in one line.

    ``"torch.cuda.is_available() is False inside hil-deps:ab12 (torch 2.5.0);
    onnxruntime providers that load: CPUExecutionProvider"``.
    """
    parts: list[str] = []
    torch = info.get("torch")
    if not isinstance(torch, dict):
        parts.append(f"torch is not installed inside {where}")
    elif torch.get("error"):
        parts.append(f"torch fails inside {where}: {torch['error']}")
    else:
        parts.append(f"torch.cuda.is_available() is {bool(torch.get('cuda'))} inside {where} "
                     f"(torch {torch.get('version') or '?'}"
                     + (f", {torch['device']})" if torch.get("device") else ")"))
    ort = info.get("onnxruntime")
    if not isinstance(ort, dict):
        parts.append("onnxruntime is not installed")
    elif ort.get("error"):
        parts.append(f"onnxruntime fails: {ort['error']}")
    else:
        parts.append("onnxruntime providers that load: "
                     + (", ".join(ort.get("loadable") or ()) or "none"))
        refused = ort.get("refused") or {}
        if refused:
            parts.append("listed but refused: " + "; ".join(
                f"{name} ({why})" for name, why in sorted(refused.items())))
    return "; ".join(parts)


__all__ = ["CUDA_PROVIDERS", "MARKERS", "PROBE_MODEL", "TIERS", "Detection", "detect_local_tier",
           "item_tier", "onnxruntime_providers", "probe_words", "register_markers",
           "skip_reason", "tier_label", "torch_cuda"]
