"""The worker's event forms, replayed by the controller's EventFeeder: compact and full alike."""

from __future__ import annotations

import io
import json
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from hil.report import html as hil_report
from hil.session.events import EventFeeder
from hil.worker import EventStream
from hil.worker.main import _flush_interval

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
    return [json.loads(line) for line in [*filter(None, channel.getvalue().splitlines())]]


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
    return pytester.parseconfigure("-p", "no:cacheprovider", "-p", "no:labgrid")


@pytest.fixture
def feeder(config: pytest.Config) -> EventFeeder:
    session = pytest.Session.from_config(config)
    session.items = []  # as Controller.pytest_collection leaves it
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        terminal._session = session  # as its pytest_sessionstart sets it
    return EventFeeder(config, session)


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
@pytest.mark.parametrize("direct", [True, False],
                         ids=["built directly", "through the deserializer hook"])
def test_compact_and_full_forms_rebuild_the_same_reports(
    config: pytest.Config, feeder: EventFeeder, reports: list[pytest.TestReport], direct: bool
) -> None:
    # Built directly while pytest's deserializer is the only one; through the hook otherwise.
    feeder._only_pytest = direct
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
    kinds = [json.loads(line)["ev"] for line in channel.getvalue()[len(written):].splitlines() if line]
    assert kinds == ["finish", "logstart"]


