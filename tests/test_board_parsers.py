"""The framework's own readers of board files: ``/etc/nv_tegra_release`` and tegrastats.

hil/ does not import the product under test (onboard), so it parses what it
needs itself; these are the sample lines JetPack 5 and 6 print.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hil.backends.jetson.facts import jetpack_of, l4t_version
from hil.report.chart import panels_from_samples
from hil.ssh.telemetry import parse_sample, parse_tegrastats, sampler_command

REPO = Path(__file__).resolve().parent.parent
JP6 = ("11-22-2026 10:29:36 RAM 2147/7620MB (lfb 2x4MB) SWAP 1476/3810MB (cached 1MB) "
       "CPU [0%@729,0%@729,off,off,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 26%@[306,306] "
       "NVENC off cpu@47.687C soc2@46.718C gpu@-256C tj@48.625C VDD_IN 4556mW/4556mW "
       "VDD_CPU_GPU_CV 483mW/483mW VDD_SOC 1451mW/1451mW")
JP5 = ("RAM 3162/6854MB (lfb 36x4MB) SWAP 0/3427MB (cached 0MB) CPU [3%@1510,1%@1510] "
       "GR3D_FREQ 0% CPU@41.5C GPU@39C VDD_IN 4871/4871 VDD_CPU_GPU_CV 479/479")


@pytest.mark.parametrize(("release", "expected"), [
    ("# R36 (release), REVISION: 5.0, GCID: 41494441, BOARD: generic, EABI: aarch64, "
     "DATE: Mon Jul 28 23:16:35 UTC 2025", ("36.5.0", "6.2.2")),
    ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64",
     ("36.4.3", "6.2")),
    ("# R36 (release), REVISION: 4, GCID: 1, BOARD: generic", ("36.4.0", "6.1")),
    ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref", ("35.4.1", "5.1.2")),
    # Newer than the table: the L4T is read, its JetPack is unknown (not guessed).
    ("# R36 (release), REVISION: 6.0, GCID: 1, BOARD: generic", ("36.6.0", "")),
    ("# R38 (release), REVISION: 2.0, GCID: 1, BOARD: generic", ("38.2.0", "")),
    ("\n\n# R36 (release), REVISION: 3.0, GCID: 1\n", ("36.3.0", "6.0")),
    ("not a release line", ("", "")),
    ("# R36 (release), GCID: 1", ("", "")),
    ("", ("", "")),
])
def test_jetpack_of_nv_tegra_release(release: str, expected: tuple[str, str]) -> None:
    assert jetpack_of(release) == expected
    assert l4t_version(release) == expected[0]


def test_tegrastats_jetpack6_line_gives_the_charted_fields() -> None:
    sample = parse_tegrastats(JP6)
    assert sample["timestamp"] == "2026-11-22T10:29:36"
    assert (sample["ram_used_mb"], sample["ram_total_mb"]) == (2147, 7620)
    assert (sample["swap_used_mb"], sample["swap_total_mb"]) == (1476, 3810)
    assert sample["engines"] == {"GR3D_FREQ": {"load_pct": 26, "freq_mhz": [306, 306]}}
    # -256C is a sensor switched off.
    assert sample["temperatures_c"] == {"cpu": 47.687, "soc2": 46.718, "gpu": None, "tj": 48.625}
    assert sample["rails"]["VDD_IN"] == {"current_mw": 4556, "average_mw": 4556}
    assert set(sample["rails"]) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}


def test_tegrastats_jetpack5_line_without_units_or_timestamp() -> None:
    sample = parse_tegrastats(JP5)
    assert "timestamp" not in sample
    assert sample["ram_used_mb"] == 3162
    assert sample["engines"]["GR3D_FREQ"] == {"load_pct": 0, "freq_mhz": []}
    assert sample["temperatures_c"] == {"CPU": 41.5, "GPU": 39.0}
    assert sample["rails"]["VDD_IN"] == {"current_mw": 4871, "average_mw": 4871}


def test_a_line_without_ram_is_kept_raw() -> None:
    assert parse_tegrastats("tegrastats: permission denied") == {
        "raw": "tegrastats: permission denied"}
    assert parse_sample("nvidia-smi", "1, 2") == {"raw": "1, 2"}


def test_the_chart_finds_every_panel_in_a_parsed_sample() -> None:
    panels = panels_from_samples([{"t": 1.0, **parse_tegrastats(JP6)},
                                  {"t": 2.0, **parse_tegrastats(JP6)}])
    assert [p.title for p in panels] == ["GPU load (%)", "RAM used (MB)", "Temperature (°C)",
                                        "Power (mW)"]


def test_sampler_commands_are_quoted_argv() -> None:
    assert sampler_command("tegrastats", 250) == "exec tegrastats --interval 250"
    assert sampler_command("nvidia-smi").startswith("exec nvidia-smi --query-gpu=timestamp,")
    with pytest.raises(ValueError):
        sampler_command("top")


def test_hil_does_not_import_onboard() -> None:
    # With onboard made unimportable, the whole framework still imports.
    code = ("import sys; sys.modules['onboard'] = None\n"
            "import pkgutil, importlib, hil\n"
            "for m in pkgutil.walk_packages(hil.__path__, 'hil.'):\n"
            "    if not m.name.endswith('__main__'):\n"
            "        importlib.import_module(m.name)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stderr
    grep = subprocess.run(["grep", "-rnE", r"^\s*(import|from) onboard", "hil"], cwd=REPO,
                          capture_output=True, text=True, check=False)
    assert grep.stdout == ""
