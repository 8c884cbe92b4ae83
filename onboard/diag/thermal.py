"""Thermal-state query: Linux thermal zones (Jetson and most boards) and NVML GPU temperature."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: Where Linux exposes thermal zones; a test may point it elsewhere.
THERMAL_ROOT = Path("/sys/class/thermal")
#: Jetson reports this for a sensor that is switched off.
OFFLINE_SENSOR_C = -256.0


@dataclass(frozen=True)
class ThermalState:
    """Temperatures read at one moment, in degrees Celsius, by sensor name.

    ``source`` says where they came from (``"sysfs"``, ``"nvml"``,
    ``"sysfs+nvml"`` or ``"none"`` when the host exposes nothing).
    """

    source: str
    temperatures_c: Mapping[str, float] = field(default_factory=dict)

    @property
    def max_c(self) -> float | None:
        """The hottest reading, or ``None`` when there is none."""
        return max(self.temperatures_c.values()) if self.temperatures_c else None

    def to_dict(self) -> dict[str, object]:
        """Plain data for a ``thermal`` flight record."""
        return {
            "source": self.source,
            "temperatures_c": dict(self.temperatures_c),
            "max_c": self.max_c,
        }


def read_thermal_zones(root: Path = THERMAL_ROOT) -> dict[str, float]:
    """Read ``thermal_zone*/{type,temp}`` (millidegrees); skip offline or unreadable zones."""
    readings: dict[str, float] = {}
    if not root.is_dir():
        return readings
    for zone in sorted(root.glob("thermal_zone*")):
        try:
            name = (zone / "type").read_text().strip() or zone.name
            celsius = int((zone / "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if celsius <= OFFLINE_SENSOR_C:
            continue
        if name in readings:
            name = f"{name}.{zone.name}"
        readings[name] = celsius
    return readings


def read_thermal_state(root: Path = THERMAL_ROOT) -> ThermalState:
    """The host's thermal state now: thermal zones, plus each NVIDIA GPU via NVML if present."""
    from onboard.diag.gpu import nvml_temperatures

    temperatures = read_thermal_zones(root)
    sources = ["sysfs"] if temperatures else []
    gpu = nvml_temperatures()
    if gpu:
        temperatures.update(gpu)
        sources.append("nvml")
    return ThermalState(source="+".join(sources) or "none", temperatures_c=temperatures)
