"""Replay of the worker's events into the local session's hooks (see :mod:`hil.worker.protocol`).

Each event the container streams (or that its ``events.jsonl`` recorded, when
the stream was cut short) becomes the hook call pytest would have made had the
test run here, so the terminal, ``--junitxml``, ``--lf`` and ``-x`` behave as
usual.  Allure results are written on this side by the one
:class:`~hil.report.allure.AllureWriter`: those allure-pytest made in the
container and sent on the stream, or, when the container has no allure-pytest
(``hello`` says), one per test built from its reports.

The stream is not taken on trust (any process in the container can write to
it): lines are capped, events are checked against the protocol module, the
sequence must run ``last + 1``, the end must carry this run's nonce, and an
exit code the stream claims is checked against the reports it carried.  What
fails a check is kept as stray output and shown once; nothing the stream
holds raises here but a worker of another protocol version.
"""

from __future__ import annotations

import builtins
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hil.errors import ConfigError, ExitCode
from hil.progress import terminal_line
from hil.report.allure import RICHER_PARTS, AllureWriter
from hil.worker.events import only_pytest_implements
from hil.worker.protocol import MAX_LINE, PROTOCOL, LineSplitter, decode, problem

#: Set once a session said what Allure results lack without allure-pytest in the image.
_RICHER_PARTS_SAID = pytest.StashKey[bool]()
#: Stray lines kept (the last ones) for the run's record; the rest are counted.
STRAY_KEPT = 50
#: Characters of one stray line kept.
STRAY_WIDTH = 500
#: Errors that replaying a malformed event may raise (in pytest's deserializer and our own).
_REPLAY_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError)


@dataclass
class _RemoteItem:
    """Stands in for a deselected item in the terminal's statistics."""

    nodeid: str


def report_collected(config: pytest.Config, session: pytest.Session, count: int,
                     deselected: int) -> None:
    """Tell pytest's terminal and hooks that ``count`` tests were collected (remotely).

    The terminal counts collected items in ``pytest_collectreport`` from the
    reports' Item objects, which a remote collection has none of; pytest offers
    no public way to give it the count, so its ``_numcollected`` is set here,
    in this one place.
    """
    session.testscollected = count
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        terminal._numcollected = count + deselected
    config.hook.pytest_collection_finish(session=session)


