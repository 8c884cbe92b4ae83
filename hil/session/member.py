"""One member of a run: the target itself, a board of a pool, or a routed target.

A member owns its lifecycle: ``prepare`` (preflight, lease, sync, image),
then container *segments*: the first runs the member's tests; when a test
crashes the interpreter, :meth:`Member.resume` reports it and starts a fresh
container with the tests after it (the one place of ``--hil-max-resumes`` and
of the ``--maxfail`` recount); ``read_back`` stops what is still going, fetches
the results once per segment and replays what the stream missed; ``ending``
classifies the end (:func:`hil.session.ending.classify`).

Only ``prepare`` and a segment's container run off the session's main thread:
a segment's output travels to the main thread on the controller's queue, where
pytest's hooks are called.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hil.backends.base import PREPARE_PHASES, Backend, RunEnd, RunPlan
from hil.config import TargetSpec
from hil.errors import HilError, RunLostError
from hil.progress import Progress
from hil.session.crash import CrashReport
from hil.session.ending import Crash, Ending, ProcessEnd, StreamOutcome, classify
from hil.session.merge import PoolFeeder
from hil.worker import encode_resume

#: What a member's threads hand the main thread: (member, "out" | "err" | "end", data).
Events = queue.Queue[tuple["Member", str, Any]]


@dataclass
class Member:
    """One member in this session: its backend, its current plan and feeder, its outcome."""

    name: str
    spec: TargetSpec
    backend: Backend
    #: The member's run folder (the session's own for a run of one member).
    out: Path
    progress: Progress
    image: str = ""
    #: Why the member is out of this session (preflight, lease, sync or build failed).
    quarantined: HilError | None = None
    plan: RunPlan | None = None
    feeder: PoolFeeder | None = None
    #: pytest's exit code over the member's containers, or the fault that ended its run.
    code: int | None = None
    error: HilError | None = None
    #: Tests that crashed the interpreter (the member resumed after each).
    crashes: int = 0
    #: Where the current container's standard error starts in ``stderr.log``.
    stderr_at: int = 0
    #: Why the member was lost mid-run, when its unfinished tests moved to another.
    lost: str = ""
    seconds: float = 0.0
    outcomes: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: (run id, segment) of the last results fetched.
    fetched: tuple[str, int] | None = None
    #: When the current segment's container started (monotonic).
    segment_start: float = 0.0

    # -- prepare ----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Preflight, lease, sync and image for the current plan; a fault quarantines the
        member (any thread)."""
        assert self.plan is not None
        try:
            start = time.monotonic()
            try:
                report = self.backend.preflight()
            finally:
                self.timings["preflight"] = round(time.monotonic() - start, 3)
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "preflight.json").write_text(json.dumps(report.as_dict(), indent=1),
                                                     encoding="utf-8")
            try:
                self.image = self.backend.prepare(self.plan)
            finally:  # the backend timed its steps: lease, sync, image, services
                self.timings.update((name, self.backend.timings[name]) for name in
                                    PREPARE_PHASES if name in self.backend.timings)
        except HilError as err:
            self.quarantined = err

    # -- one container ----------------------------------------------------------------------
    def start(self, events: Events) -> None:
        """Run the current plan's container on a thread of its own; its output goes to
        ``events``, its end last (a :class:`ProcessEnd`)."""
        log = self.out / "stderr.log"
        self.stderr_at = log.stat().st_size if log.exists() else 0
        self.segment_start = time.monotonic()
        assert self.plan is not None
        threading.Thread(target=self._run, args=(self.plan, events), daemon=True,
                         name=f"hil-run-{self.name}-{self.plan.segment}").start()

    def _run(self, plan: RunPlan, events: Events) -> None:
        def sink(what: str) -> Callable[[bytes], None]:
            return lambda data: events.put((self, what, data))

        end: ProcessEnd
        try:
            result: RunEnd = self.backend.run(plan, self.image, sink("out"), sink("err"))
            end = ProcessEnd(result.exit_code, result.oom_killed, result.reason)
        except HilError as err:
            end = ProcessEnd(None, fault=err)
        except Exception as err:  # never leave the main loop waiting for this member
            end = ProcessEnd(None, fault=RunLostError(f"the run failed: {err!r}",
                                                      target=self.name))
        events.put((self, "end", end))

    def write_stderr(self, data: bytes) -> None:
        """Keep the container's standard error in ``stderr.log`` (what a crash report reads)."""
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / "stderr.log").open("ab") as log:
            log.write(data)

    @property
    def running(self) -> bool:
        """Whether a container of this member may still be going (no final event yet)."""
        return self.plan is not None and self.feeder is not None and not self.feeder.done

    def read_back(self, log: Callable[[str], None]) -> HilError | None:
        """Stop what still runs, bring the current container's results here (once), replay
        what the stream missed; the fault that stopped the fetch, if any (``log``: a line
        for ``hil.log``)."""
        feeder, plan = self.feeder, self.plan
        if plan is None:
            return None
        fault: HilError | None = None
        if self.fetched != (plan.run_id, plan.segment):
            self.fetched = (plan.run_id, plan.segment)
            if self.running:  # cut short (a lost link, an interrupt): it may still be going
                self.backend.stop()
            start = time.monotonic()
            try:
                self.backend.fetch(plan)
            except HilError as err:
                fault = err
            self.timings["fetch"] = round(self.timings.get("fetch", 0.0)
                                          + time.monotonic() - start, 3)
        if feeder is not None and not feeder.done:
            try:
                replayed = feeder.recover(self.out / "events.jsonl")
            except Exception as err:  # a replay that fails must not hide the run's own fault
                log(f"could not replay the worker's record: {err!r}")
            else:
                if replayed:
                    log(f"{replayed} event(s) read back from the worker's record")
        return fault

    def outcome(self) -> StreamOutcome:
        """What the current container's stream showed (the one reading of the feeder's state)."""
        feeder = self.feeder
        assert feeder is not None
        return StreamOutcome(hello=feeder.hello is not None, exit_event=feeder.exit_code,
                             remote_exit=feeder.remote_exit, running=feeder.running,
                             started=None if feeder.workers else feeder.started)

    def ending(self, end: ProcessEnd) -> Ending:
        """How the current container's run ended (after :meth:`read_back`)."""
        stderr = self.out / "stderr.log"
        tail = ""
        if stderr.exists():
            tail = stderr.read_bytes()[self.stderr_at:][-8000:].decode("utf-8", "replace")
        return classify(self.outcome(), end, target=self.name, memory=self.spec.docker.memory,
                        tail=tail)

    def record_times(self) -> None:
        """Add the segment's container start-up and test time to the member's phases."""
        now = time.monotonic()
        hello = self.feeder.hello_at if self.feeder is not None else None
        hello = hello if hello is not None else now
        for name, seconds in (("container start", hello - self.segment_start),
                              ("tests", now - hello)):
            self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 3)

    # -- a crashed test ---------------------------------------------------------------------
    def resume(self, crash: Crash, session: pytest.Session, *, limit: int, maxfail: int,
               allure: bool) -> str | None:
        """``crash.nodeid`` crashed the interpreter: report it failed and plan a fresh
        container with the tests after it; the line to show when it resumes (None: the
        member's run is over, its ``code`` or ``error`` set).

        The session's failures so far, the crash included, count towards ``--maxfail``
        in the fresh container, as in one pytest session; with ``-x`` (or ``--maxfail``
        reached) the crash ends the run.
        """
        feeder, plan = self.feeder, self.plan
        assert feeder is not None and plan is not None
        self.crashes += 1
        CrashReport(feeder, crash.nodeid, crash.how, self.out, segment=plan.segment,
                    stderr_from=self.stderr_at, target=self.name, allure=allure).replay()
        remaining = feeder.remaining(crash.nodeid)
        # The session's failures, and this member's that wait for the others' collection.
        failed = session.testsfailed + sum(
            1 for owner, event in feeder.shared.backlog if owner is feeder
            and event.get("ev") == "logreport" and event["report"].get("outcome") == "failed")
        if (not remaining or session.shouldfail or session.shouldstop
                or (maxfail and failed >= maxfail)):
            self.code = 1  # a crashed test is a failed one; nothing after it to run
            return None
        if self.crashes > limit:
            self.error = RunLostError(
                f"{crash.nodeid} crashed ({crash.how}) after {limit} resume(s), the limit "
                "(--hil-max-resumes)", not_run=remaining, target=self.name)
            return None
        segment = plan.segment + 1
        args = plan.pytest_args
        if maxfail:
            args = (*args, f"--maxfail={max(1, maxfail - failed)}")
        self.plan = dataclasses.replace(plan, segment=segment, pytest_args=args, env={
            **plan.env, "HIL_SEGMENT": str(segment),
            "HIL_RESUME": encode_resume(remaining, crash.nodeid, crash.how, feeder.last_n)})
        feeder.next_segment()
        return (f"{crash.nodeid} crashed ({crash.how}); resuming with the {len(remaining)} "
                f"test(s) after it in a fresh container ({self.crashes} of {limit})")


__all__ = ["Events", "Member"]
