"""GPU figures on discrete-GPU hosts: NVML (pynvml, when importable) or ``nvidia-smi`` CSV.

Jetson boards have no NVML; their figures come from tegrastats
(:mod:`onboard.diag.tegrastats`).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from onboard.errors import ParseError

#: The ``nvidia-smi --query-gpu`` fields, in the order :func:`parse_nvidia_smi_csv` expects.
SMI_FIELDS = (
    "index",
    "name",
    "memory.total",
    "memory.used",
    "temperature.gpu",
    "utilization.gpu",
    "power.draw",
)


@dataclass(frozen=True)
class GpuInfo:
    """One GPU's figures; a value the driver does not report is ``None``."""

    index: int
    name: str
    memory_total_mib: float | None
    memory_used_mib: float | None
    temperature_c: float | None
    utilization_pct: float | None
    power_w: float | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data for records and reports."""
        return asdict(self)


def _number(text: str) -> float | None:
    text = text.strip()
    if not text or text.startswith("[") or text.upper() in {"N/A", "NOT SUPPORTED"}:
        return None
    return float(text)


def parse_nvidia_smi_csv(text: str) -> list[GpuInfo]:
    """Parse ``nvidia-smi --query-gpu=<SMI_FIELDS> --format=csv,noheader,nounits`` output."""
    gpus: list[GpuInfo] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(SMI_FIELDS):
            raise ParseError("nvidia-smi CSV", line, f"expected {len(SMI_FIELDS)} fields, got {len(cells)}")
        try:
            gpus.append(
                GpuInfo(
                    index=int(cells[0]),
                    name=cells[1],
                    memory_total_mib=_number(cells[2]),
                    memory_used_mib=_number(cells[3]),
                    temperature_c=_number(cells[4]),
                    utilization_pct=_number(cells[5]),
                    power_w=_number(cells[6]),
                    source="nvidia-smi",
                )
            )
        except ValueError as exc:
            raise ParseError("nvidia-smi CSV", line, str(exc)) from exc
    return gpus


def query_nvidia_smi(timeout_s: float = 10.0) -> list[GpuInfo]:
    """Run ``nvidia-smi``; an empty list when it is not installed or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    command = [
        exe,
        "--query-gpu=" + ",".join(SMI_FIELDS),
        "--format=csv,noheader,nounits",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode != 0:
        return []
    return parse_nvidia_smi_csv(done.stdout)


def _nvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no NVML here
        return None
    return pynvml


def query_nvml() -> list[GpuInfo]:
    """Read every GPU through NVML; an empty list when pynvml or the driver is absent."""
    nvml = _nvml()
    if nvml is None:
        return []
    gpus: list[GpuInfo] = []
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_total_mib=memory.total / 2**20,
                    memory_used_mib=memory.used / 2**20,
                    temperature_c=_nvml_optional(
                        lambda h=handle: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)
                    ),
                    utilization_pct=_nvml_optional(
                        lambda h=handle: nvml.nvmlDeviceGetUtilizationRates(h).gpu
                    ),
                    power_w=_nvml_optional(lambda h=handle: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
                    source="nvml",
                )
            )
    finally:
        nvml.nvmlShutdown()
    return gpus


def _nvml_optional(read: Any) -> float | None:
    try:
        return float(read())
    except Exception:  # NVMLError_NotSupported on some boards and MIG slices
        return None


def query_gpus() -> list[GpuInfo]:
    """Every GPU's figures: NVML when pynvml works, else ``nvidia-smi``, else none."""
    return query_nvml() or query_nvidia_smi()


def nvml_temperatures() -> dict[str, float]:
    """``{"gpu0": celsius, ...}`` from NVML; empty without pynvml or a driver."""
    return {f"gpu{gpu.index}": gpu.temperature_c for gpu in query_nvml() if gpu.temperature_c is not None}


def host_gpu_identity(device_index: int = 0) -> tuple[str, str]:
    """``(name, "major.minor")`` of one GPU via NVML or ``nvidia-smi``; ``("none", "none")``.

    Used in cache keys where torch is not loaded (ONNX Runtime); Jetsons without
    NVML report ``"none"``, which still keeps keys of different hosts apart by
    the runtime version and the model hash.
    """
    nvml = _nvml()
    if nvml is not None:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(device_index)
            name = nvml.nvmlDeviceGetName(handle)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            return (name.decode() if isinstance(name, bytes) else str(name), f"{major}.{minor}")
        except Exception:  # fall through to nvidia-smi
            pass
        finally:
            nvml.nvmlShutdown()
    exe = shutil.which("nvidia-smi")
    if exe is not None:
        try:
            done = subprocess.run(
                [
                    exe,
                    f"--id={device_index}",
                    "--query-gpu=name,compute_cap",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=10,
            )
            name, _, cap = done.stdout.strip().rpartition(",")
            if done.returncode == 0 and name:
                return name.strip(), cap.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return ("none", "none")
