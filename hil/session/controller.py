"""The controller of container targets: ONE session over a list of members.

Registered by the plugin for every container target.  A single target is a
run of one member; a pool (``[ssh] hosts``, :mod:`hil.session.pool`) is one
member per board; a routed run (``--target a,b``, :mod:`hil.session.routing`)
is one member per target, each with its own spec.  A :class:`Layout` says who
the members are and what each container is told; everything else is the same
for all three:

* every member prepares (preflight, lease, sync, image) at once; one that fails
  is quarantined (a pool's others share its tests) or is the session's fault;
* each member runs its containers on a thread of its own (:mod:`hil.session.member`);
  their output is replayed into this one local session from the main thread
  (:mod:`hil.session.merge`), so the terminal, junit, ``--lf`` and ``-x`` behave as
  if the tests ran here;
* a member's end is classified by :func:`hil.session.ending.classify` (a crashed
  test resumes that member), and the members' codes are combined by the one rule
  :func:`hil.session.ending.combine_exit_codes`;
* ``-x`` / ``--maxfail`` reached, Ctrl-C and SIGTERM stop every member through
  :meth:`hil.backends.base.Backend.stop`; whatever ran is kept.

Pool policies (moving a lost board's tests, ``--hil-confirm-failures``,
``--hil-hold-on-failure``) act on members after the run (:mod:`hil.session.pool`).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hil.backends import load_backend
from hil.backends.base import RunPlan
from hil.config import TargetSpec
from hil.errors import ExitCode, HilError
from hil.progress import MemberProgress, TerminalProgress, terminal_line
from hil.session.args import checkout_subdir, remote_args
from hil.session.attribution import Attribution
from hil.session.ending import ProcessEnd, combine_exit_codes
from hil.session.hold import Hold
from hil.session.member import Events, Member
from hil.session.merge import PoolCollection, PoolFeeder
from hil.session.record import publish, terminal_summary, write_record
from hil.session.runfolder import allure_env, new_run_id, register_run_junit, run_allure_dir
from hil.session.shards import shard_levels, share_env
from hil.settings import HilSettings, git_commit

#: What a member's container gets in its environment besides the common part:
#: (config, the member's spec, its place among the running members, how many run).
MemberEnv = Callable[[pytest.Config, TargetSpec, int, int], dict[str, str]]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so it cleans up as Ctrl-C does."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass(frozen=True)
class Layout:
    """Who the members of a session are and what each one's container is told."""

    #: The session's name (the target's, the pool's, the routed targets' joined).
    name: str
    specs: tuple[TargetSpec, ...]
    env: MemberEnv
    #: How a member is named in lines, the junit property and the summary.
    word: str = "target"
    #: A pool: a quarantined or lost member's tests go to the others.
    pool: bool = False


def target_layout(spec: TargetSpec, tier: int) -> Layout:
    """A single container target: a run of one member."""
    def env(config: pytest.Config, member: TargetSpec, index: int, count: int) -> dict[str, str]:
        return {**member.env, "HIL_TARGET": member.name, "HIL_TIER": str(tier),
                **share_env(config, shard_levels(config))}

    return Layout(name=spec.name, specs=(spec,), env=env)


