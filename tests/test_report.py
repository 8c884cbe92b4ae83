"""``hil report``: staging of real allure-pytest results, categories, environment, chart, Allure 3."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import attr
import numpy as np
import pytest
from matplotlib.image import imread

from hil.errors import ERROR_KINDS, ReportToolMissingError
from hil.progress import Progress
from hil.report.allure import infrastructure_result, result_from_json, write_infrastructure_result
from hil.report.allure3 import select_engine
from hil.report.chart import (
    CHART_HINT,
    OUTCOME_COLOURS,
    PALETTE,
    Marker,
    panels_from_samples,
    render_chart,
    telemetry_csv,
)
from hil.report.html import (
    ReportRequest,
    Stager,
    build_report,
    executor_from_env,
    load_categories,
    merge_environments,
    nodeid_key,
)

REPO = Path(__file__).resolve().parent.parent
TEGRASTATS = ("11-22-2026 10:29:{s:02d} RAM {ram}/7620MB (lfb 2x4MB) SWAP 10/3810MB (cached 1MB) "
              "CPU [10%@729,5%@729,off,off] GR3D_FREQ {gpu}% cpu@47.5C soc2@46.7C gpu@{temp}C "
              "tj@{temp}C VDD_IN {mw}mW/4556mW VDD_CPU_GPU_CV 480mW/483mW")


def run_local(project: Path, target: str, results: Path, fail: bool = False) -> int:
    """A real pytest run of the demo project on a local target."""
    env = {**os.environ, "HIL_DEMO_FAIL": "1" if fail else "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", f"--target={target}", "--alluredir", str(results),
         "-p", "no:cacheprovider", "test_demo.py"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False)
    return proc.returncode


def samples(t0: float, n: int = 20) -> list[dict[str, object]]:
    """Telemetry samples as the jetson backend stores them: parse_line(...).to_dict() + t."""
    from onboard.diag.tegrastats import parse_line

    out: list[dict[str, object]] = []
    for i in range(n):
        line = TEGRASTATS.format(s=i, ram=2000 + 10 * i, gpu=min(99, 5 * i), temp=48 + i * 0.5,
                                 mw=4500 + 20 * i)
        sample = parse_line(line).to_dict()
        sample["t"] = t0 + i
        out.append(sample)
    return out


def rgb_pixels(png: bytes) -> Any:
    """A PNG as an (height, width, 3) array of 0-255 ints, read by matplotlib."""
    return (imread(io.BytesIO(png))[..., :3] * 255).round().astype(int)


def write_run_folder(reports: Path, target: str, results: Path) -> Path:
    """A run folder as the session writes it, around real allure results."""
    run_id = f"20261122-102936-{target}"
    run = reports / "runs" / run_id
    (run / "allure-results").mkdir(parents=True)
    for path in results.iterdir():
        (run / "allure-results" / path.name).write_bytes(path.read_bytes())
    starts = [json.loads(p.read_text())["start"] / 1000 for p in results.glob("*-result.json")]
    t0 = min(starts) - 2
    (run / "telemetry.jsonl").write_text(
        "".join(json.dumps(s) + "\n" for s in samples(t0)), encoding="utf-8")
    (run / "preflight.json").write_text(json.dumps({
        "target": target, "ok": True,
        "checks": [{"name": "ssh", "ok": True, "detail": "connected", "required": True},
                   {"name": "hostname", "ok": True, "detail": "board-7", "required": False}],
        "facts": {"L4T": "R36.4.3", "JetPack": "6.2", "hostname": "board-7",
                  "GPU": "Orin (nvgpu)", "CUDA": "12.6"}}), encoding="utf-8")
    (run / "timings.json").write_text(json.dumps(
        {"preflight": 0.5, "image": 3.0, "container start": 0.7, "tests": 2.0, "fetch": 0.2}))
    (run / "run.json").write_text(json.dumps({
        "target": target, "run_id": run_id, "exit_code": 1, "image": "hil-deps:1234abcd",
        "started": t0, "finished": t0 + 20}))
    (run / "build.log").write_text("Step 1/4 : FROM hil-sim/l4t-base\nSuccessfully built\n")
    (run / "pytest.log").write_text(
        "=== FAILURES ===\n_____ test_product_regression _____\n\n"
        "E   AssertionError: product regression: 2 * 2 != 4\n"
        "test_demo.py:11: AssertionError\n=== short test summary info ===\n")
    report = {"nodeid": "test_demo.py::test_product_regression", "when": "call",
              "outcome": "failed", "longrepr": "AssertionError: product regression",
              "duration": 0.01, "location": ["test_demo.py", 10, "test_product_regression"],
              "keywords": {}, "sections": [["Captured stdout call", "2 * 2 = 5\n"]],
              "user_properties": [], "$report_type": "TestReport"}
    events = [{"ev": "logstart", "nodeid": report["nodeid"], "t": t0 + 5},
              {"ev": "logreport", "report": report, "t": t0 + 9},
              {"ev": "sessionfinish", "exitstatus": 1, "t": t0 + 10}]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run


@pytest.mark.parametrize("kind", sorted(ERROR_KINDS))
def test_infrastructure_category_matches_every_hil_error_kind(kind: str) -> None:
    by_name = {c["name"]: c for c in load_categories(REPO)}
    infra, product, broken = (by_name["Infrastructure faults"], by_name["Product failures"],
                              by_name["Broken tests"])
    message = infrastructure_result("sim-jetson", kind, int(ERROR_KINDS[kind].exit_code),
                                    "target 'sim-jetson': board down").statusDetails.message
    # Allure 2 (Java) matches the whole message; Allure 3 (JavaScript) searches in it.
    assert re.fullmatch(infra["messageRegex"], message)
    assert re.search(infra["messageRegex"], message)
    assert infra["matchedStatuses"] == ["broken"]
    assert product["matchedStatuses"] == ["failed"] and broken["matchedStatuses"] == ["broken"]
    assert not re.search(infra["messageRegex"], "RuntimeError: helper crashed")


def test_environment_of_several_targets_is_prefixed_by_target() -> None:
    merged = merge_environments({
        "sim-jetson": {"target": "sim-jetson", "L4T": "R36.4.3", "docker version": "26.1"},
        "sim-colima": {"target": "sim-colima", "torch.version": "2.3"}})
    assert merged["targets"] == "sim-colima, sim-jetson"
    assert merged["sim-jetson.L4T"] == "R36.4.3"
    assert merged["sim-jetson.docker_version"] == "26.1"  # no spaces: Java properties
    assert merged["sim-colima.torch.version"] == "2.3"
    assert "sim-jetson.target" not in merged


@pytest.mark.parametrize(("env", "name", "url"), [
    ({"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "lab/hil", "GITHUB_RUN_ID": "77",
      "GITHUB_RUN_NUMBER": "12", "GITHUB_WORKFLOW": "nightly"}, "GitHub Actions",
     "https://github.com/lab/hil/actions/runs/77"),
    ({"GITLAB_CI": "true", "CI_PIPELINE_IID": "12", "CI_JOB_NAME": "nightly",
      "CI_JOB_URL": "https://gitlab.example/lab/hil/-/jobs/5"}, "GitLab CI",
     "https://gitlab.example/lab/hil/-/jobs/5"),
    ({"JENKINS_URL": "https://ci.example/", "BUILD_NUMBER": "12",
      "BUILD_URL": "https://ci.example/job/hil/12/"}, "Jenkins", "https://ci.example/job/hil/12/"),
])
def test_executor_is_filled_from_the_ci_variables(env: dict[str, str], name: str,
                                                   url: str) -> None:
    executor = executor_from_env(env)
    assert executor is not None
    assert (executor["name"], executor["buildUrl"], executor["buildOrder"]) == (name, url, 12)


def test_no_executor_outside_ci() -> None:
    assert executor_from_env({"HOME": "/root"}) is None


def test_nodeid_key_matches_allure_full_name() -> None:
    assert nodeid_key("suites/tier1/test_x.py::TestA::test_b[cpu-1]") == (
        "suites.tier1.test_x.TestA#test_b", "[cpu-1]")


def test_staging_adds_log_tail_run_fixture_and_per_target_environment(
        report_project: Path) -> None:
    plain = report_project / "plain-results"
    assert run_local(report_project, "local-a", plain, fail=True) == 1
    reports = report_project / "reports-b"
    fresh = report_project / "b-results"
    assert run_local(report_project, "local-b", fresh, fail=True) == 1
    run = write_run_folder(reports, "local-b", fresh)

    stager = Stager(report_project / "stage", Progress(quiet=True))
    stager.add_folder(plain)
    stager.add_folder(run / "allure-results")
    staged = stager.finish(load_categories(REPO), None)

    assert set(staged.targets) == {"local-a", "local-b"}
    assert staged.targets["local-b"].statuses == {"passed": 1, "failed": 1, "broken": 1,
                                                  "skipped": 1}
    results = [json.loads(p.read_text()) for p in staged.folder.glob("*-result.json")]
    assert len(results) == 8
    failed_b = next(r for r in results if r["status"] == "failed"
                    and {"name": "target", "value": "'local-b'"} in r["parameters"])
    tail = next(a for a in failed_b["attachments"] if a["name"].startswith("remote log tail"))
    text = (staged.folder / tail["source"]).read_text()
    assert "product regression" in text and "Captured stdout call" in text
    assert "test_demo.py:11: AssertionError" in text  # from pytest.log
    (container,) = [json.loads(p.read_text()) for p in staged.folder.glob("*-container.json")
                    if "hil run" in p.read_text()]
    assert set(container["children"]) == {r["uuid"] for r in results
                                          if {"name": "target", "value": "'local-b'"}
                                          in r["parameters"]}
    names = {a["name"]: a for a in container["befores"][0]["attachments"]}
    assert {"build log", "pytest.log (in target)", "preflight", "phase timings",
            "telemetry (CSV)", "telemetry chart", "run.json"} <= set(names)
    assert "ok   ssh" in (staged.folder / names["preflight"]["source"]).read_text()
    png = (staged.folder / names["telemetry chart"]["source"]).read_bytes()
    assert rgb_pixels(png).shape[1] == 1200
    assert names["telemetry chart"]["type"] == "image/png"
    env = (staged.folder / "environment.properties").read_text().splitlines()
    assert "local-b.L4T=R36.4.3" in env and "local-b.board.hostname=board-7" in env
    assert "local-b.image=hil-deps:1234abcd" in env and "local-b.GPU=Orin (nvgpu)" in env
    assert any(line.startswith("local-a.python=") for line in env)
    assert json.loads((staged.folder / "categories.json").read_text())[0]["name"] == (
        "Infrastructure faults")


def test_results_read_into_allure_commons_models_lose_nothing(report_project: Path) -> None:
    results = report_project / "results"
    assert run_local(report_project, "local-a", results, fail=True) == 1
    files = sorted(results.glob("*-result.json"))
    assert len(files) == 4
    for path in files:
        data = json.loads(path.read_text())
        again = attr.asdict(result_from_json(data), filter=lambda _, v: v or v is False)
        assert again == data, path.name


def test_telemetry_chart_draws_series_and_marks_test_boundaries() -> None:
    data = samples(1000.0, n=30)
    markers = [Marker(1005.0, "start"), Marker(1020.0, "failed"), Marker(1029.0, "passed")]
    pixels = rgb_pixels(render_chart(panels_from_samples(data), markers, width=600,
                                     title="sim-jetson"))
    height, width = pixels.shape[:2]
    assert width == 600 and height == 4 * 170 + 40 + 60

    def near(colour: tuple[int, int, int]) -> Any:
        return np.abs(pixels - np.array(colour)).max(axis=2) <= 10

    def line_x(colour: tuple[int, int, int], share: float) -> float:
        """Mean x of the columns that are ``colour`` over ``share`` of the height."""
        columns = np.flatnonzero(near(colour).sum(axis=0) > share * height)
        assert columns.size, f"no vertical line of {colour}"
        assert columns.max() - columns.min() <= 3  # one line, not a smear
        return float(columns.mean())

    start = line_x(OUTCOME_COLOURS["start"], 0.15)  # dashed
    failed = line_x(OUTCOME_COLOURS["failed"], 0.3)
    passed = line_x(OUTCOME_COLOURS["passed"], 0.3)
    # One time axis for all: 15 s of the 24 s from the start line to the passed line.
    assert (failed - start) / (passed - start) == pytest.approx(15 / 24, abs=0.02)
    assert not (near(OUTCOME_COLOURS["broken"]).sum(axis=0) > 0.3 * height).any()
    assert near(PALETTE[0]).sum() > 500  # the first series of each panel was drawn
    titles = [p.title for p in panels_from_samples(data)]
    assert titles == ["GPU load (%)", "RAM used (MB)", "Temperature (°C)", "Power (mW)"]


def test_without_matplotlib_the_csv_is_attached_and_one_line_says_how_to_get_the_chart(
        tmp_path: Path) -> None:
    folders = []
    for target in ("box-a", "box-b"):
        results = tmp_path / f"{target}-results"
        write_infrastructure_result(results, target, "unhealthy", 16, "no CUDA in the container")
        folders.append(write_run_folder(tmp_path / "reports", target, results) / "allure-results")
    stage = tmp_path / "stage"
    blocked = ("import sys; sys.modules['matplotlib'] = None\n"  # import matplotlib fails
               "from pathlib import Path\n"
               "from hil.progress import Progress\n"
               "from hil.report.html import Stager\n"
               "stager = Stager(Path(sys.argv[1]), Progress())\n"
               "for folder in sys.argv[2:]:\n"
               "    stager.add_folder(Path(folder))\n"
               "stager.finish([], None)\n")
    proc = subprocess.run([sys.executable, "-c", blocked, str(stage), *map(str, folders)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [f"hil: {CHART_HINT}"]
    assert "pip install 'pytest-hil[chart]'" in CHART_HINT
    containers = [json.loads(p.read_text()) for p in stage.glob("*-container.json")]
    assert len(containers) == 2
    for container in containers:
        names = {a["name"]: a["source"] for a in container["befores"][0]["attachments"]}
        assert "telemetry chart" not in names
        csv = (stage / names["telemetry (CSV)"]).read_text().splitlines()
        assert csv[0].startswith("t,elapsed_s,") and len(csv) == 21


def test_telemetry_csv_has_one_row_per_sample_and_every_numeric_field() -> None:
    lines = telemetry_csv(samples(1000.0, n=5)).splitlines()
    header = lines[0].split(",")
    assert header[:2] == ["t", "elapsed_s"] and len(lines) == 6
    assert "engines.GR3D_FREQ.load_pct" in header and "rails.VDD_IN.current_mw" in header
    row = dict(zip(header, lines[2].split(","), strict=True))
    assert row["elapsed_s"] == "1.000" and row["ram_used_mb"] == "2010"


def test_without_node_or_java_the_message_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no node, npm, java or allure here
    with pytest.raises(ReportToolMissingError) as info:
        select_engine(tmp_path, Progress(quiet=True))
    assert "apt-get install -y nodejs npm" in str(info.value)
    assert int(info.value.exit_code) == 4


@pytest.mark.usefixtures("node_for_allure3")
def test_allure3_report_keeps_history_trimmed_to_the_limit(report_project: Path) -> None:
    results = report_project / "results"
    history = report_project / "history"
    for fail in (False, True, False):
        run_local(report_project, "local-a", results, fail=fail)
        outcome = build_report(ReportRequest(
            results=(results,), output=report_project / "html", root=report_project,
            history=history, history_limit=2), Progress(quiet=True))
    assert outcome.engine.kind == "allure3" and outcome.engine.version == "3.18.0"
    assert outcome.history_runs == 2
    assert len((history / "allure3-history.jsonl").read_text().splitlines()) == 2
    summary = json.loads((report_project / "html" / "summary.json").read_text())
    assert summary["stats"]["total"] == 4 and summary["stats"]["passed"] == 3


def test_report_on_a_missing_or_empty_folder_is_a_usage_error_and_writes_nothing(
        report_project: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from hil.cli import main

    monkeypatch.chdir(report_project)
    output = report_project / "html"
    history = report_project / "history"
    missing = report_project / "no-such-results"
    assert main(["report", str(missing), "-o", str(output), "--history", str(history)]) == 4
    assert f"no Allure results folder at {missing}" in capsys.readouterr().err
    empty = report_project / "empty-results"
    empty.mkdir()
    (empty / "environment.properties").write_text("target=local-a\n")
    assert main(["report", str(empty), "-o", str(output), "--history", str(history)]) == 4
    err = capsys.readouterr().err
    assert f"no Allure results in {empty}" in err and "run the tests first" in err
    assert not output.exists() and not history.exists()
