"""The event protocol on the host's side: line cap, sequence, nonce, claimed exit, fuzzing.

The channel is written by the container, where any process may open it; these
tests feed the host's EventFeeder what such a process could write and check
that nothing escapes it and nothing it says is believed without a check.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil.errors import ConfigError
from hil.session.events import EventFeeder
from hil.worker import EventStream
from hil.worker.protocol import EVENTS, PROTOCOL, LineSplitter, decode, problem

LOCATION = ["test_a.py", 0, "test_x"]


@pytest.fixture
def config(pytester: pytest.Pytester) -> pytest.Config:
    # A session of its own, without terminal or Allure in between: the feeder's own rules
    # (nor labgrid's plugin, which cannot be configured twice in one process).
    return pytester.parseconfigure("-p", "no:cacheprovider", "-p", "no:allure_pytest",
                                   "-p", "no:terminal", "-p", "no:labgrid")


_sessions: dict[int, pytest.Session] = {}


def make_feeder(config: pytest.Config, **kwargs: Any) -> EventFeeder:
    """A feeder on ``config``'s session (made once: a config registers one session)."""
    session = _sessions.get(id(config))
    if session is None or session.config is not config:
        session = _sessions[id(config)] = pytest.Session.from_config(config)
        session.items = []
    return EventFeeder(config, session, **kwargs)


def line(**event: Any) -> bytes:
    return json.dumps(event).encode() + b"\n"


def a_run(nodeids: list[str], failed: str = "", nonce: str = "") -> list[bytes]:
    """The lines of a run of ``nodeids`` in full form (``failed`` fails in its call)."""
    events: list[dict[str, Any]] = [{"ev": "hello", "protocol": PROTOCOL, "workers": 0},
                                    {"ev": "collection_finish", "nodeids": nodeids}]
    for nodeid in nodeids:
        events.append({"ev": "logstart", "nodeid": nodeid, "location": LOCATION})
        outcome = "failed" if nodeid == failed else "passed"
        events.append({"ev": "logreport", "report": {
            "$report_type": "TestReport", "nodeid": nodeid, "location": LOCATION,
            "keywords": {}, "outcome": outcome, "longrepr": None, "when": "call",
            "user_properties": [], "sections": [], "duration": 0.0, "start": 0.0,
            "stop": 0.0}})
        events.append({"ev": "logfinish", "nodeid": nodeid, "location": LOCATION})
    code = 1 if failed else 0
    events.append({"ev": "sessionfinish", "exitstatus": code})
    events.append({"ev": "exit", "code": code, "nonce": nonce})
    return [line(n=n, **event) for n, event in enumerate(events, 1)]


# -- the line cap ---------------------------------------------------------------------------

def test_lines_come_whole_however_the_chunks_fall() -> None:
    splitter = LineSplitter(limit=10)
    data = b"ab\ncdef\n\nghij"
    got: list[bytes | None] = []
    for i in range(len(data)):  # one byte at a time
        got += splitter.feed(data[i:i + 1])
    assert got == [b"ab", b"cdef", b""] and splitter.rest() == b"ghij"


def test_a_line_past_the_cap_is_dropped_up_to_its_newline_and_counted() -> None:
    splitter = LineSplitter(limit=8)
    got = [*splitter.feed(b"12345"), *splitter.feed(b"6789abc"), *splitter.feed(b"def\nok\n")]
    assert got == [None, b"ok"]
    assert [*splitter.feed(b"x" * 9)] == [] and splitter.rest() is None  # too long, no newline
    assert [*splitter.feed(b"12345678\n")] == [b"12345678"]  # the cap itself is allowed


def test_a_32_mb_line_without_newline_is_dropped_by_the_feeder(config: pytest.Config) -> None:
    feeder = make_feeder(config)
    lines = a_run(["t.py::a"])
    feeder.feed(lines[0])
    chunk = b"x" * (1 << 16)
    for _ in range(32 * 16):  # 32 MiB, as the channel hands it over
        feeder.feed(chunk)
    feeder.feed(b"\n" + b"".join(lines[1:]))
    assert feeder.done and feeder.remote_exit == 0 and feeder.finished == 1
    assert feeder.stray_count == 1 and "more than 1048576 bytes" in feeder.stray[0]


