"""Many workers' event streams merged into one local session (board pools, routed targets).

Every member (a board of a pool, a routed target) collects the same suite in
its container and reports its own part; :class:`PoolCollection` reports the
session's collection once, :class:`PoolFeeder` replays one member's stream as
that member's (:func:`hil.session.ending.combine_exit_codes` combines their codes).
All of it runs on the session's main thread: pytest's hooks are not called
from elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hil.session.events import EventFeeder, report_collected


class PoolCollection:
    """What the boards' streams share: one collection, reported once, and the current board.

    Every board collects the same tests; each reports its own part.  The
    session's collection is reported when every running board has reported
    its part (or ended): the count is the parts' sum.  Events of tests that
    arrive before that wait in ``backlog``.  Collection errors, deselections
    and collection-time warnings, which every board sees alike, are taken from
    the first board that reports each kind.
    """

    def __init__(self, config: pytest.Config, session: pytest.Session, boards: list[str]) -> None:
        self.config = config
        self.session = session
        self.waiting = set(boards)
        self.counts: dict[str, int] = {}
        self.deselected = 0
        self.owner: dict[str, str] = {}
        self.backlog: list[tuple[PoolFeeder, dict[str, Any]]] = []
        self.reported = False
        #: The board whose event is being replayed (read by the junit property hook).
        self.current = ""
        #: node id -> the board that ran it.
        self.board_of: dict[str, str] = {}

    def settle(self, board: str, count: int | None) -> None:
        """``board`` reported its part (``count`` tests) or ended without one (None)."""
        if count is not None:
            self.counts[board] = count
        self.waiting.discard(board)
        if self.waiting or self.reported:
            return
        self.reported = True
        report_collected(self.config, self.session, sum(self.counts.values()), self.deselected)
        backlog, self.backlog = self.backlog, []
        for feeder, event in backlog:
            feeder.replay(event)


class PoolFeeder(EventFeeder):
    """One board's event stream, merged into the pool's session."""

    TEST_EVENTS = frozenset({"logstart", "logreport", "finish", "logfinish"})

    def __init__(self, config: pytest.Config, session: pytest.Session, board: str,
                 shared: PoolCollection, allure_dir: Path | None, mount: str,
                 hold: bool = False, *, nonce: str | None = None, record: Path | None = None,
                 resumed: bool = False) -> None:
        super().__init__(config, session, mount, allure_dir=allure_dir, nonce=nonce,
                         record=record, resumed=resumed)
        self.board = board
        self.shared = shared
        #: Hold back the rest of a failed test's events (its teardown report, its end) until
        #: its failure is attributed: junit takes the label from the teardown report.
        self.hold = hold
        self.held: dict[str, list[dict[str, Any]]] = {}

    def handle(self, event: dict[str, Any]) -> None:
        """Replay one event; a test's events wait until the pool's collection is reported."""
        if event.get("ev") in self.TEST_EVENTS:
            if not self.shared.reported:
                self.shared.backlog.append((self, event))
                if event.get("ev") == "logstart":  # running now: a crash at once must find it
                    self._started = event["nodeid"]
                    self.active[event["nodeid"]] = event
                elif event.get("ev") in ("finish", "logfinish"):  # it ended, whatever waits
                    self.done_ids.add(event["nodeid"])
                return
            self.replay(event)
            return
        super().handle(event)

    def _first(self, kind: str) -> bool:
        """Whether this board is the first to report ``kind`` (the others' are the same)."""
        return self.shared.owner.setdefault(kind, self.board) == self.board

    def on_collectreport(self, event: dict[str, Any]) -> None:
        """A collection error or skip, reported once for the pool."""
        if self._first("collectreport"):
            super().on_collectreport(event)

    def on_deselected(self, event: dict[str, Any]) -> None:
        """Deselected tests, counted once for the pool."""
        if self._first("deselected"):
            self.shared.deselected += len(event["nodeids"])
            super().on_deselected(event)

    def on_warning(self, event: dict[str, Any]) -> None:
        """A warning; those of configuration and collection once for the pool."""
        if event["when"] == "runtest" or self._first("warning"):
            super().on_warning(event)

    def on_collection_finish(self, event: dict[str, Any]) -> None:
        """This board's part of the suite; the pool's collection is reported with the last part."""
        self._set_collected(event["nodeids"])
        self.shared.settle(self.board, len(self.collected))

    def replay(self, event: dict[str, Any]) -> None:
        """Hand the event to pytest's hooks as this board's (or hold it back, see ``hold``)."""
        report = event.get("report") if event.get("ev") == "logreport" else None
        nodeid = str(report.get("nodeid", "")) if report else str(event.get("nodeid", ""))
        if nodeid in self.held:
            self.held[nodeid].append(event)
            return
        self.shared.current = self.board
        if event.get("ev") == "logstart":
            self.shared.board_of[event["nodeid"]] = self.board
        EventFeeder.handle(self, event)
        if (self.hold and report and report.get("outcome") == "failed"
                and report.get("when") in ("setup", "call")):
            self.held[nodeid] = []

    def release(self) -> None:
        """Replay every held-back event, in order."""
        held, self.held = self.held, {}
        for events in held.values():
            for event in events:
                self.replay(event)


__all__ = ["PoolCollection", "PoolFeeder"]