def read_record(path: Path, limit: int = MAX_LINE) -> Iterator[dict[str, Any]]:
    """The well-formed events of a worker's record, in order; the file is not followed if a link.

    The record is written in the container: it is read in chunks, its lines
    capped as the channel's are, and whatever is not an event is skipped.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return
    splitter = LineSplitter(limit)
    try:
        while chunk := os.read(fd, 1 << 20):
            for line in splitter.feed(chunk):
                event = decode(line) if line else None
                if event is not None and problem(event) is None:
                    yield event
    finally:
        os.close(fd)
    last = splitter.rest()  # a line cut short by a kill does not decode
    event = decode(last) if last else None
    if event is not None and problem(event) is None:
        yield event


class EventFeeder:
    """Decodes the worker's JSON lines and replays them into the local hooks.

    Events are dispatched by name to the ``on_<kind>`` methods.  The public
    face: :meth:`feed`, :meth:`close`, :meth:`recover`, :meth:`next_segment`,
    :meth:`handle` (one decoded event, for replays), :meth:`remaining`,
    :meth:`unfinished`, and what the session reads (:attr:`running`,
    :attr:`done`, :attr:`hello`, :attr:`remote_exit`, :attr:`exit_code`, ...).
    """

    def __init__(self, config: pytest.Config, session: pytest.Session, mount: str = "/src",
                 allure_dir: Path | None = None, root: Path | None = None, *,
                 nonce: str | None = None, record: Path | None = None,
                 resumed: bool = False, line_limit: int = MAX_LINE) -> None:
        self.config = config
        #: Where the worker's streamed Allure results (``allure`` events) are written.
        self.allure_dir = allure_dir
        #: The one writer of this stream's Allure results (see ``hello``).
        self.allure = AllureWriter(allure_dir, _target_name(config))
        self.session = session
        self.mount = mount.rstrip("/") + "/"
        #: The local checkout the mount shows (the rootdir, or the parent that declared the target).
        self.root = str(root or config.rootpath)
        #: The run's nonce that the ``exit`` event must carry (None: not checked).
        self.nonce = nonce
        #: The worker's record, that fills a gap in the sequence (None: gaps are refused).
        self.record = record
        self._lines = LineSplitter(line_limit)
        self.line_limit = line_limit
        #: Every test started and not finished (several under xdist): node id -> its
        #: logstart event, and the (when, outcome) of each of its reports so far.
        self.active: dict[str, dict[str, Any]] = {}
        self.phases: dict[str, list[tuple[str, str]]] = {}
        self._done: set[str] = set()
        self._started: str | None = None
        self._workers = 0
        #: Set for a container resumed after a crash: its collection was counted already.
        self.resumed = resumed
        self._order: dict[str, int] = {}
        self._collected: list[str] = []
        self._last_done = -1
        self._last_n = 0
        self._claimed_exit: int | None = None
        self._exit_code: int | None = None
        self._hello: dict[str, Any] | None = None
        self.hello_at: float | None = None
        self.deselected = 0
        self.finished = 0
        self._failed = 0
        self._collect_errors = 0
        #: Output on the channel that is no event (or no valid one): the last ones, and a count.
        self.stray: list[str] = []
        self.stray_count = 0
        self._shown: set[str] = set()
        #: The worker's serialized report keys, in order (``hello``; for ``finish`` events).
        self.report_keys: list[str] = []
        self._only_pytest: bool | None = None

    # -- what the session reads -------------------------------------------------------------
    @property
    def hello(self) -> dict[str, Any] | None:
        """The worker's ``hello`` event of this segment, once it came."""
        return self._hello

    @property
    def started(self) -> str | None:
        """The test of the last ``logstart``, until it finishes."""
        return self._started

    @property
    def workers(self) -> int:
        """xdist's workers in the container (``hello``; 0 without -n)."""
        return self._workers

    @property
    def last_n(self) -> int:
        """The sequence number of the last event handled."""
        return self._last_n

    @property
    def collected(self) -> list[str]:
        """The node ids this segment's worker collected, in run order."""
        return self._collected

    @property
    def done_ids(self) -> set[str]:
        """The node ids of every finished test (all segments)."""
        return self._done

    @property
    def exit_code(self) -> int | None:
        """The worker's own exit code, from its ``exit`` event (with this run's nonce)."""
        return self._exit_code

    @property
    def done(self) -> bool:
        """Whether the worker sent its final ``exit`` event."""
        return self._exit_code is not None

    @property
    def remote_exit(self) -> int | None:
        """pytest's exit code in the container as the stream claims it, checked.

        A claimed 0 is impossible after a failed test (1), a collection error
        (2) or with collected tests that never finished (2): those say so.
        """
        claimed = self._claimed_exit
        if claimed != ExitCode.OK:
            return claimed
        if self._collect_errors:
            return int(ExitCode.INTERRUPTED)
        if self._failed:
            return int(ExitCode.TESTS_FAILED)
        if self.unfinished() and not self.config.getoption("collectonly", False):
            return int(ExitCode.INTERRUPTED)
        return claimed

    @property
    def running(self) -> str | None:
        """The test(s) the worker is running as far as the events tell, comma-separated.

        The tests started and not finished; when none is and the last start is
        still queued in the worker (events are batched), the test after the
        last finished one in the collection order, which is the order pytest
        runs them in (not under xdist, whose workers take tests as they go).
        """
        if self.active:
            return ", ".join(self.active)
        if (self._workers or self._claimed_exit is not None
                or not 0 <= self._last_done + 1 < len(self._collected)):
            return None
        return self._collected[self._last_done + 1]

    def remaining(self, nodeid: str) -> list[str]:
        """The collected tests after ``nodeid`` that have not finished, in their order."""
        place = self._order.get(nodeid)
        if place is None:
            return []
        return [n for n in self._collected[place + 1:] if n not in self._done]

    def unfinished(self) -> list[str]:
        """The collected tests of this segment that have not finished, in their order."""
        return [n for n in self._collected if n not in self._done]

    # -- the stream -------------------------------------------------------------------------
    def feed(self, data: bytes) -> bool:
        """Take a chunk of the container's standard output; True once the worker is done.

        A worker whose pytest stopped before its first event (``exit`` without
        ``hello``) is not done early: its standard error, the reason, is read
        to the end.
        """
        for line in self._lines.feed(data):
            self._line(line)
        return self.done and self._hello is not None

    def close(self) -> None:
        """Take a last line that had no newline; close the Allure folder."""
        self._line(self._lines.rest())
        self.allure.close()

    def next_segment(self) -> None:
        """Get ready for the events of a container resumed after a crashed one."""
        self._lines = LineSplitter(self.line_limit)
        self._started = None
        self.active.clear()
        self.phases.clear()
        self._last_done = -1
        self._claimed_exit = self._exit_code = None
        self._hello = None
        self.hello_at = None
        self.resumed = True

    def recover(self, record: Path | None = None) -> int:
        """Replay the events the channel never carried from the worker's record; how many.

        The worker batches its writes to the channel but records every event in
        ``events.jsonl`` before the next test starts: when the run ended without
        the worker's ``exit`` event (a killed container, a lost link), the
        events after the last one handled are read from there, in sequence.
        """
        path = record if record is not None else self.record
        if self.done or path is None:
            return 0
        return self._replay_record(path, None)

    def _replay_record(self, path: Path, until: int | None) -> int:
        replayed = 0
        for event in read_record(path, self.line_limit):
            n = event["n"]
            if until is not None and n >= until:
                break
            if n <= self._last_n or event["ev"] == "exit":
                continue
            if n != self._last_n + 1:
                break  # a gap in the record too: what follows cannot be placed
            self._last_n = n
            self.handle(event)
            replayed += 1
        return replayed

    def _line(self, line: bytes | None) -> None:
        if line is None:
            self._stray(f"hil: a line of more than {self.line_limit} bytes on the event "
                        "channel was dropped", "long")
            return
        if not line.strip():
            return
        event = decode(line)
        if event is None:
            # Output printed around pytest (not by it) is kept, never lost.
            self._stray(line[:STRAY_WIDTH].decode("utf-8", "replace"))
            return
        why = problem(event)
        if why is not None:
            self._stray(f"hil: a malformed event was ignored ({why})", "malformed")
            return
        n = event["n"]
        if n <= self._last_n:
            return  # already handled (read back from the record)
        if n > self._last_n + 1 and self.record is not None:
            self._replay_record(self.record, n)  # the record has what the channel skipped
        if n != self._last_n + 1:
            self._stray(f"hil: an event out of sequence was ignored (number {n}, expected "
                        f"{self._last_n + 1})", "sequence")
            return
        if event["ev"] == "exit" and self.nonce is not None and event.get("nonce") != self.nonce:
            self._stray("hil: an exit event without this run's nonce was ignored", "nonce")
            return
        self._last_n = n
        self.handle(event)

    def _stray(self, text: str, kind: str = "") -> None:
        """Keep ``text`` (the last :data:`STRAY_KEPT`); show the first of each ``kind`` once."""
        self.stray_count += 1
        self.stray.append(text[:STRAY_WIDTH])
        if len(self.stray) > STRAY_KEPT:
            del self.stray[0]
        if kind and kind not in self._shown:
            self._shown.add(kind)
            self._say(f"{text} (shown once; the run goes on)", yellow=True)

    def _say(self, text: str, **markup: bool) -> None:
        """A line on the terminal, when the session has one."""
        if self.config.pluginmanager.get_plugin("terminalreporter") is not None:
            terminal_line(self.config, text, **markup)

    # -- dispatch ---------------------------------------------------------------------------
    def handle(self, event: dict[str, Any]) -> None:
        """Replay one decoded event into pytest's hooks, by its kind (``on_<kind>``).

        An event whose content pytest cannot take (a report it cannot rebuild)
        is kept as stray output instead.
        """
        method = getattr(self, f"on_{event.get('ev')}", None)
        if method is None:
            self._stray(f"hil: an event of unknown kind was ignored: {event.get('ev')!r:.40}",
                        "malformed")
            return
        try:
            method(event)
        except _REPLAY_ERRORS as err:
            self._stray(f"hil: an event that could not be replayed was ignored "
                        f"({type(err).__name__}: {err})"[:STRAY_WIDTH], "malformed")

    def on_hello(self, event: dict[str, Any]) -> None:
        """The worker started: check its protocol version."""
        if self._hello is not None:
            self._stray("hil: a second hello event was ignored", "malformed")
            return
        if event["protocol"] != PROTOCOL:
            raise ConfigError(
                f"the worker in the target speaks event protocol {event['protocol']}, this "
                f"pytest-hil speaks {PROTOCOL}",
                hint="the worker is mounted from this installation: remove a stale copy "
                     "(~/.cache/pytest-hil/lib-* on the board) or reinstall pytest-hil")
        self._hello = event
        self.hello_at = time.monotonic()
        self.report_keys = list(event.get("report_keys") or ())
        self._workers = int(event.get("workers") or 0)
        self._allure_hello(event)
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if self._workers and terminal is not None:
            # Reports of several files interleave: progress without file names, as
            # pytest-xdist shows it.
            terminal.showfspath = False

    def on_logstart(self, event: dict[str, Any]) -> None:
        """A test started."""
        self._started = event["nodeid"]
        self.active[event["nodeid"]] = event
        self.config.hook.pytest_runtest_logstart(nodeid=event["nodeid"],
                                                 location=tuple(event["location"]))

    def on_finish(self, event: dict[str, Any]) -> None:
        """A test whose phases all passed without output: its reports and its end at once."""
        reports = list(self._passed_reports(event))
        hook = self.config.hook
        for report in reports:
            hook.pytest_runtest_logreport(report=report)
            self.allure.add_report(report)
        hook.pytest_runtest_logfinish(nodeid=event["nodeid"], location=tuple(event["location"]))
        self._finished(event["nodeid"])

    def on_logreport(self, event: dict[str, Any]) -> None:
        """One phase's report of a test."""
        report = self._report(event["report"])
        if report.nodeid in self.active:
            self.phases.setdefault(report.nodeid, []).append((report.when, report.outcome))
        if report.failed:
            self._failed += 1
        self.config.hook.pytest_runtest_logreport(report=report)
        self.allure.add_report(report)

    def on_logfinish(self, event: dict[str, Any]) -> None:
        """A test ended."""
        self.config.hook.pytest_runtest_logfinish(nodeid=event["nodeid"],
                                                  location=tuple(event["location"]))
        self._finished(event["nodeid"])

    def on_collectreport(self, event: dict[str, Any]) -> None:
        """A collector's report that is not a plain pass (errors, skips)."""
        if self.resumed:
            return  # the crashed container's collection reported these already
        report = self._report(event["report"])
        if report.failed:
            self._collect_errors += 1
        self.config.hook.pytest_collectreport(report=report)

    def on_deselected(self, event: dict[str, Any]) -> None:
        """Tests deselected in the container (``-k``, ``-m``, ...)."""
        if self.resumed:
            return
        self.deselected += len(event["nodeids"])
        self.config.hook.pytest_deselected(items=[_RemoteItem(n) for n in event["nodeids"]])

    def on_collection_finish(self, event: dict[str, Any]) -> None:
        """The tests the worker will run, in order."""
        self._set_collected(event["nodeids"])
        if self.resumed:
            return  # the tests after a crashed one, counted with the first collection
        report_collected(self.config, self.session, len(self._collected), self.deselected)

    def on_warning(self, event: dict[str, Any]) -> None:
        """A warning pytest recorded in the container."""
        if self.resumed and event["when"] != "runtest":
            return  # the crashed container's configuration and collection warned already
        category = getattr(builtins, event["category"], UserWarning)
        if not (isinstance(category, type) and issubclass(category, Warning)):
            category = UserWarning
        message = warnings.WarningMessage(
            category(event["message"]), category, self.local_path(event["filename"]),
            event["lineno"])
        self.config.hook.pytest_warning_recorded.call_historic(kwargs={
            "warning_message": message, "when": event["when"],
            "nodeid": event["nodeid"], "location": None})

    def on_allure(self, event: dict[str, Any]) -> None:
        """One Allure result the worker streamed."""
        self._allure_result(event)

    def on_sessionfinish(self, event: dict[str, Any]) -> None:
        """pytest's session ended in the container, with this status."""
        self._claimed_exit = event["exitstatus"]

    def on_exit(self, event: dict[str, Any]) -> None:
        """The worker's last word: its exit code (the nonce was checked by then)."""
        self._exit_code = event["code"]
        if self._claimed_exit is None:
            self._claimed_exit = self._exit_code

    def on_internalerror(self, event: dict[str, Any]) -> None:
        """pytest's INTERNALERROR in the container, shown as such."""
        self._say(f"remote INTERNALERROR> {event['text']}", red=True)

    # -- helpers ----------------------------------------------------------------------------
    def _set_collected(self, nodeids: list[str]) -> None:
        # Interned: the reports, the terminal's stats and this feeder then share one string
        # per test instead of one per event (10,000 tests: megabytes of the host's memory).
        self._collected = [sys.intern(nodeid) for nodeid in nodeids]
        self._order = {nodeid: i for i, nodeid in enumerate(self._collected)}

    def _finished(self, nodeid: str) -> None:
        self._started = None
        self.active.pop(nodeid, None)
        self.phases.pop(nodeid, None)
        self._done.add(sys.intern(nodeid))
        self.finished += 1
        self._last_done = self._order.get(nodeid, self._last_done)

    def local_path(self, path: str) -> str:
        """A path inside the container's checkout mount, as a path of the local checkout."""
        if path.startswith(self.mount):
            return os.path.join(self.root, path[len(self.mount):])
        return path

    def _report(self, data: dict[str, Any]) -> Any:
        # JSON turns tuples into lists; pytest expects (path, lineno, reason) tuples.
        for key in ("longrepr", "location"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        longrepr = data.get("longrepr")
        if isinstance(longrepr, tuple) and len(longrepr) == 3 and isinstance(longrepr[0], str):
            data["longrepr"] = (self.local_path(longrepr[0]), *longrepr[1:])
        return self.config.hook.pytest_report_from_serializable(config=self.config, data=data)

    def _pytest_deserializes(self) -> bool:
        """Whether pytest's own ``pytest_report_from_serializable`` is the only one."""
        if self._only_pytest is None:
            self._only_pytest = only_pytest_implements(
                self.config.hook.pytest_report_from_serializable)
        return self._only_pytest

    def _passed_reports(self, event: dict[str, Any]) -> Iterator[Any]:
        """The reports of a ``finish`` event's passed phases, as the full form would give them."""
        path, lineno, domain = event["location"]
        location = (sys.intern(path), lineno, domain)
        nodeid = sys.intern(event["nodeid"])
        if self._pytest_deserializes():
            # What pytest's deserializer builds from the full form (it keeps the
            # "$report_type" key as an attribute too), without the dict round trip.
            for when, duration, start, stop in event["passed"]:
                yield pytest.TestReport(nodeid, location, dict(event["keywords"]),
                                        "passed", None, when, [], duration, start, stop, [],
                                        **{"$report_type": "TestReport"})
            return
        for when, duration, start, stop in event["passed"]:
            values = {"nodeid": event["nodeid"], "location": location,
                      "keywords": dict(event["keywords"]), "outcome": "passed",
                      "longrepr": None, "when": when, "user_properties": [], "sections": [],
                      "duration": duration, "start": start, "stop": stop,
                      "$report_type": "TestReport"}
            data = {key: values[key] for key in self.report_keys}
            yield self.config.hook.pytest_report_from_serializable(config=self.config, data=data)

    @property
    def allure_results(self) -> int:
        """Allure results (and containers) written for this stream so far."""
        return self.allure.written

    def _allure_result(self, event: dict[str, Any]) -> None:
        """Write one streamed Allure result, byte for byte what the worker would have."""
        name, text = event["name"], event["text"]
        if not self.allure.write_streamed(name, text):
            self._stray(f"hil: an Allure result event that cannot be written: {name[:80]!r}")

    def _allure_hello(self, event: dict[str, Any]) -> None:
        """What the container's worker says of Allure: whether allure-pytest records there,
        and the target (and board) its results name."""
        writer = self.allure
        writer.target = str(event.get("target") or writer.target)
        writer.board = str(event.get("board") or "") or writer.board
        writer.from_reports = event.get("allure") is False
        if (writer.from_reports and writer.folder is not None
                and not self.config.stash.get(_RICHER_PARTS_SAID, False)):
            self.config.stash[_RICHER_PARTS_SAID] = True
            self._say(f"hil: no allure-pytest in the image of '{writer.target}': {RICHER_PARTS}",
                      yellow=True)


def _target_name(config: pytest.Config) -> str:
    """The session's target name (until the worker's ``hello`` names its own)."""
    from hil.settings import SETTINGS_KEY

    settings = config.stash.get(SETTINGS_KEY, None)
    return settings.target.name if settings is not None else ""


__all__ = ["EventFeeder", "read_record", "report_collected"]
