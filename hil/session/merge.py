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

from hil.session.events import EventFeeder


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
        self.session.testscollected = sum(self.counts.values())
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal._numcollected = self.session.testscollected + self.deselected
        self.config.hook.pytest_collection_finish(session=self.session)
        backlog, self.backlog = self.backlog, []
        for feeder, event in backlog:
            feeder.replay(event)


class PoolFeeder(EventFeeder):
    """One board's event stream, merged into the pool's session."""

    TEST_EVENTS = frozenset({"logstart", "logreport", "finish", "logfinish"})

    def __init__(self, config: pytest.Config, session: pytest.Session, board: str,
                 shared: PoolCollection, allure_dir: Path | None, mount: str,
                 hold: bool = False) -> None:
        super().__init__(config, session, mount, allure_dir=allure_dir)
        self.board = board
        self.shared = shared
        #: Hold back the rest of a failed test's events (its teardown report, its end) until
        #: its failure is attributed: junit takes the label from the teardown report.
        self.hold = hold
        self.held: dict[str, list[dict[str, Any]]] = {}

    def handle(self, event: dict[str, Any]) -> None:
        """Replay one event, merging the collection with the other boards'."""
        kind = event.get("ev")
        shared = self.shared
        if kind in ("collectreport", "deselected") or (
                kind == "warning" and event.get("when") != "runtest"):
            if shared.owner.setdefault(str(kind), self.board) != self.board:
                return  # another board reported the same already
            if kind == "deselected":
                shared.deselected += len(event["nodeids"])
        if kind == "collection_finish":
            self.collected = list(event["nodeids"])
            self.order = {nodeid: i for i, nodeid in enumerate(self.collected)}
            shared.settle(self.board, len(self.collected))
            return
        if kind in self.TEST_EVENTS and not shared.reported:
            shared.backlog.append((self, event))
            if kind == "logstart":  # known as running now: a crash at once must find it
                self.started = event["nodeid"]
                self.active[event["nodeid"]] = event
            return
        self.replay(event)

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
        super().handle(event)
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
