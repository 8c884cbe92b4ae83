"""Replay of the worker's events into the local session's hooks (see :mod:`hil.worker`).

Each event the container streams (or that its ``events.jsonl`` recorded, when
the stream was cut short) becomes the hook call pytest would have made had the
test run here, so the terminal, ``--junitxml``, ``--lf`` and ``-x`` behave as
usual.  Allure results are written on this side by the one
:class:`~hil.report.allure.AllureWriter`: those allure-pytest made in the
container and sent on the stream, or, when the container has no allure-pytest
(``hello`` says), one per test built from its reports.
"""

from __future__ import annotations

import builtins
import json
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hil.report.allure import RICHER_PARTS, AllureWriter
from hil.worker import only_pytest_implements

#: Set once a session said what Allure results lack without allure-pytest in the image.
_RICHER_PARTS_SAID = pytest.StashKey[bool]()


@dataclass
class _RemoteItem:
    """Stands in for a deselected item in the terminal's statistics."""

    nodeid: str


class EventFeeder:
    """Decodes the worker's JSON lines and replays them into the local hooks."""

    def __init__(self, config: pytest.Config, session: pytest.Session, mount: str = "/src",
                 allure_dir: Path | None = None, root: Path | None = None) -> None:
        self.config = config
        #: Where the worker's streamed Allure results (``allure`` events) are written.
        self.allure_dir = allure_dir
        #: The one writer of this stream's Allure results (see ``hello``).
        self.allure = AllureWriter(allure_dir, _target_name(config))
        self.session = session
        self.mount = mount.rstrip("/") + "/"
        #: The local checkout the mount shows (the rootdir, or the parent that declared the target).
        self.root = str(root or config.rootpath)
        self.buffer = b""
        self.started: str | None = None  # the test of the last logstart, until it finishes
        #: Every test started and not finished (several under xdist): node id -> its
        #: logstart event, and the (when, outcome) of each of its reports so far.
        self.active: dict[str, dict[str, Any]] = {}
        self.phases: dict[str, list[tuple[str, str]]] = {}
        self.done_ids: set[str] = set()
        #: xdist's workers in the container (``hello``; 0 without -n).
        self.workers = 0
        #: Set for a container resumed after a crash: its collection was counted already.
        self.resumed = False
        self.order: dict[str, int] = {}  # collected node ids -> their place in the run
        self.collected: list[str] = []
        self.last_done = -1  # the place of the last finished test
        self.last_n = 0  # the sequence number of the last event handled
        self.remote_exit: int | None = None
        self.exit_code: int | None = None
        self.hello: dict[str, Any] | None = None
        self.hello_at: float | None = None
        self.deselected = 0
        self.finished = 0
        self.stray: list[str] = []
        #: The worker's serialized report keys, in order (``hello``; for ``finish`` events).
        self.report_keys: list[str] = []
        self._only_pytest: bool | None = None

    def feed(self, data: bytes) -> bool:
        """Take a chunk of the container's standard output; True once the worker is done.

        A worker whose pytest stopped before its first event (``exit`` without
        ``hello``) is not done early: its standard error, the reason, is read
        to the end.
        """
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._line(line)
        return self.done and self.hello is not None

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
        if (self.workers or self.remote_exit is not None
                or not 0 <= self.last_done + 1 < len(self.collected)):
            return None
        return self.collected[self.last_done + 1]

    def _finished(self, nodeid: str) -> None:
        self.started = None
        self.active.pop(nodeid, None)
        self.phases.pop(nodeid, None)
        self.done_ids.add(nodeid)
        self.finished += 1
        self.last_done = self.order.get(nodeid, self.last_done)

    def next_segment(self) -> None:
        """Get ready for the events of a container resumed after a crashed one."""
        self.buffer = b""
        self.started = None
        self.active.clear()
        self.phases.clear()
        self.last_done = -1
        self.remote_exit = self.exit_code = None
        self.hello = None
        self.hello_at = None
        self.resumed = True

    def remaining(self, nodeid: str) -> list[str]:
        """The collected tests after ``nodeid`` that have not finished, in their order."""
        place = self.order.get(nodeid)
        if place is None:
            return []
        return [n for n in self.collected[place + 1:] if n not in self.done_ids]

    @property
    def done(self) -> bool:
        """Whether the worker sent its final ``exit`` event."""
        return self.exit_code is not None

    @staticmethod
    def _decode(line: bytes) -> dict[str, Any] | None:
        try:
            event = json.loads(line)
        except ValueError:
            return None
        return event if isinstance(event, dict) else None

    def _line(self, line: bytes) -> None:
        event = self._decode(line)
        if event is None:
            # Output printed around pytest (not by it) is kept, never lost.
            self.stray.append(line.decode("utf-8", "replace"))
            return
        n = event.get("n")
        if isinstance(n, int):
            if n <= self.last_n:
                return  # already handled (read back from the record)
            self.last_n = n
        self.handle(event)

    def recover(self, record: Path) -> int:
        """Replay the events the channel never carried from the worker's record; how many.

        The worker batches its writes to the channel but records every event in
        ``events.jsonl`` before the next test starts: when the run ended without
        the worker's ``exit`` event (a killed container, a lost link), the
        events after the last one handled are read from there.
        """
        if self.done:
            return 0
        try:
            lines = record.read_bytes().splitlines()
        except OSError:
            return 0
        replayed = 0
        for line in lines:
            event = self._decode(line)  # None for a line cut short by the kill
            if event is not None and isinstance(event.get("n"), int) and event["n"] > self.last_n:
                self.last_n = event["n"]
                self.handle(event)
                replayed += 1
        return replayed

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
        location = tuple(event["location"])
        if self._pytest_deserializes():
            # What pytest's deserializer builds from the full form (it keeps the
            # "$report_type" key as an attribute too), without the dict round trip.
            for when, duration, start, stop in event["passed"]:
                yield pytest.TestReport(event["nodeid"], location, dict(event["keywords"]),
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

    def handle(self, event: dict[str, Any]) -> None:
        """Replay one event into pytest's hooks."""
        hook = self.config.hook
        kind = event.get("ev")
        if kind == "logstart":
            self.started = event["nodeid"]
            self.active[event["nodeid"]] = event
            hook.pytest_runtest_logstart(nodeid=event["nodeid"], location=tuple(event["location"]))
        elif kind == "finish":
            for report in self._passed_reports(event):
                hook.pytest_runtest_logreport(report=report)
                self.allure.add_report(report)
            hook.pytest_runtest_logfinish(nodeid=event["nodeid"], location=tuple(event["location"]))
            self._finished(event["nodeid"])
        elif kind == "logreport":
            report = self._report(event["report"])
            if report.nodeid in self.active:
                self.phases.setdefault(report.nodeid, []).append((report.when, report.outcome))
            hook.pytest_runtest_logreport(report=report)
            self.allure.add_report(report)
        elif kind == "logfinish":
            hook.pytest_runtest_logfinish(nodeid=event["nodeid"], location=tuple(event["location"]))
            self._finished(event["nodeid"])
        elif kind in ("collectreport", "deselected") and self.resumed:
            return  # the crashed container's collection reported these already
        elif kind == "collectreport":
            hook.pytest_collectreport(report=self._report(event["report"]))
        elif kind == "deselected":
            self.deselected += len(event["nodeids"])
            hook.pytest_deselected(items=[_RemoteItem(n) for n in event["nodeids"]])
        elif kind == "collection_finish":
            self.collected = list(event["nodeids"])
            self.order = {nodeid: i for i, nodeid in enumerate(self.collected)}
            if self.resumed:
                return  # the tests after a crashed one, counted with the first collection
            self.session.testscollected = len(event["nodeids"])
            terminal = self.config.pluginmanager.get_plugin("terminalreporter")
            if terminal is not None:
                # Items were collected remotely; give the terminal their count.
                terminal._numcollected = self.session.testscollected + self.deselected
            hook.pytest_collection_finish(session=self.session)
        elif kind == "warning" and self.resumed and event["when"] != "runtest":
            return  # the crashed container's configuration and collection warned already
        elif kind == "warning":
            category = getattr(builtins, event["category"], UserWarning)
            if not (isinstance(category, type) and issubclass(category, Warning)):
                category = UserWarning
            message = warnings.WarningMessage(
                category(event["message"]), category, self.local_path(event["filename"]),
                event["lineno"])
            hook.pytest_warning_recorded.call_historic(kwargs={
                "warning_message": message, "when": event["when"],
                "nodeid": event["nodeid"], "location": None})
        elif kind == "allure":
            self._allure_result(event)
        elif kind == "sessionfinish":
            self.remote_exit = int(event["exitstatus"])
        elif kind == "exit":
            self.exit_code = int(event["code"])
            if self.remote_exit is None:
                self.remote_exit = self.exit_code
        elif kind == "hello":
            self.hello = event
            self.hello_at = time.monotonic()
            self.report_keys = list(event.get("report_keys") or ())
            self.workers = int(event.get("workers") or 0)
            self._allure_hello(event)
            terminal = self.config.pluginmanager.get_plugin("terminalreporter")
            if self.workers and terminal is not None:
                # Reports of several files interleave: progress without file names, as
                # pytest-xdist shows it.
                terminal.showfspath = False
        elif kind == "internalerror":
            self.config.get_terminal_writer().line(f"remote INTERNALERROR> {event['text']}",
                                                   red=True)

    @property
    def allure_results(self) -> int:
        """Allure results (and containers) written for this stream so far."""
        return self.allure.written

    def _allure_result(self, event: dict[str, Any]) -> None:
        """Write one streamed Allure result, byte for byte what the worker would have."""
        name = str(event.get("name", ""))
        text = event.get("text")
        if not isinstance(text, str) or not self.allure.write_streamed(name, text):
            self.stray.append(f"hil: an Allure result event that cannot be written: {name[:80]!r}")

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
            self.config.get_terminal_writer().line(
                f"hil: no allure-pytest in the image of '{writer.target}': {RICHER_PARTS}",
                yellow=True)

    def close(self) -> None:
        """Flush a last line that had no newline; close the Allure folder."""
        if self.buffer.strip():
            self._line(self.buffer)
        self.buffer = b""
        self.allure.close()


def _target_name(config: pytest.Config) -> str:
    """The session's target name (until the worker's ``hello`` names its own)."""
    from hil.settings import SETTINGS_KEY

    settings = config.stash.get(SETTINGS_KEY, None)
    return settings.target.name if settings is not None else ""
