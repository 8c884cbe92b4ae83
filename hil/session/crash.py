"""What a test that crashed the interpreter becomes: its failed report and Allure result.

The worker's process died inside a test (``os._exit``, a segfault in CUDA
code), so that test's reports never came.  The controller replays in their
place what pytest reports for a test that fails there: a failed report whose
short message is ``crashed: exit code 3`` or ``crashed: signal SIGSEGV``, with
the output the test had written so far as its captured sections (pytest's
capture files, which the container's entry shell keeps, see
:data:`hil.backends.base.CONTAINER_ENTRY`, and the container's standard error
since it started, where Python's fault handler writes its traceback).  Reports
are built in pytest's own serialized form and go through the same hooks as
the streamed ones, so the terminal, junit, ``--lf`` and ``-x`` count the crash
as one failed test, and the Allure writer builds the test's result from them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

from hil.report.allure import AllureWriter


class Feeder(Protocol):
    """What a crash report needs of :class:`hil.session.EventFeeder`."""

    root: str
    active: dict[str, dict[str, Any]]
    phases: dict[str, list[tuple[str, str]]]
    allure: AllureWriter

    def handle(self, event: dict[str, Any]) -> None: ...


#: Kept output read back, at most (the end is kept: the lines before the crash).
OUTPUT_LIMIT = 64 * 1024


def _tail(data: bytes) -> str:
    text = data[-OUTPUT_LIMIT:].decode("utf-8", "replace")
    return text if len(data) <= OUTPUT_LIMIT else "[... output cut ...]\n" + text


class CrashReport:
    """The reports (and Allure result) of ``nodeid``, whose process died ``how``."""

    def __init__(self, feeder: Feeder, nodeid: str, how: str, run_dir: Path, *,
                 segment: int, stderr_from: int, target: str, allure: bool) -> None:
        self.feeder = feeder
        self.nodeid = nodeid
        self.how = how
        self.run_dir = run_dir
        self.segment = segment
        self.stderr_from = stderr_from
        self.target = target
        self.allure = allure
        self.message = f"crashed: {how}"

    def phase(self) -> str:
        """The phase the test died in, as far as its reports tell.

        Passed phases travel with the test's end, so a test whose reports
        never came is taken to have died in its call.
        """
        phases = self.feeder.phases.get(self.nodeid, [])
        if any(when == "call" for when, _ in phases):
            return "teardown"
        if phases and phases[-1][1] != "passed":  # a failed or skipped set-up: teardown ran
            return "teardown"
        return "call"

    def sections(self, when: str) -> list[tuple[str, str]]:
        """The test's output so far: its captured stdout and stderr, the container's stderr."""
        found: list[tuple[str, str]] = []
        folder = self.run_dir / f"capture-{self.segment}"
        names = {"fd1": "stdout", "fd2": "stderr"}
        try:
            files = sorted(folder.iterdir())
        except OSError:
            files = []
        for stream in ("fd1", "fd2"):
            data = b"".join(f.read_bytes() for f in files if f.name.endswith("-" + stream))
            if data.strip():
                found.append((f"Captured {names[stream]} {when}", _tail(data)))
        try:
            with (self.run_dir / "stderr.log").open("rb") as err:
                err.seek(self.stderr_from)
                data = err.read()
        except OSError:
            data = b""
        if data.strip():
            found.append(("Captured stderr (the container's)", _tail(data)))
        return found

    def _report(self, when: str, outcome: str, location: list[Any],
                sections: list[tuple[str, str]], start: float, stop: float) -> dict[str, Any]:
        """One report in pytest's serialized form (``pytest_report_to_serializable``)."""
        longrepr: dict[str, Any] | None = None
        if outcome == "failed":
            path = os.path.join(self.feeder.root, str(location[0]))
            lines = [f"the interpreter running {self.nodeid} ended ({self.how}) before the "
                     "test did" + ("; its output so far is below\n" if sections else "\n")]
            longrepr = {
                "reprcrash": {"path": path, "lineno": int(location[1] or 0) + 1,
                              "message": self.message},
                "reprtraceback": {"reprentries": [{"type": "ReprEntryNative",
                                                   "data": {"lines": lines}}],
                                  "extraline": None, "style": "native"},
                "sections": [], "chain": None,
            }
        return {"nodeid": self.nodeid, "location": location,
                "keywords": {self.nodeid.rsplit("::", 1)[-1]: 1}, "outcome": outcome,
                "longrepr": longrepr, "when": when, "user_properties": [],
                "sections": [list(s) for s in sections], "duration": round(stop - start, 6),
                "start": start, "stop": stop, "$report_type": "TestReport"}

    def replay(self) -> None:
        """Feed the test's failed report (and a closing teardown) and its end to the hooks."""
        started = self.feeder.active.get(self.nodeid) or {}
        path, _, name = self.nodeid.partition("::")
        location = list(started.get("location") or (path, None, name))
        start = float(started.get("t") or time.time())
        stop = max(start, time.time())
        when = self.phase()
        sections = self.sections(when)
        reports = [self._report(when, "failed", location, sections, start, stop)]
        if when != "teardown":
            # What closes a test in junit (its system-out) and the terminal: the teardown.
            reports.append(self._report("teardown", "passed", location, sections, stop, stop))
        if self.allure:
            # The container's allure-pytest died with the test: its result is written
            # from these reports by the one writer, as for an image without allure-pytest.
            self.feeder.allure.write_reports_of(self.nodeid)
        for report in reports:
            self.feeder.handle({"ev": "logreport", "report": report})
        self.feeder.handle({"ev": "logfinish", "nodeid": self.nodeid, "location": location})


__all__ = ["CrashReport"]
