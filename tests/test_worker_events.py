"""The worker's event forms, replayed by the controller's EventFeeder: compact and full alike."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from hil import report as hil_report
from hil.session import EventFeeder
from hil.worker import EventStream

NODEID = "test_a.py::test_x"
LOCATION = ("test_a.py", 3, "test_x")
KEYWORDS = {"test_x": 1, "test_a.py": 1, "project": 1}


def phase(when: str, outcome: str = "passed", **extra: Any) -> pytest.TestReport:
    """A report as pytest's runner makes it, with distinct timings per phase."""
    start = {"setup": 100.0, "call": 100.25, "teardown": 100.75}[when]
    return pytest.TestReport(NODEID, LOCATION, dict(KEYWORDS), outcome,
                             extra.pop("longrepr", None), when, extra.pop("sections", []),
                             0.125, start, start + 0.125, extra.pop("user_properties", []),
                             **extra)


def stream_events(config: pytest.Config, reports: list[pytest.TestReport], compact: bool,
                  warn_before: str | None = None) -> list[dict[str, Any]]:
    """The events one test with ``reports`` makes the worker send (hello included)."""
    channel = io.StringIO()
    stream = EventStream(channel, compact=compact)
    stream.pytest_configure(config)
    stream.pytest_runtest_logstart(NODEID, LOCATION)
    for report in reports:
        if report.when == warn_before:
            stream.pytest_warning_recorded(
                warnings.WarningMessage(UserWarning("careful"), UserWarning, "test_a.py", 4),
                "runtest", NODEID, None)
        stream.pytest_runtest_logreport(report)
    stream.pytest_runtest_logfinish(NODEID, LOCATION)
    stream.flush()
    return [json.loads(line) for line in channel.getvalue().splitlines()]


def replayed(feeder: EventFeeder, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reports the controller rebuilds from ``events``, as their attribute dicts."""
    reports: list[Any] = []
    for event in events:
        if event["ev"] == "hello":
            feeder.report_keys = list(event.get("report_keys") or ())
        elif event["ev"] == "logreport":
            reports.append(feeder._report(event["report"]))
        elif event["ev"] == "finish":
            reports.extend(feeder._passed_reports(event))
    # Key order too: it is what a re-serialization of the report would write.
    return [{"keys": list(vars(r)), **vars(r)} for r in reports]


@pytest.fixture
def config(pytester: pytest.Pytester) -> pytest.Config:
    return pytester.parseconfigure("-p", "no:cacheprovider")


@pytest.fixture
def feeder(config: pytest.Config) -> EventFeeder:
    return EventFeeder(config, pytest.Session.from_config(config))


def test_passed_test_without_output_is_one_finish_event(config: pytest.Config) -> None:
    events = stream_events(config, [phase("setup"), phase("call"), phase("teardown")], True)
    assert [e["ev"] for e in events] == ["hello", "logstart", "finish"]
    finish = events[-1]
    assert finish["nodeid"] == NODEID and finish["keywords"] == KEYWORDS
    assert finish["passed"] == [["setup", 0.125, 100.0, 100.125], ["call", 0.125, 100.25, 100.375],
                                ["teardown", 0.125, 100.75, 100.875]]
    assert events[0]["report_keys"][-1] == "$report_type"


def test_full_form_is_kept_without_compact(config: pytest.Config) -> None:
    events = stream_events(config, [phase("setup"), phase("call"), phase("teardown")], False)
    assert [e["ev"] for e in events] == ["hello", "logstart", "logreport", "logreport",
                                         "logreport", "logfinish"]
    assert "report_keys" not in events[0]


@pytest.mark.parametrize("reports", [
    pytest.param([phase("setup"), phase("call"), phase("teardown")], id="all passed"),
    pytest.param([phase("setup"), phase("call", sections=[("Captured stdout call", "hi\n")]),
                  phase("teardown", sections=[("Captured stdout call", "hi\n")])],
                 id="captured output"),
    pytest.param([phase("setup"), phase("call", "failed", longrepr="assert 1 == 2"),
                  phase("teardown")], id="failed call"),
    pytest.param([phase("setup"), phase("call", user_properties=[("answer", 42)]),
                  phase("teardown", user_properties=[("answer", 42)])], id="user properties"),
    pytest.param([phase("setup"), phase("call", wasxfail="flaky"), phase("teardown")],
                 id="extra attribute"),
    pytest.param([phase("setup", "skipped", longrepr=("test_a.py", 3, "Skipped: no")),
                  phase("teardown")], id="skipped at setup"),
])
def test_compact_and_full_forms_rebuild_the_same_reports(
    config: pytest.Config, feeder: EventFeeder, reports: list[pytest.TestReport]
) -> None:
    full = replayed(feeder, stream_events(config, reports, compact=False))
    compact = replayed(feeder, stream_events(config, reports, compact=True))
    assert compact == full
    assert [r["when"] for r in compact] == [r.when for r in reports]


def test_only_plain_passed_phases_are_compact(config: pytest.Config) -> None:
    events = stream_events(config, [
        phase("setup"), phase("call", sections=[("Captured stdout call", "hi\n")]),
        phase("teardown", sections=[("Captured stdout call", "hi\n")])], compact=True)
    assert [e["ev"] for e in events] == ["hello", "logstart", "logreport", "logreport",
                                         "logreport", "logfinish"]
    events = stream_events(config, [phase("setup"), phase("call", "failed", longrepr="boom"),
                                    phase("teardown")], compact=True)
    assert [e["ev"] for e in events] == ["hello", "logstart", "logreport", "logreport", "finish"]
    assert [p[0] for p in events[-1]["passed"]] == ["teardown"]


def test_a_warning_sends_the_phases_before_it_in_order(config: pytest.Config) -> None:
    events = stream_events(config, [phase("setup"), phase("call"), phase("teardown")],
                           compact=True, warn_before="teardown")
    assert [e["ev"] for e in events] == ["hello", "logstart", "logreport", "logreport",
                                         "warning", "finish"]
    assert [e["report"]["when"] for e in events if e["ev"] == "logreport"] == ["setup", "call"]


def test_test_events_are_written_with_the_next_test_start(config: pytest.Config) -> None:
    channel = io.StringIO()
    stream = EventStream(channel, compact=True)
    stream.pytest_configure(config)
    stream.pytest_runtest_logstart(NODEID, LOCATION)
    written = channel.getvalue()
    for when in ("setup", "call", "teardown"):
        stream.pytest_runtest_logreport(phase(when))
    stream.pytest_runtest_logfinish(NODEID, LOCATION)
    assert channel.getvalue() == written  # nothing new until the next test starts
    stream.pytest_runtest_logstart("test_a.py::test_y", ("test_a.py", 9, "test_y"))
    kinds = [json.loads(line)["ev"] for line in channel.getvalue()[len(written):].splitlines()]
    assert kinds == ["finish", "logstart"]


def test_chart_markers_read_the_call_of_a_finish_event(tmp_path: Path,
                                                       config: pytest.Config) -> None:
    events = stream_events(config, [phase("setup"), phase("call"), phase("teardown")], True)
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    markers = hil_report.test_markers(hil_report.RunFolder(tmp_path, "box", "r1"), [])
    assert [(m.kind, m.t) for m in markers if m.kind == "passed"] == [("passed", 100.375)]
