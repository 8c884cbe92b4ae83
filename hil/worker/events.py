"""The worker's side of the event channel: pytest's hooks as JSON lines (see :mod:`.protocol`)."""

from __future__ import annotations

import json
import os
import platform
import socket
import threading
import time
import warnings
from collections.abc import Generator
from typing import IO, Any

import pytest

from .allure import record_allure
from .protocol import EVENTS, PROTOCOL
from .tiers import register_markers


def only_pytest_implements(hook: Any) -> bool:
    """Whether every implementation of ``hook`` (a hook caller) is pytest's own."""
    return all(str(getattr(i.plugin, "__name__", "")).startswith("_pytest.")
               for i in hook.get_hookimpls())


def _plain_report_shape() -> tuple[frozenset[str], list[str]]:
    """A passed report's attribute names and its serialized keys, in order, for this pytest."""
    report = pytest.TestReport("a.py::t", ("a.py", 0, "t"), {}, "passed", None, "call", [],
                               0.0, 0.0, 0.0, [])
    serialized = report._to_json()
    serialized["$report_type"] = "TestReport"
    return frozenset(report.__dict__), list(serialized)


#: Attributes the reports in an xdist controller carry beside pytest's own: the keys the
#: workers add when serializing, and the controller's node.  None is sent on: the
#: controller's reports then look like those of a run without xdist.
XDIST_REPORT_ATTRS = frozenset({"$report_type", "worker_id", "item_index", "testrun_uid", "node"})


