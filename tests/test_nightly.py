"""``hil nightly``: lanes, the combined exit code, real runs on local targets and on the rig."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hil.config import load_inventory, parse_target
from hil.errors import ExitCode
from hil.progress import Progress
from hil.report.nightly import lane_of, nightly, plan_lanes, summary_table

REPO = Path(__file__).resolve().parent.parent


def test_targets_on_one_engine_share_a_lane_and_others_run_in_parallel() -> None:
    def spec(name: str, table: dict[str, object]) -> object:
        return parse_target(table, f"{name}.toml", default_name=name)

    a = spec("a", {"kind": "docker", "tier": 1, "docker": {"engine": "unix:///x.sock"}})
    b = spec("b", {"kind": "docker", "tier": 1, "docker": {"engine": "unix:///x.sock"}})
    board = spec("board", {"kind": "ssh", "tier": 2, "ssh": {"host": "jetson-1", "remote_dir": "hil"}})
    local = spec("local", {"kind": "local"})
    lanes = plan_lanes([a, b, board, local])  # type: ignore[list-item]
    assert lanes == {"docker:unix:///x.sock": [a, b], "ssh:jetson-1": [board], "local": [local]}


def test_sim_targets_and_local_are_independent() -> None:
    inventory = load_inventory(REPO)
    lanes = {lane_of(inventory.get(n)) for n in ("local", "sim-colima", "sim-jetson")}
    assert len(lanes) == 3


@pytest.mark.usefixtures("node_for_allure3")
def test_nightly_green_then_product_failure_then_infrastructure_fault(
        report_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def once(targets: list[str]) -> tuple[int, object]:
        outcome = nightly(report_project, targets, ["test_demo.py"],
                          out=report_project / "nightly", report=report_project / "html",
                          history=report_project / "history", history_limit=10,
                          progress=Progress(quiet=True))
        return outcome.exit_code, outcome

    code, outcome = once(["local-a", "local-b"])
    assert code == 0
    table = summary_table(outcome.runs)  # type: ignore[attr-defined]
    assert "local-a" in table and "local-b" in table and "all tests passed" in table

    monkeypatch.setenv("HIL_DEMO_FAIL", "1")
    code, _ = once(["local-a", "local-b"])
    assert code == int(ExitCode.TESTS_FAILED)

    monkeypatch.delenv("HIL_DEMO_FAIL")
    code, outcome = once(["local-a", "gpu-box"])
    assert code == int(ExitCode.TARGET_UNHEALTHY)
    gpu = next(r for r in outcome.runs if r.target == "gpu-box")  # type: ignore[attr-defined]
    assert gpu.statuses == {"broken": 1}
    (infra,) = [json.loads(p.read_text()) for p in gpu.results.glob("*-result.json")]
    assert infra["statusDetails"]["message"].startswith(
        "hil infrastructure fault [unhealthy] (exit 16): ")

    history = report_project / "history" / "allure3-history.jsonl"
    assert len(history.read_text().splitlines()) == 3
    summary = json.loads((report_project / "html" / "summary.json").read_text())
    assert summary["stats"]["broken"] == 1 and summary["stats"]["passed"] == 3
    saved = json.loads((outcome.folder / "nightly.json").read_text())  # type: ignore[attr-defined]
    assert saved["exit_code"] == 16
    assert [t["target"] for t in saved["targets"]] == ["local-a", "gpu-box"]


@pytest.mark.usefixtures("node_for_allure3")
def test_nightly_on_the_simulated_rig(sim_rig: object, tmp_path: Path) -> None:
    """sim-colima and sim-jetson in parallel: one report with both targets."""
    outcome = nightly(REPO, ["sim-colima", "sim-jetson"], ["suites/tier1", "-x", "-q"],
                      out=tmp_path / "nightly", report=tmp_path / "html",
                      history=tmp_path / "history", history_limit=5,
                      progress=Progress(quiet=os.environ.get("HIL_VERBOSE") != "1"))
    print(summary_table(outcome.runs))
    assert outcome.report is not None
    for run in outcome.runs:
        assert run.exit_code in (0, 1), f"{run.target}: {run.log.read_text()[-3000:]}"
        assert sum(run.statuses.values()) > 0
    env = (tmp_path / "html").parent / ".html.work" / "results" / "environment.properties"
    text = env.read_text()
    assert "sim-colima." in text and "sim-jetson." in text
