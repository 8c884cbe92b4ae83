"""What the environment offers: Python, packages and CUDA as the suites would see them.

``python3 /hil/lib/hil_worker/__main__.py --probe`` prints :func:`probe` as JSON:
the backends' GPU check and image facts read it.
"""

from __future__ import annotations

import importlib.metadata
import platform
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .tiers import CUDA_PROVIDERS, onnxruntime_providers, torch_cuda


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions of ``names`` (distribution names), without importing them."""
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


#: Distributions whose versions go into Allure's environment.properties.
RUNTIME_PACKAGES = ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy", "pytest")


def probe() -> dict[str, Any]:
    """What this environment offers: Python, packages, and CUDA as the suites would see it.

    ``cuda`` is true when torch sees a CUDA device or an onnxruntime CUDA or
    TensorRT provider really loads (not merely listed).
    """
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "host": socket.gethostname(),
        "packages": package_versions(RUNTIME_PACKAGES),
        "cuda": False,
        "gpu": "",
    }
    release = Path("/etc/nv_tegra_release")
    if release.is_file():
        info["nv_tegra_release"] = release.read_text(encoding="utf-8", errors="replace").strip()
    torch_found = torch_cuda()
    if torch_found is not None:
        info["torch"] = torch_found
        if torch_found["cuda"]:
            info["cuda"], info["gpu"] = True, torch_found["device"]
    ort_found = onnxruntime_providers()
    if ort_found is not None:
        info["onnxruntime"] = ort_found
        if any(p in ort_found["loadable"] for p in CUDA_PROVIDERS):
            info["cuda"] = True
    return info
