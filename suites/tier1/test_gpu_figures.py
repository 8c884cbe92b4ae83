"""GPU figures from nvidia-smi CSV, and thermal zones from a sysfs tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from onboard.diag.gpu import SMI_FIELDS, parse_nvidia_smi_csv, query_gpus
from onboard.diag.thermal import ThermalState, read_thermal_state, read_thermal_zones
from onboard.errors import ParseError

pytestmark = pytest.mark.tier1

H100_CSV = "0, NVIDIA H100 80GB HBM3, 81559, 0, 31, 0, 69.57\n"
TWO_GPUS_CSV = (
    "0, NVIDIA GeForce RTX 4090, 24564, 1034, 45, 12, 61.20\n1, NVIDIA A2, 15356, 0, 38, 0, [N/A]\n"
)


def test_one_h100_line() -> None:
    (gpu,) = parse_nvidia_smi_csv(H100_CSV)
    assert gpu.index == 0
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.memory_total_mib == 81559 and gpu.memory_used_mib == 0
    assert gpu.temperature_c == 31 and gpu.utilization_pct == 0
    assert gpu.power_w == pytest.approx(69.57)
    assert gpu.source == "nvidia-smi"


def test_two_gpus_and_a_value_the_driver_does_not_report() -> None:
    gpus = parse_nvidia_smi_csv(TWO_GPUS_CSV)
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[1].power_w is None
    assert gpus[0].to_dict()["name"] == "NVIDIA GeForce RTX 4090"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0, NVIDIA H100, 81559", f"expected {len(SMI_FIELDS)} fields, got 3"),
        ("zero, NVIDIA H100, 1, 1, 1, 1, 1", "invalid literal"),
        ("0, NVIDIA H100, lots, 1, 1, 1, 1", "could not convert"),
    ],
)
def test_malformed_csv_is_a_parse_error(text: str, reason: str) -> None:
    with pytest.raises(ParseError, match="cannot parse nvidia-smi CSV") as caught:
        parse_nvidia_smi_csv(text)
    assert reason in caught.value.reason


def test_query_gpus_answers_on_any_host() -> None:
    for gpu in query_gpus():  # none on a CPU host; each GPU on a discrete-GPU host
        assert gpu.name and gpu.source in {"nvml", "nvidia-smi"}


def _zone(root: Path, index: int, name: str, millidegrees: str) -> None:
    zone = root / f"thermal_zone{index}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(name + "\n")
    (zone / "temp").write_text(millidegrees + "\n")


def test_thermal_zones_skip_offline_and_unreadable_sensors(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "cpu-thermal", "47687")
    _zone(tmp_path, 1, "gpu-thermal", "48625")
    _zone(tmp_path, 2, "cv0-thermal", "-256000")
    _zone(tmp_path, 3, "tj-thermal", "garbage")
    assert read_thermal_zones(tmp_path) == {"cpu-thermal": 47.687, "gpu-thermal": 48.625}
    state = read_thermal_state(tmp_path)
    assert state.source.startswith("sysfs")
    assert state.max_c is not None and state.max_c >= 48.625
    assert state.to_dict()["temperatures_c"]["cpu-thermal"] == 47.687


def test_a_host_without_thermal_zones(tmp_path: Path) -> None:
    assert read_thermal_zones(tmp_path / "absent") == {}
    assert ThermalState(source="none").max_c is None
