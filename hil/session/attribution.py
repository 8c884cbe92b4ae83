"""Failure attribution (``--hil-confirm-failures``): flaky, board-specific or product failure.

A test that failed on a board of a pool is re-run once on the same board and
once on another (each in a fresh container, ``HIL_ATTEMPT=2``), after the
suite's own run.  The re-runs' reports are not replayed as results of their
own (the session's counts and exit code stay those of the first run); they
decide the label:

* **flaky**: it passed when re-run on its own board;
* **board-specific**: it failed again on its board and passed on another;
* **product failure**: it failed on both;
* **unconfirmed**: it failed again on its board and there is no other board.

The label shows in the terminal summary, as a junit property
``attribution`` of the test case, and in the Allure result: its message
starts with ``hil attribution: LABEL`` (which ``reports/allure/categories.json``
sorts into categories), and both re-runs' logs are attached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hil.report.allure import AllureWriter

HELP_CONFIRM = ("re-run each failed test of a board pool once on the same board and once on "
                "another, and label it flaky, board-specific or product failure")

FLAKY = "flaky"
BOARD_SPECIFIC = "board-specific"
PRODUCT = "product failure"
UNCONFIRMED = "unconfirmed"


def label(same_passed: bool, other_passed: bool | None) -> str:
    """The attribution of a failure from its re-runs (``other_passed`` None: no other board)."""
    if same_passed:
        return FLAKY
    if other_passed is None:
        return UNCONFIRMED
    return BOARD_SPECIFIC if other_passed else PRODUCT


@dataclass
class Rerun:
    """The outcome of one re-run container: per test, passed or failed, and its log."""

    board: str
    outcomes: dict[str, bool] = field(default_factory=dict)
    log: Path | None = None
    #: Why the re-run itself did not complete (an infrastructure fault), if it did not.
    fault: str = ""


def outcomes_of(events: bytes) -> dict[str, bool]:
    """node id -> whether every phase passed (or skipped), from a worker's event lines."""
    out: dict[str, bool] = {}
    for line in events.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if event.get("ev") == "logreport":
            report = event.get("report") or {}
            nodeid = str(report.get("nodeid", ""))
            ok = report.get("outcome") != "failed"
            out[nodeid] = out.get(nodeid, True) and ok
        elif event.get("ev") == "finish":
            out.setdefault(str(event.get("nodeid", "")), True)
    return out


@dataclass(frozen=True)
class Attribution:
    """One failed test's label and the evidence."""

    nodeid: str
    board: str
    label: str
    same: Rerun
    other: Rerun | None

    def detail(self) -> str:
        """One line: where it failed and how each re-run went."""
        def said(run: Rerun) -> str:
            if run.fault:
                return f"re-run on {run.board} did not complete ({run.fault})"
            ok = run.outcomes.get(self.nodeid)
            return f"re-run on {run.board} " + ("passed" if ok else
                                                "failed" if ok is False else "did not run it")
        parts = [f"failed on {self.board}", said(self.same)]
        if self.other is not None:
            parts.append(said(self.other))
        return "; ".join(parts)


def mark_allure(folder: Path, found: Attribution) -> bool:
    """Label the failed test's Allure result in ``folder`` and attach the re-runs' logs."""
    logs = [(f"re-run on {run.board} (pytest.log)", run.log) for run in (found.same, found.other)
            if run is not None and run.log is not None]
    writer = AllureWriter(folder, found.board)
    try:
        return writer.mark_attribution(found.nodeid, found.label, found.detail(), logs)
    finally:
        writer.close()


__all__ = ["HELP_CONFIRM", "Attribution", "Rerun", "label", "mark_allure", "outcomes_of"]