# -- sequence -------------------------------------------------------------------------------

def test_a_forged_jump_does_not_silence_the_stream(config: pytest.Config) -> None:
    feeder = make_feeder(config, nonce="s3cret")
    lines = a_run(["t.py::a", "t.py::b"], failed="t.py::b", nonce="s3cret")
    feeder.feed(b"".join(lines[:3]))
    feeder.feed(line(n=1_000_000_000, ev="exit", code=0))  # a test's forgery
    feeder.feed(b"".join(lines[3:]))
    assert feeder.done and feeder.remote_exit == 1 and feeder.finished == 2
    assert any("out of sequence" in s for s in feeder.stray)


def test_a_gap_is_filled_from_the_record(config: pytest.Config, tmp_path: Path) -> None:
    lines = a_run(["t.py::a", "t.py::b"])
    (tmp_path / "events.jsonl").write_bytes(b"".join(lines[:-1]))  # the worker's record
    feeder = make_feeder(config, record=tmp_path / "events.jsonl")
    feeder.feed(b"".join(lines[:3]) + b"".join(lines[6:]))  # three events lost on the way
    assert feeder.done and feeder.finished == 2 and feeder.remote_exit == 0
    assert feeder.stray == []


def test_a_gap_the_record_cannot_fill_is_refused(config: pytest.Config, tmp_path: Path) -> None:
    lines = a_run(["t.py::a", "t.py::b"])
    feeder = make_feeder(config, record=tmp_path / "missing.jsonl")
    feeder.feed(b"".join(lines[:3]) + b"".join(lines[6:]))
    assert not feeder.done and feeder.finished == 0 and feeder.last_n == 3
    assert any("out of sequence" in s for s in feeder.stray)


def test_a_record_that_is_a_link_is_not_followed(config: pytest.Config, tmp_path: Path) -> None:
    lines = a_run(["t.py::a"])
    (tmp_path / "elsewhere.jsonl").write_bytes(b"".join(lines))
    (tmp_path / "events.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    feeder = make_feeder(config)
    assert feeder.recover(tmp_path / "events.jsonl") == 0 and feeder.finished == 0


def test_events_already_handled_are_not_replayed_twice(config: pytest.Config) -> None:
    feeder = make_feeder(config)
    lines = a_run(["t.py::a"])
    feeder.feed(b"".join(lines[:5]))
    feeder.feed(b"".join(lines[:5]))  # the same numbers again
    assert feeder.finished == 1 and feeder.last_n == 5


# -- the end and its claims -----------------------------------------------------------------

def test_an_exit_without_the_runs_nonce_is_not_the_end(config: pytest.Config) -> None:
    feeder = make_feeder(config, nonce="s3cret")
    lines = a_run(["t.py::a"], nonce="s3cret")
    feeder.feed(b"".join(lines[:5]))
    feeder.feed(line(n=6, ev="exit", code=0, nonce="guess"))
    assert not feeder.done
    feeder.feed(b"".join(lines[5:]))
    assert feeder.done and feeder.exit_code == 0


@pytest.mark.parametrize(("failed", "cut", "expected"), [
    ("t.py::b", 0, 1),  # a failed test: not 0
    ("", 3, 2),  # tests that never finished: not 0
])
def test_a_claimed_exit_0_is_checked_against_the_reports(
        config: pytest.Config, failed: str, cut: int, expected: int) -> None:
    feeder = make_feeder(config)
    lines = a_run(["t.py::a", "t.py::b"], failed=failed)
    events = [json.loads(x) for x in lines]
    kept = events[:len(events) - 2 - cut]
    kept += [{"ev": "sessionfinish", "exitstatus": 0}, {"ev": "exit", "code": 0, "nonce": ""}]
    feeder.feed(b"".join(line(**{**e, "n": n}) for n, e in enumerate(kept, 1)))
    assert feeder.done and feeder.remote_exit == expected


def test_a_worker_of_another_protocol_is_a_usage_error(config: pytest.Config) -> None:
    feeder = make_feeder(config)
    with pytest.raises(ConfigError) as err:
        feeder.feed(line(n=1, ev="hello", protocol=PROTOCOL + 1))
    assert f"protocol {PROTOCOL + 1}" in str(err.value) and f"speaks {PROTOCOL}" in str(err.value)
    assert err.value.exit_code == 4 and "reinstall" in str(err.value)


# -- malformed input ------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b"[" * 100_000,
    b'{"a":' + b"[" * 100_000,
    b'{"ev": "logstart", "n": 1}',  # keys missing
    b'{"ev": "logstart", "n": 1, "nodeid": 3, "location": ["a", 0, "t"]}',  # a wrong type
    b'{"ev": "logreport", "n": 1, "report": {"nodeid": "x", "$report_type": "TestReport"}}',
    b'{"ev": "__init__", "n": 1}',
    b'{"ev": "exit", "n": true, "code": 0}',
    b'{"ev": "hello", "n": 1e400, "protocol": 2}',
    b"\xff\xfe{not json",
])
def test_malformed_lines_are_stray_output_never_errors(config: pytest.Config, raw: bytes) -> None:
    feeder = make_feeder(config)
    feeder.feed(raw + b"\n")
    assert feeder.stray_count == 1 and feeder.last_n == 0 and not feeder.done