class EventStream:
    """Sends pytest's hooks to the controller as JSON lines on a file object.

    Every event carries a sequence number ``n``.  Writes to the channel are
    batched: a test's events are queued and go out with a later test's
    ``logstart``, at most every ``interval`` seconds, and a background thread
    writes whatever has waited that long, so the controller is never more than
    ``interval`` behind.  Each write crosses the container runtime and the
    engine to the controller, so one write per test would cost more than a
    trivial test itself.  The ``copy`` (``events.jsonl``), a local file write,
    still gets every event before the next test starts (and before the
    session's end): when the container is killed, the controller reads what
    the channel had not carried yet from it (by ``n``), so no finished test's
    result is lost and the running test is named.  ``interval=0`` writes the
    channel at every ``logstart`` too.

    With ``compact``, a test's passed phases that carry nothing but timings
    (no output, no longrepr, no user properties, no extra attributes) travel
    in one ``finish`` event in place of their ``logreport`` events and the
    ``logfinish``: ``{"ev": "finish", "nodeid", "location", "keywords",
    "passed": [[when, duration, start, stop], ...]}``.  The controller rebuilds
    the very reports pytest would have deserialized, with the key order given
    by ``report_keys`` in ``hello``.  Any other report of a test goes out in
    full, after that test's compact phases queued before it.

    Under pytest-xdist several tests run at once and their hooks interleave:
    what is queued and which tests run is kept per test, ``hello`` says how
    many workers there are, and ``collection_finish`` comes from the first
    worker's collection (xdist's controller collects nothing itself).
    """

    def __init__(self, channel: IO[str], copy: IO[str] | None = None,
                 compact: bool = False, allure_events: bool = False,
                 interval: float = 0.0, first_seq: int = 0) -> None:
        self.channel = channel
        self.copy = copy
        self.compact = compact
        self.allure_events = allure_events
        #: Where Allure results go (set by :func:`main` when allure-pytest is installed).
        self.allure_dir: str | None = None
        self.interval = interval
        self.config: pytest.Config | None = None
        self.started = time.perf_counter()
        #: The running tests (several under xdist): node id -> location.
        self.running: dict[str, Any] = {}
        #: Their compact phases, not yet sent.
        self.held: dict[str, list[pytest.TestReport]] = {}
        self.plain_attrs: frozenset[str] = frozenset()
        #: xdist's workers (0 without xdist): their reports carry XDIST_REPORT_ATTRS.
        self.workers = 0
        self.collection_sent = False
        # Shared with the flusher thread: the sequence, both queues, the writes.
        self.lock = threading.Lock()
        self.seq = first_seq  # a resumed run continues the crashed one's numbering
        self.pending: list[str] = []  # lines the channel has not carried yet
        self.unrecorded: list[str] = []  # lines the copy has not got yet
        self.last_write = 0.0
        self.closed = False  # the exit event is written: nothing may follow it
        self.due = threading.Event()  # queued lines wait for the flusher
        if interval > 0 and copy is not None:
            threading.Thread(target=self._flusher, name="hil-event-flusher", daemon=True).start()
        else:
            self.interval = 0.0  # without a record, a kill would lose what was batched

    def _queue(self, data: dict[str, Any]) -> None:
        with self.lock:
            self.seq += 1
            data["n"] = self.seq
            line = json.dumps(data, separators=(",", ":"), default=str)
            self.pending.append(line)
            self.unrecorded.append(line)

    def send(self, ev: str, flush: bool = True, soon: bool = False, **data: Any) -> None:
        """Queue one event line; ``flush`` writes it at once, ``soon`` within ``interval``."""
        assert ev in EVENTS, ev  # the protocol module names every kind
        data["ev"] = ev
        data["t"] = time.time()  # wall clock, for test boundaries on telemetry charts
        self._queue(data)
        if soon and self.interval > 0 and time.monotonic() - self.last_write < self.interval:
            self.record()
            self.due.set()
        elif flush or soon:
            self.flush()

    def send_allure(self, name: str, result: dict[str, Any], indent: int | None) -> None:
        """Queue one Allure result for the controller.

        The result travels as the text allure-commons would have written, so the
        controller writes it without decoding and encoding it again.
        """
        self._queue({"ev": "allure", "name": name,
                     "text": json.dumps(result, indent=indent, ensure_ascii=False)})

    def record(self) -> None:
        """Write the lines the copy has not got yet."""
        with self.lock:
            if self.copy is not None and self.unrecorded:
                self.copy.write("\n".join(self.unrecorded) + "\n")
                self.copy.flush()
            self.unrecorded.clear()

    def flush(self) -> None:
        """Write the queued events to the channel and the copy."""
        with self.lock:
            if self.pending and not self.closed:
                self.last_write = time.monotonic()
                # A newline first: what another process of the container wrote on the
                # channel without one ends there, and does not swallow our first event.
                self.channel.write("\n" + "\n".join(self.pending) + "\n")
                self.channel.flush()
            self.pending.clear()
        self.record()

    def finish(self, code: int, nonce: str = "") -> None:
        """Write what is queued and the final ``exit`` event; nothing is written after it.

        The event carries the run's ``nonce`` (see :mod:`.protocol`) and goes to the
        channel only: the record, readable by the tests of a later segment, never holds it.
        """
        self.flush()
        with self.lock:
            self.closed = True
            self.seq += 1
            end = {"ev": "exit", "code": code, "nonce": nonce, "n": self.seq, "t": time.time()}
            self.channel.write("\n" + json.dumps(end) + "\n")
            self.channel.flush()

    def _flusher(self) -> None:
        """Write queued events that have waited ``interval`` seconds (a slow test is running)."""
        while True:
            self.due.wait()
            self.due.clear()
            time.sleep(max(0.0, self.last_write + self.interval - time.monotonic()))
            try:
                self.flush()
            except (OSError, ValueError):  # the channel is gone: the worker is ending
                return

    def _is_plain(self, report: pytest.TestReport) -> bool:
        """Whether the controller can rebuild ``report`` from its phase and timings alone."""
        if not (type(report) is pytest.TestReport and report.outcome == "passed"
                and report.longrepr is None and not report.sections
                and not report.user_properties):
            return False
        attrs = report.__dict__.keys()
        if (attrs - XDIST_REPORT_ATTRS if self.workers else attrs) != self.plain_attrs:
            return False
        location = self.running.get(report.nodeid)
        held = self.held.get(report.nodeid)
        return (location is not None and tuple(report.location) == tuple(location)
                and (not held or report.keywords == held[0].keywords))

    def _release_held(self, nodeid: str | None = None) -> None:
        """Send a test's compact phases queued so far (every test's: ``None``) as full reports."""
        for test in list(self.held) if nodeid is None else [nodeid]:
            for report in self.held.pop(test, ()):
                self.send("logreport", flush=False, report=self._report(report))

    def _report(self, report: pytest.CollectReport | pytest.TestReport) -> dict[str, Any]:
        assert self.config is not None
        data: dict[str, Any] = self.config.hook.pytest_report_to_serializable(
            config=self.config, report=report
        )
        if self.workers:
            for key in XDIST_REPORT_ATTRS - {"$report_type"}:
                data.pop(key, None)
        return data

    @pytest.hookimpl(trylast=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        self.config = config
        register_markers(config)
        # Whether allure-pytest records here: without it the controller writes each test's
        # result from its reports, naming the target (and board) as our results do.
        allure = bool(self.allure_dir) and record_allure(
            config, str(self.allure_dir), self.send_allure if self.allure_events else None)
        extra: dict[str, Any] = {"allure": allure, "target": os.environ.get("HIL_TARGET", ""),
                                 "board": os.environ.get("HIL_BOARD", "")}
        # Only pytest's own serializers may be skipped: a plugin's could add to the reports.
        if self.compact and only_pytest_implements(config.hook.pytest_report_to_serializable):
            self.plain_attrs, extra["report_keys"] = _plain_report_shape()
        else:
            self.compact = False
        # xdist resolved -n into its test environments in pytest_cmdline_main.
        tx = config.getoption("tx", None) or []
        if config.getoption("dist", "no") != "no" and tx:
            self.workers = len(tx)
        self.send("hello", protocol=PROTOCOL, pytest=pytest.__version__,
                  python=platform.python_version(), host=socket.gethostname(), pid=os.getpid(),
                  workers=self.workers, **extra)

    def pytest_sessionstart(self) -> None:
        self.started = time.perf_counter()

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        # Passed collect reports only carry counts, which collection_finish sends.
        if not report.passed:
            self.send("collectreport", report=self._report(report))

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.send("deselected", nodeids=[item.nodeid for item in items])

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collection_sent = True
        self.send("collection_finish", nodeids=[item.nodeid for item in session.items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # Every worker collects the same tests (xdist checks): the first one says which.
        if not self.collection_sent:
            self.collection_sent = True
            self.send("collection_finish", nodeids=list(ids))

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self.running[nodeid] = location
        # Written with the previous tests' events, within ``interval``.
        self.send("logstart", flush=False, soon=True, nodeid=nodeid, location=location)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.compact and self._is_plain(report):
            self.held.setdefault(report.nodeid, []).append(report)
            return
        self._release_held(report.nodeid)
        self.send("logreport", flush=False, report=self._report(report))

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        held = self.held.pop(nodeid, [])
        self.running.pop(nodeid, None)
        # Not written yet: the next logstart (or the session's end) carries it.
        if held:
            self.send("finish", flush=False, nodeid=nodeid, location=location,
                      keywords=held[0].keywords,
                      passed=[[r.when, r.duration, r.start, r.stop] for r in held])
        else:
            self.send("logfinish", flush=False, nodeid=nodeid, location=location)

    def pytest_warning_recorded(self, warning_message: warnings.WarningMessage, when: str,
                                nodeid: str, location: tuple[str, int, str] | None) -> None:
        self._release_held(nodeid or None)
        self.send("warning", flush=False, message=str(warning_message.message),
                  category=type(warning_message.message).__name__,
                  filename=warning_message.filename, lineno=warning_message.lineno,
                  when=when, nodeid=nodeid)

    def pytest_internalerror(self, excrepr: object) -> None:
        self.send("internalerror", text=str(excrepr))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_sessionfinish(self, session: pytest.Session,
                             exitstatus: int) -> Generator[None, None, None]:
        # The last test's events reach the record before any plugin's session end runs:
        # an interpreter that dies there must not leave that test looking unfinished.
        self.record()
        yield
        self.send("sessionfinish", exitstatus=int(exitstatus),
                  duration=round(time.perf_counter() - self.started, 4),
                  shouldfail=str(session.shouldfail or ""),
                  shouldstop=str(session.shouldstop or ""))


