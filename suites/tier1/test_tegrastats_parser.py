"""tegrastats lines from JetPack 6 boards, parsed into samples; malformed lines are clear errors."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from onboard.diag.tegrastats import (
    EngineLoad,
    PowerRail,
    TegrastatsSample,
    parse_line,
    parse_lines,
)
from onboard.errors import ParseError

pytestmark = pytest.mark.tier1

#: Orin Nano 8 GB, JetPack 6.2, two cores offline (nvpmodel 7 W).
ORIN_NANO = (
    "11-22-2026 10:29:36 RAM 2147/7620MB (lfb 2x4MB) SWAP 1476/3810MB (cached 1MB) "
    "CPU [0%@729,0%@729,off,off,0%@729,0%@729] GR3D_FREQ 0% cpu@47.687C soc2@46.718C "
    "gpu@48.625C tj@48.625C VDD_IN 4556mW/4556mW VDD_CPU_GPU_CV 483mW/483mW "
    "VDD_SOC 1451mW/1451mW"
)
#: Orin NX under load: GPU clock in brackets, EMC and VIC, an offline CV sensor.
ORIN_NX_LOADED = (
    "03-14-2026 08:00:01 RAM 5321/15656MB (lfb 118x4MB) SWAP 0/7828MB (cached 0MB) "
    "CPU [34%@1984,28%@1984,41%@1984,22%@1984,12%@1984,9%@1984,15%@1984,30%@1984] "
    "EMC_FREQ 23%@3199 GR3D_FREQ 26%@[306] VIC_FREQ 0%@115 APE 174 NVENC off "
    "cpu@58.125C soc2@55.5C soc0@56.25C cv0@-256C gpu@60.843C tj@60.843C soc1@55.968C "
    "cv2@-256C cv1@-256C VDD_IN 12840mW/10120mW VDD_CPU_GPU_CV 5120mW/3988mW "
    "VDD_SOC 3011mW/2870mW"
)
#: AGX Orin without --timestamp, GPU reported per GPC.
AGX_ORIN = (
    "RAM 14021/30697MB (lfb 2391x4MB) SWAP 0/15348MB (cached 0MB) "
    "CPU [3%@2201,1%@2201,0%@2201,0%@2201,2%@2201,0%@2201,0%@2201,0%@2201,off,off,off,off] "
    "GR3D_FREQ 99%@[1300,1300] cpu@49.9C gpu@51.2C VDD_GPU_SOC 9182mW/9182mW "
    "VDD_CPU_CV 1180mW/1180mW VIN_SYS_5V0 4230mW/4230mW"
)


def test_the_orin_nano_example_line() -> None:
    sample = parse_line(ORIN_NANO)
    assert sample.timestamp == datetime(2026, 11, 22, 10, 29, 36)
    assert (sample.ram_used_mb, sample.ram_total_mb) == (2147, 7620)
    assert (sample.lfb_blocks, sample.lfb_block_mb) == (2, 4)
    assert (sample.swap_used_mb, sample.swap_total_mb, sample.swap_cached_mb) == (1476, 3810, 1)
    assert len(sample.cpus) == 6
    assert sample.online_cpus == 4
    assert [c.online for c in sample.cpus] == [True, True, False, False, True, True]
    assert sample.cpus[0].load_pct == 0 and sample.cpus[0].freq_mhz == 729
    assert sample.gpu_load_pct == 0 and sample.gpu_freq_mhz == ()
    assert sample.temperatures_c == {"cpu": 47.687, "soc2": 46.718, "gpu": 48.625, "tj": 48.625}
    assert sample.rails["VDD_IN"] == PowerRail(4556, 4556)
    assert sample.input_power_mw == 4556
    assert set(sample.rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    assert sample.unparsed == ()


def test_a_loaded_orin_nx_line_with_offline_sensors_and_engine_clocks() -> None:
    sample = parse_line(ORIN_NX_LOADED)
    assert sample.gpu_load_pct == 26 and sample.gpu_freq_mhz == (306,)
    assert sample.engines["EMC_FREQ"] == EngineLoad(23, (3199,))
    assert sample.engines["VIC_FREQ"] == EngineLoad(0, (115,))
    assert sample.engines["APE"] == EngineLoad(None, (174,))
    assert sample.engines["NVENC"] == EngineLoad(None, (), online=False)
    assert sample.offline_sensors == ("cv0", "cv2", "cv1")
    assert sample.temperatures_c["cv0"] is None
    assert sample.temperatures_c["gpu"] == pytest.approx(60.843)
    assert sample.rails["VDD_IN"] == PowerRail(12840, 10120)
    assert sample.online_cpus == 8 and sample.cpus[2].load_pct == 41


def test_an_agx_orin_line_without_timestamp_and_with_per_gpc_clocks() -> None:
    sample = parse_line(AGX_ORIN)
    assert sample.timestamp is None
    assert sample.gpu_load_pct == 99 and sample.gpu_freq_mhz == (1300, 1300)
    assert sample.online_cpus == 8 and len(sample.cpus) == 12
    assert sample.input_power_mw is None  # this board names its input rail differently
    assert sample.rails["VIN_SYS_5V0"].current_mw == 4230


@pytest.mark.parametrize("line", [ORIN_NANO, ORIN_NX_LOADED, AGX_ORIN])
def test_to_dict_is_json_and_round_trips(line: str) -> None:
    sample = parse_line(line)
    data = json.loads(json.dumps(sample.to_dict()))
    assert TegrastatsSample.from_dict(data) == sample


def test_unknown_tokens_of_a_newer_tegrastats_are_kept_not_fatal() -> None:
    sample = parse_line("RAM 100/200MB NEWTHING[1|2] GR3D_FREQ 5%")
    assert sample.unparsed == ("NEWTHING[1|2]",)
    assert sample.gpu_load_pct == 5


def test_parse_lines_skips_blank_lines() -> None:
    samples = list(parse_lines([ORIN_NANO, "", "  ", AGX_ORIN]))
    assert len(samples) == 2


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("", "empty line"),
        ("   \n", "empty line"),
        ("tegrastats: command not found", "no 'RAM used/totalMB' field"),
        ("11-22-2026 10:29:36 SWAP 0/100MB", "no 'RAM used/totalMB' field"),
        ("RAM 2147/MB SWAP 0/100MB", "malformed RAM field"),
        ("RAM 1/2MB SWAP lots", "malformed SWAP field"),
        ("RAM 1/2MB CPU [0%@729,0%@72", "malformed CPU field"),
        ("RAM 1/2MB CPU [0%@729,busy]", "bad CPU core entry 'busy'"),
        ("RAM 1/2MB GR3D_FREQ high", "malformed GR3D_FREQ field"),
        ("13-45-2026 10:29:36 RAM 1/2MB", "bad timestamp"),
    ],
)
def test_a_malformed_line_is_a_parse_error_saying_what_is_wrong(line: str, reason: str) -> None:
    with pytest.raises(ParseError, match="cannot parse tegrastats line") as caught:
        parse_line(line)
    assert reason in caught.value.reason