class CountingChannel(io.StringIO):
    """A channel that counts its flushes: each is one write the engine carries."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def run_quick_tests(stream: EventStream, count: int, then_start: str | None = None) -> None:
    """``count`` passed tests, then (with ``then_start``) one that starts and keeps running."""
    for i in range(count):
        nodeid, location = f"test_a.py::test_{i}", ("test_a.py", i, f"test_{i}")
        stream.pytest_runtest_logstart(nodeid, location)
        for when in ("setup", "call", "teardown"):
            stream.pytest_runtest_logreport(pytest.TestReport(
                nodeid, location, {}, "passed", None, when, [], 0.0, 0.0, 0.0, []))
        stream.pytest_runtest_logfinish(nodeid, location)
    if then_start:
        stream.pytest_runtest_logstart(then_start, ("test_a.py", count, then_start))


def test_quick_tests_share_writes_and_a_slow_tests_start_still_goes_out(
        config: pytest.Config) -> None:
    channel, copy = CountingChannel(), io.StringIO()
    stream = EventStream(channel, copy, compact=True, interval=0.2)
    stream.pytest_configure(config)
    run_quick_tests(stream, 50, then_start="test_a.py::test_slow")
    # 51 tests started within the interval: far fewer writes than tests ...
    assert channel.flushes < 10
    # ... while the record already holds every finished test and the running one.
    recorded = [json.loads(line) for line in copy.getvalue().splitlines()]
    assert [e["ev"] for e in recorded].count("finish") == 50
    assert recorded[-1]["ev"] == "logstart" and recorded[-1]["nodeid"] == "test_a.py::test_slow"
    assert [e["n"] for e in recorded] == list(range(1, len(recorded) + 1))

    def kinds() -> list[str]:
        return [json.loads(line)["ev"] for line in [*filter(None, channel.getvalue().splitlines())]]

    # The slow test runs on: its start and every earlier result go out without
    # another hook call, written by the flusher thread.
    deadline = time.monotonic() + 10
    while kinds().count("logstart") < 51 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kinds().count("finish") == 50 and kinds()[-1] == "logstart"
    assert '"test_a.py::test_slow"' in [*filter(None, channel.getvalue().splitlines())][-1]


@pytest.mark.parametrize("interval, copy", [(0, io.StringIO()), (0.2, None)],
                         ids=["no-interval", "no-record-to-fall-back-on"])
def test_every_test_start_is_written_at_once(
        config: pytest.Config, interval: float, copy: io.StringIO | None) -> None:
    channel = CountingChannel()
    stream = EventStream(channel, copy, compact=True, interval=interval)
    stream.pytest_configure(config)
    before = channel.flushes
    run_quick_tests(stream, 5)
    assert channel.flushes - before == 5


def test_nothing_follows_the_exit_event(config: pytest.Config) -> None:
    channel = io.StringIO()
    stream = EventStream(channel, io.StringIO(), compact=True, interval=0.05)
    stream.pytest_configure(config)
    run_quick_tests(stream, 3)
    stream.finish(1)
    stream.send("logstart", nodeid="late", location=["a", 0, "late"])
    stream.flush()  # what the flusher thread would do
    events = [json.loads(line) for line in [*filter(None, channel.getvalue().splitlines())]]
    assert events[-1]["ev"] == "exit" and events[-1]["code"] == 1
    assert sum(e["ev"] == "logstart" for e in events) == 3


def test_a_cut_short_channel_is_completed_from_the_record_once(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    # Replayed into a session of its own: no Allure listener, no terminal in between.
    config = pytester.parseconfigure("-p", "no:cacheprovider", "-p", "no:labgrid",
                                     "-p", "no:allure_pytest", "-p", "no:terminal")
    feeder = EventFeeder(config, pytest.Session.from_config(config))
    channel, copy = io.StringIO(), io.StringIO()
    stream = EventStream(channel, copy, compact=True, interval=60)
    stream.pytest_configure(config)
    stream.send("collection_finish", nodeids=[f"test_a.py::test_{i}" for i in range(6)])
    run_quick_tests(stream, 5, then_start="test_a.py::test_5")
    # The container dies here: the channel carried the events up to the collection,
    # the record has them all.  Stray output on the channel stays stray.
    feeder.feed(channel.getvalue().encode() + b"[1, 2]\n")
    hello = json.loads(next(filter(None, channel.getvalue().splitlines())))
    feeder.report_keys = list(hello["report_keys"])
    assert feeder.finished == 0 and feeder.running == "test_a.py::test_0"
    (tmp_path / "events.jsonl").write_text(copy.getvalue() + '{"ev": "logst')  # cut mid-line
    assert feeder.recover(tmp_path / "events.jsonl") == 11  # 5 starts, 5 finishes, 1 start
    assert feeder.finished == 5 and feeder.running == "test_a.py::test_5"
    assert feeder.recover(tmp_path / "events.jsonl") == 0  # nothing twice
    assert feeder.finished == 5 and feeder.stray == ["[1, 2]"]


def test_the_running_test_is_told_by_collection_order_when_its_start_is_still_queued(
        feeder: EventFeeder) -> None:
    nodeids = ["test_a.py::test_0", "test_a.py::test_1", "test_a.py::test_2"]
    feeder.handle({"ev": "collection_finish", "nodeids": nodeids})
    assert feeder.running == "test_a.py::test_0"  # the run died before any start arrived
    feeder.handle({"ev": "logstart", "nodeid": nodeids[0], "location": ["test_a.py", 0, "t"]})
    feeder.handle({"ev": "logfinish", "nodeid": nodeids[0], "location": ["test_a.py", 0, "t"]})
    assert feeder.running == "test_a.py::test_1"
    feeder.handle({"ev": "logstart", "nodeid": nodeids[2], "location": ["test_a.py", 2, "t"]})
    assert feeder.running == "test_a.py::test_2"  # a start that arrived is believed
    feeder.handle({"ev": "logfinish", "nodeid": nodeids[2], "location": ["test_a.py", 2, "t"]})
    assert feeder.running is None  # the last one finished


def test_chart_markers_read_the_call_of_a_finish_event(tmp_path: Path,
                                                       config: pytest.Config) -> None:
    events = stream_events(config, [phase("setup"), phase("call"), phase("teardown")], True)
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    markers = hil_report.test_markers(hil_report.RunFolder(tmp_path, "box", "r1"), [])
    assert [(m.kind, m.t) for m in markers if m.kind == "passed"] == [("passed", 100.375)]


@pytest.mark.parametrize("value, seconds, warned", [
    (None, 0.02, False), ("", 0.02, False), ("0", 0.0, False), ("250", 0.25, False),
    ("inf", 0.02, True), ("nan", 0.02, True), ("-5", 0.02, True), ("soon", 0.02, True),
])
def test_the_event_interval_setting(capsys: pytest.CaptureFixture[str], value: str | None,
                                    seconds: float, warned: bool) -> None:
    assert _flush_interval(value) == pytest.approx(seconds)
    err = capsys.readouterr().err
    assert ("HIL_EVENT_INTERVAL_MS" in err) == warned
