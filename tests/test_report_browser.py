"""The generated report, rendered by a real headless Chromium.

The report is Allure 3's single file, so ``file://`` works without a server.
Screenshots are kept under ``reports/artifacts/`` for a human (or CI) to look at.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from hil.progress import Progress
from hil.report.nightly import nightly
from hil.sim import Rig

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "reports" / "artifacts"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


def read_png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def require_tool(ok: bool, reason: str) -> None:
    """Skip with ``reason`` unless ``HIL_SIM_REQUIRED=1``, which makes it a failure."""
    if not ok:
        if os.environ.get("HIL_SIM_REQUIRED") == "1":
            pytest.fail(f"HIL_SIM_REQUIRED=1 but {reason}", pytrace=False)
        pytest.skip(reason)


def chromium() -> str:
    """Path of Debian's chromium (skips, or fails under HIL_SIM_REQUIRED=1, without it)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    require_tool(found is not None, "headless Chromium is not installed (apt-get install chromium)")
    assert found is not None
    return found


def browse(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run on ``url`` with a fresh profile."""
    shutil.rmtree(profile, ignore_errors=True)
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
         "--virtual-time-budget=10000", *extra, url],
        capture_output=True, text=True, timeout=120, check=False)


def rendered_text(url: str, profile: Path) -> str:
    """The visible text of the rendered DOM (scripts and styles dropped)."""
    dom = browse(url, profile, "--dump-dom").stdout
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def screenshot(url: str, profile: Path, name: str) -> Path:
    """A 1400x1000 PNG of ``url``, copied to reports/artifacts/NAME."""
    target = profile.parent / name
    browse(url, profile, f"--screenshot={target}", "--window-size=1400,1000")
    assert target.is_file(), f"chromium wrote no screenshot of {url}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy2(target, ARTIFACTS / name)
    return target


@pytest.mark.usefixtures("node_for_allure3")
def test_report_of_a_rig_run_shows_tests_target_parameter_and_infrastructure_category(
        rig_report_project: Path, sim_rig: Rig, tmp_path: Path) -> None:
    """``hil nightly`` on the rig: sim-colima runs (a product failure and a broken test),
    sim-jetson meets a real fault (its board's engine stopped): one report with both."""
    chromium()
    project = rig_report_project
    sim_rig.stop_jetson_engine()
    try:
        outcome = nightly(project, ["sim-colima", "sim-jetson"], ["test_demo.py"],
                          out=project / "nightly", report=project / "html",
                          history=project / "history", history_limit=10,
                          progress=Progress(quiet=True))
    finally:
        sim_rig.start_jetson_engine()
    codes = {run.target: run.exit_code for run in outcome.runs}
    assert codes["sim-colima"] == 1 and codes["sim-jetson"] >= 10, codes
    assert outcome.exit_code == codes["sim-jetson"] and outcome.report is not None
    index = outcome.report.resolve()
    url = index.as_uri()
    profile = tmp_path / "chromium-profile"

    overview = rendered_text(url, profile)
    for name in ("test_passes", "test_product_regression", "test_helper_crashes",
                 "test_needs_gpu", "infrastructure: sim-jetson"):
        assert name in overview, f"{name} not on the rendered report"
    assert "sim-colima" in overview and "sim-jetson" in overview  # grouped by target

    categories = rendered_text(url + "#categories", profile)
    assert "Infrastructure faults" in categories
    assert "Product failures" in categories and "Broken tests" in categories

    by_id = json.loads((index.parent / "test-results.json").read_text())["byId"]
    infra_id = next(k for k, v in by_id.items() if v["name"] == "infrastructure: sim-jetson")
    page = rendered_text(f"{url}#{infra_id}", profile)
    assert "Category: Infrastructure faults" in page
    assert re.search(r"hil infrastructure fault \[[a-z-]+\] \(exit " + str(codes["sim-jetson"])
                     + r"\)", page), page[:2000]
    regression = next(k for k, v in by_id.items() if v["name"] == "test_product_regression")
    page = rendered_text(f"{url}#{regression}", profile)
    assert "target 'sim-colima'" in page  # the target parameter, as allure-pytest quotes it

    shot = screenshot(url, profile, "report-overview.png")
    assert read_png_size(shot.read_bytes()) == (1400, 1000)
    screenshot(f"{url}#{infra_id}", profile, "report-infrastructure-fault.png")