class Controller:
    """Drives the members of a container session and feeds their reports into it."""

    def __init__(self, config: pytest.Config, settings: HilSettings, layout: Layout) -> None:
        self.config = config
        self.settings = settings
        self.layout = layout
        self.name = layout.name
        from hil.ssh.connection import connect_in_background

        for spec in layout.specs:  # the handshakes overlap the rest of the start-up
            if spec.kind == "ssh" and not spec.ssh.hosts:
                connect_in_background(spec)
        self.run_id = new_run_id(self.name)
        self.run_dir = settings.reports / "runs" / self.run_id
        self.started = time.time()
        self.log: list[str] = []
        self.lock = threading.Lock()
        self.members: list[Member] = []
        #: Runs of a lost member's unfinished tests on another member.
        self.movers: list[Member] = []
        self.shared: PoolCollection | None = None
        self.error: HilError | None = None
        self.exitstatus: int | None = None
        self.timings: dict[str, float] = {}
        self.publisher: threading.Thread | None = None
        self.commit: str | None = None
        #: -x / --maxfail was reached: the other members' runs are being stopped.
        self.stopping = False
        self.stop_code = 0
        #: Policies after the run (set by the pool's layout; see hil.session.pool).
        self.after_run: list[Callable[[Controller, list[Member]], None]] = []
        self.summary_lines: list[Callable[[Controller], list[tuple[str, dict[str, bool]]]]] = []
        self.confirm = False
        #: node id -> its failure's attribution (``--hil-confirm-failures``).
        self.attribution: dict[str, Attribution] = {}
        self.hold: Hold | None = None
        #: Set when the members run: the session, their events' queue, when they started.
        self.session: pytest.Session
        self.events: Events = queue.Queue()
        self.run_start = 0.0
        register_run_junit(config, self.run_dir)

    @property
    def single(self) -> bool:
        """Whether this session has one member (lines then carry no member name)."""
        return len(self.layout.specs) == 1 and not self.layout.pool

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> bool:
        # Tests are collected inside the containers; none here (pytest 7 sets
        # Session.items only in its own collection, which this replaces).
        session.items = []
        return True

    # -- members and plans ------------------------------------------------------------------
    def line(self, member: Member | None, text: str, **markup: bool) -> None:
        """A line of the session on the terminal and in ``hil.log`` (named after ``member``)."""
        text = f"hil: {text}" if member is None or self.single else f"hil: [{member.name}] {text}"
        with self.lock:
            self.log.append(text)
        terminal_line(self.config, text, **markup)

    def member(self, spec: TargetSpec, out: Path | None = None) -> Member:
        """A member for ``spec``, its results in ``out`` (by default its own run folder)."""
        progress = (TerminalProgress(self.config, self.log) if self.single else
                    MemberProgress(self.config, spec.name, self.log, self.lock))
        backend = load_backend(spec)(spec, self.settings.root, progress,
                                     rebuild=bool(self.config.getoption("hil_rebuild")),
                                     lease_timeout=self.config.getoption("hil_lease_timeout"))
        if out is None:
            out = self.run_dir if self.single else self.run_dir / "boards" / spec.name
        return Member(name=spec.name, spec=spec, backend=backend, out=out, progress=progress)

    def plan(self, member: Member, index: int = 0, count: int = 1) -> RunPlan:
        """What ``member``'s first container runs (see :func:`first_plan`)."""
        if self.commit is None:
            self.commit = git_commit(self.settings.root)
        env = {**self.layout.env(self.config, member.spec, index, count),
               "HIL_RUN_ID": self.run_id, "HIL_ATTEMPT": "1",
               "HIL_ENVIRONMENT": f"git.commit={self.commit}\nrun.id={self.run_id}",
               **allure_env(self.settings.allure_dir)}
        return first_plan(self.config, self.settings.root, env, member.out,
                          self.run_id if self.single else f"{self.run_id}-{member.name}")

    def feeder(self, member: Member, session: pytest.Session, resumed: bool = False) -> PoolFeeder:
        """``member``'s event stream, merged into the session (``resumed``: its collection
        was counted with another member's run)."""
        assert self.shared is not None and member.plan is not None
        return PoolFeeder(self.config, session, member.name, self.shared,
                          run_allure_dir(self.settings.allure_dir, member.out),
                          member.spec.docker.workdir, hold=self.confirm,
                          nonce=member.plan.nonce, record=member.out / "events.jsonl",
                          resumed=resumed)

    # -- the run ----------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        """Prepare every member, run them, apply the policies; read back on every path."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.single:
            terminal = self.config.pluginmanager.get_plugin("terminalreporter")
            if terminal is not None:
                terminal.showfspath = False  # the members' files interleave, as under xdist
        self.members = [self.member(spec) for spec in self.layout.specs]
        try:
            with sigterm_as_interrupt():
                try:
                    self._prepare()
                    self._run(session)
                except HilError as err:
                    self._fail(err)
                finally:  # also after an interrupt: every member stopped, whatever ran kept
                    self._read_back_all()
                    self.publisher = publish(self)
        finally:
            write_record(self)
        return True

    def _prepare(self) -> None:
        started = time.monotonic()
        members = self.members
        for member in members:  # fetched on every path (a compose project's logs)
            member.plan = self.plan(member)
        if len(members) == 1:  # on this thread: Ctrl-C reaches the backend's own step
            members[0].prepare()
        else:
            terminal_line(self.config, f"hil: '{self.name}': preparing {len(members)} "
                          f"{self.layout.word}(s) at once", cyan=True)
            with ThreadPoolExecutor(max_workers=len(members)) as pool:
                list(pool.map(Member.prepare, members))
        self.timings["prepare"] = round(time.monotonic() - started, 3)
        for member in members:
            err = member.quarantined
            if err is not None and not self.single:
                terminal_line(self.config, f"hil: {self.layout.word} '{member.name}' quarantined "
                              f"for this session: [{err.kind}] {err.message}"
                              + (f"; {err.hint}" if err.hint else ""), yellow=True, bold=True)

    def _run(self, session: pytest.Session) -> None:
        """The healthy members run their parts; the policies follow; the exit code."""
        healthy = [m for m in self.members if m.quarantined is None]
        faults = [m.quarantined for m in self.members if m.quarantined is not None]
        if self.layout.pool and not healthy:
            from hil.session.pool import none_healthy

            raise none_healthy(self.name, self.members)
        if healthy:
            self._run_members(session, healthy)
        if faults and not self.layout.pool:
            raise faults[0]  # a target's tests have nowhere else to go: its fault is the code
        if self.error is None:
            runs = [*healthy, *self.movers]
            errors = [m.error for m in runs if m.error is not None]
            if errors:
                self._fail(max(errors, key=lambda e: int(e.exit_code)))
            else:
                codes = [m.code for m in runs if m.code is not None]
                self.exitstatus = combine_exit_codes(
                    [*codes, self.stop_code] if self.stopping else codes)

    def _run_members(self, session: pytest.Session, healthy: list[Member]) -> None:
        self.shared = PoolCollection(self.config, session, [m.name for m in healthy])
        self.session, events = session, self.events
        self.run_start = run_start = time.monotonic()
        for index, member in enumerate(healthy):
            member.plan = self.plan(member, index, len(healthy))
            member.feeder = self.feeder(member, session)
            member.start(events)
        step = f"running tests in {healthy[0].image} on '{healthy[0].name}'"
        if self.single:
            healthy[0].progress.step(step)
        else:
            terminal_line(self.config, f"hil: running on {len(healthy)} {self.layout.word}(s): "
                          + ", ".join(m.name for m in healthy), cyan=True)
        self.pump(session, healthy, events, run_start)
        for policy in self.after_run:
            policy(self, healthy)
        self.timings["tests"] = round(time.monotonic() - run_start, 3)

    def pump(self, session: pytest.Session, runs: list[Member], events: Events,
             run_start: float) -> None:
        """Replay the members' output here until every one of ``runs`` has ended."""
        running = len(runs)
        while running:
            member, what, data = events.get()
            feeder = member.feeder
            assert feeder is not None
            if what == "out":
                feeder.feed(data)
            elif what == "err":
                member.write_stderr(data)
                text = data.decode("utf-8", "replace").rstrip("\n")
                if text:
                    terminal_line(self.config, text if self.single else f"[{member.name}] {text}",
                                  yellow=True)
            elif not self._ended(session, member, data, events):
                running -= 1
                member.seconds = round(time.monotonic() - run_start, 3)
            if (session.shouldfail or session.shouldstop) and not self.stopping:
                self._stop_others(session)

    def _stop_others(self, session: pytest.Session) -> None:
        """``-x`` / ``--maxfail`` reached: stop the other members' runs, as one session stops.

        The member whose report stopped the session (the last one replayed: a report
        may wait for the others' collection) stops on its own, with the same options.
        The local session's verdict counts among the codes: its failures are there.
        """
        self.stopping = True
        self.stop_code = int(ExitCode.TESTS_FAILED) if session.testsfailed else 0
        current = self.shared.current if self.shared is not None else ""
        for other in [*self.members, *self.movers]:
            if other.name != current and other.running:
                threading.Thread(target=other.backend.stop, daemon=True,
                                 name=f"hil-stop-{other.name}").start()

    def _ended(self, session: pytest.Session, member: Member, end: ProcessEnd,
               events: Events) -> bool:
        """A member's container ended: classify it; True when the member runs on (resumed)."""
        feeder = member.feeder
        assert feeder is not None and member.plan is not None
        feeder.close()
        member.record_times()
        fault = None if feeder.done else self._read_back(member)
        if self.stopping and not feeder.done:
            return False  # stopped for -x: what it ran is kept, the others' failure is the code
        ending = member.ending(end)
        if ending.early:
            self.line(member, f"pytest in the container stopped before its session started "
                      f"(exit {ending.code}); its standard error is above and in "
                      f"{os.path.relpath(member.out / 'stderr.log')}", red=True)
        if ending.crash is not None:
            resumed = member.resume(ending.crash, session,
                                    limit=int(self.config.getoption("hil_max_resumes")),
                                    maxfail=int(self.config.getoption("maxfail") or 0),
                                    allure=self.settings.allure_dir is not None)
            if resumed is not None:
                self.line(member, resumed, cyan=True)
                member.start(events)
                return True
        elif ending.error is not None:
            member.error = ending.error
        elif ending.code is not None:
            member.code = combine_exit_codes([1, ending.code]) if member.crashes else ending.code
        if member.error is None and fault is not None:
            member.error = fault
        if feeder.hello is None or not feeder.collected:
            assert self.shared is not None
            self.shared.settle(member.name, None)
        return False

    # -- the end ----------------------------------------------------------------------------
    def _read_back_all(self) -> None:
        """Stop every member still running (an interrupt, a fault), fetch, replay the rest."""
        runs = [m for m in [*self.members, *self.movers] if m.plan is not None]
        for member in runs:
            if member.running:
                member.backend.stop()
        for member in runs:
            fault = self._read_back(member)
            if fault is not None and self.single and self.error is None:
                self._fail(fault)
        if self.shared is not None:  # stopped before its collection: the others' reports wait
            for member in runs:
                if member.feeder is not None and not member.feeder.collected:
                    self.shared.settle(member.name, None)

    def _read_back(self, member: Member) -> HilError | None:
        """:meth:`Member.read_back`, its notes in ``hil.log``, a failed fetch on the terminal."""
        def note(text: str) -> None:
            with self.lock:
                self.log.append(f"hil: [{member.name}] {text}")

        fault = member.read_back(note)
        if fault is not None:
            self.line(member, f"could not fetch results: {fault}", red=True)
        return fault

    def _fail(self, err: HilError) -> None:
        self.error = err
        self.exitstatus = int(err.exit_code)
        terminal_line(self.config, f"hil: error: {err.details()}", red=True, bold=True)
        (self.run_dir / "error.json").write_text(json.dumps({
            "kind": err.kind, "exit_code": int(err.exit_code), "message": str(err),
            "target": self.name, "tail": err.tail}, indent=1), encoding="utf-8")

    # -- hooks ------------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Name the member in the report (a junit property) and count its outcomes."""
        if self.shared is None or not self.shared.current:
            return
        name = self.shared.current
        ends = report.when == "teardown" or (report.when == "setup" and report.outcome != "passed")
        if not self.single and ends and (self.layout.word, name) not in report.user_properties:
            report.user_properties.append((self.layout.word, name))
        found = self.attribution.get(report.nodeid)
        if found is not None and report.when == "teardown":
            report.user_properties.append(("attribution", found.label))
        for member in self.members:
            counts = report.when == "call" or report.outcome != "passed"
            if (member.name == name and counts
                    and member.outcomes.get(report.nodeid) in (None, "passed")):
                member.outcomes[report.nodeid] = report.outcome

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.exitstatus is not None:
            session.exitstatus = self.exitstatus

    def pytest_unconfigure(self) -> None:
        members, self.members = self.members, []
        # Closed here: containers' removal and leases' release overlap the reports and summary.
        if len(members) == 1:
            members[0].backend.close()
        elif members:
            with ThreadPoolExecutor(max_workers=len(members)) as pool:
                list(pool.map(lambda m: m.backend.close(), members))
        if self.publisher is not None:
            self.publisher.join()
            self.publisher = None

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminal_summary(self, terminalreporter)