def test_a_report_pytest_cannot_rebuild_is_stray_output(config: pytest.Config) -> None:
    feeder = make_feeder(config)
    report = {"$report_type": "TestReport", "nodeid": "t.py::a", "location": LOCATION,
              "outcome": "failed", "when": "call", "longrepr": {"reprcrash": 1}}
    feeder.feed(line(n=1, ev="logreport", report=report))
    assert feeder.last_n == 1 and feeder.stray_count == 1
    assert "could not be replayed" in feeder.stray[0]


def test_every_kind_the_worker_sends_is_in_the_protocol(config: pytest.Config) -> None:
    channel = io.StringIO()
    stream = EventStream(channel)
    stream.pytest_configure(config)
    stream.pytest_runtest_logstart("t.py::a", ("t.py", 0, "a"))
    stream.pytest_runtest_logfinish("t.py::a", ("t.py", 0, "a"))
    stream.finish(0, "nonce")
    events = [json.loads(x) for x in [*filter(None, channel.getvalue().splitlines())]]
    assert [e["n"] for e in events] == list(range(1, len(events) + 1))
    assert all(problem(e) is None for e in events), [problem(e) for e in events]
    assert events[-1]["nonce"] == "nonce"


# -- fuzzing --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """Objects shaped like events: a known kind, its field names, values of any JSON type."""
    kind = draw(st.sampled_from(sorted(EVENTS)))
    fields = {name: draw(json_values) for name in EVENTS[kind]
              if draw(st.booleans())}
    return {"ev": kind, "n": draw(st.integers(min_value=-2, max_value=6)), **fields}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decode_never_raises(raw: bytes) -> None:
    event = decode(raw)
    if event is not None:
        problem(event)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(events() | st.builds(dict, json_values.filter(lambda v: isinstance(v, dict))),
                max_size=8),
       st.lists(st.binary(max_size=40), max_size=3))
def test_fuzz_the_feeder_never_raises(config: pytest.Config, stream: list[Any],
                                      noise: list[bytes]) -> None:
    feeder = make_feeder(config)
    data = b"".join(json.dumps(e).encode() + b"\n" for e in stream) + b"\n".join(noise)
    try:
        for i in range(0, len(data), 7):  # in chunks that cut lines anywhere
            feeder.feed(data[i:i + 7])
        feeder.close()
    except ConfigError:  # a hello of another protocol version: the one error it raises
        pass
    _ = feeder.remote_exit, feeder.running