def first_plan(config: pytest.Config, root: Path, env: dict[str, str], out: Path,
               run_id: str) -> RunPlan:
    """A member's first container: pytest's arguments as the container sees them, where
    pytest was started, ``--lf``'s record, the environment ``env``."""
    params = config.invocation_params
    cwd = Path(params.dir)
    lastfailed = None
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    if cache is not None and (config.getoption("lf", False)
                              or config.getoption("failedfirst", False)):
        lastfailed = json.dumps(cache.get("cache/lastfailed", {}))
    return RunPlan(run_id=run_id, pytest_args=tuple(remote_args(list(params.args), root, cwd)),
                   subdir=checkout_subdir(root, cwd), env=env, local_out=out,
                   lastfailed=lastfailed)


def make_controller(config: pytest.Config, settings: HilSettings) -> Controller:
    """The session plugin for ``settings.target``: one target, a pool, or a routed run."""
    from hil.session.routing import ROUTING_KEY, routed_layout

    spec = settings.target
    routing = config.stash.get(ROUTING_KEY, None)
    if routing is not None:
        return Controller(config, settings, routed_layout(routing))
    if spec.labgrid is not None:  # its members are the places it acquires
        from hil.lab.plugin import lab_controller

        return lab_controller(config, settings)
    if spec.ssh.hosts:
        from hil.session import pool

        controller = Controller(config, settings, pool.pool_layout(spec, settings.tier))
        pool.install(controller)
        return controller
    return Controller(config, settings, target_layout(spec, settings.tier))


__all__ = ["Controller", "Layout", "make_controller", "sigterm_as_interrupt", "target_layout"]
