"""A pool of boards: one target, several boards (``[ssh] hosts``), one local session.

Registered by the plugin in place of :class:`hil.session.RemoteSession` for a
target with ``hosts``.  Each board is an ordinary ssh target of its own
(:func:`board_spec`): its own connection, lease, preflight, sync, image and
container, exactly as a one-board run.  What the pool adds:

* preflight, lease, sync and build run on every board at once (threads);
  a board that fails them is quarantined for the session (one line, its
  reason) and the others share the suite; none healthy is the first board's
  infrastructure code;
* each healthy board runs its part of the tests (``HIL_SHARE``: the split
  of :func:`hil.worker.share_of`, balanced by recorded durations), computed in
  its container over the tests collected there, so no test runs twice or not
  at all;
* the boards' event streams are replayed into this one session from the main
  thread (:mod:`hil.session.merge`): one collection count, one terminal, one junit
  file, one set of Allure results, one exit code by pytest's rule; every
  report carries a junit property ``board`` and every Allure result a
  ``board`` parameter (``HIL_BOARD`` in the container);
* ``-x`` stops every board; a test that crashes a board's interpreter is
  reported and that board resumes after it; ``--hil-confirm-failures``
  (:mod:`hil.session.attribution`) and ``--hil-hold-on-failure`` (:mod:`hil.session.hold`)
  run after the suite.

:mod:`hil.session.routing` builds its routed session (targets in place of boards)
on this one.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hil.backends import load_backend
from hil.backends.base import PREPARE_PHASES, Backend, RunEnd, RunPlan, describe_exit
from hil.config import TargetSpec
from hil.errors import HilError, RunLostError, name_running
from hil.progress import Progress, terminal_line
from hil.session.args import checkout_subdir, remote_args
from hil.session.attribution import FLAKY, Attribution, Rerun, label, mark_allure, outcomes_of
from hil.session.controller import sigterm_as_interrupt
from hil.session.crash import CrashReport
from hil.session.ending import combine_exit_codes
from hil.session.hold import Hold
from hil.session.merge import PoolCollection, PoolFeeder
from hil.session.runfolder import (
    allure_env,
    fresh_results,
    new_run_id,
    publish_results,
    register_run_junit,
    run_allure_dir,
)
from hil.session.shards import shard_levels, share_env
from hil.settings import HilSettings, git_commit
from hil.worker import encode_resume, encode_share


def board_spec(spec: TargetSpec, host: str) -> TargetSpec:
    """The one-board target of ``host`` in ``spec``'s pool: named after the board."""
    return dataclasses.replace(spec, name=host,
                               ssh=dataclasses.replace(spec.ssh, host=host, hosts=()))


def connect_boards_in_background(spec: TargetSpec) -> None:
    """Start opening every board's connection (see :func:`hil.sshconn.connect_in_background`)."""
    from hil.ssh.connection import connect_in_background

    for host in spec.ssh.boards:
        connect_in_background(board_spec(spec, host))


class BoardProgress(Progress):
    """Progress lines of one board, prefixed with its name; safe from the board's thread."""

    def __init__(self, config: pytest.Config, board: str, log: list[str],
                 lock: threading.Lock) -> None:
        super().__init__(quiet=int(config.getoption("verbose")) < -1)
        self.config, self.board, self.log, self.lock = config, board, log, lock

    def step(self, message: str) -> None:
        with self.lock:
            self.log.append(f"hil: [{self.board}] {message}")
            if not self.quiet:
                terminal_line(self.config, f"hil: [{self.board}] {message}", cyan=True)

    def detail(self, message: str) -> None:
        with self.lock:
            self.log.append(f"  | [{self.board}] {message}")


@dataclass
class BoardRun:
    """One board of the pool in this session: its backend, plan, feeder and outcome."""

    name: str
    spec: TargetSpec
    backend: Backend
    out: Path
    image: str = ""
    #: Why the board is out of this session (preflight, lease, sync or build failed).
    quarantined: HilError | None = None
    plan: RunPlan | None = None
    feeder: PoolFeeder | None = None
    code: int | None = None
    error: HilError | None = None
    #: Where this container's standard error starts in ``stderr.log`` (for a crash report).
    stderr_at: int = 0
    #: A test crashed the interpreter on this board (it resumed after it).
    crashed: bool = False
    #: Why the board was lost mid-run, when its unfinished tests moved to another board.
    lost: str = ""
    seconds: float = 0.0
    outcomes: dict[str, str] = field(default_factory=dict)


class PoolSession:
    """Drives the boards of a pool target and feeds their reports into the local session."""

    def __init__(self, config: pytest.Config, settings: HilSettings) -> None:
        self.config = config
        self.settings = settings
        self.spec = settings.target
        connect_boards_in_background(self.spec)
        self.run_id = new_run_id(self.spec.name)
        self.run_dir = settings.reports / "runs" / self.run_id
        self.log: list[str] = []
        self.lock = threading.Lock()
        self.boards: list[BoardRun] = []
        self.shared: PoolCollection | None = None
        self.error: HilError | None = None
        self.exitstatus: int | None = None
        self.timings: dict[str, float] = {}
        self.publisher: threading.Thread | None = None
        self.confirm = bool(config.getoption("hil_confirm_failures", False))
        #: -x / --maxfail was reached: the other boards' runs are being stopped.
        self.stopping = False
        self.commit: str | None = None
        #: Runs of a lost board's unfinished tests on another board.
        self.movers: list[BoardRun] = []
        self.hold_ttl: float = config.getoption("hil_hold_on_failure", None) or 0.0
        self.hold: Hold | None = None
        #: node id -> its failure's attribution (``--hil-confirm-failures``).
        self.attribution: dict[str, Attribution] = {}
        register_run_junit(config, self.run_dir)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> bool:
        session.items = []  # collected inside the boards' containers (see RemoteSession)
        return True

    # -- the run ----------------------------------------------------------------------------
    #: What a member is called in lines and the junit property ("board"; "target" when routed).
    member = "board"

    def _members(self) -> list[TargetSpec]:
        """The one-board targets this session runs on: the pool's boards (a lab's: its places)."""
        if self.spec.labgrid is not None:
            from hil.lab.plugin import lab_members

            return lab_members(self.config)
        return [board_spec(self.spec, host) for host in self.spec.ssh.boards]

    def _env(self, board: BoardRun, index: int, count: int) -> dict[str, str]:
        """What a member's container gets in its environment besides the common part."""
        return {**self.spec.env, "HIL_TARGET": self.spec.name,
                "HIL_TIER": str(self.settings.tier), "HIL_BOARD": board.name,
                "HIL_POOL": ",".join(self.spec.ssh.boards),
                **share_env(self.config, [*shard_levels(self.config), [index, count]]),
                **allure_env(self.settings.allure_dir)}

    def _board(self, spec: TargetSpec) -> BoardRun:
        host = spec.name
        progress = BoardProgress(self.config, host, self.log, self.lock)
        backend = load_backend(spec)(spec, self.settings.root, progress,
                                     rebuild=bool(self.config.getoption("hil_rebuild")),
                                     lease_timeout=self.config.getoption("hil_lease_timeout"))
        return BoardRun(name=host, spec=spec, backend=backend, out=self.run_dir / "boards" / host)

    def _prepare(self, board: BoardRun) -> None:
        """Preflight, lease, sync and image on one board (its own thread); quarantine on a fault."""
        try:
            report = board.backend.preflight()
            board.out.mkdir(parents=True, exist_ok=True)
            (board.out / "preflight.json").write_text(json.dumps(report.as_dict(), indent=1),
                                                      encoding="utf-8")
            board.image = board.backend.prepare(self._plan(board, 0, 1))
        except HilError as err:
            board.quarantined = err

    def _plan(self, board: BoardRun, index: int, count: int) -> RunPlan:
        params = self.config.invocation_params
        root = self.settings.root
        cwd = Path(params.dir)
        subdir = checkout_subdir(root, cwd)
        lastfailed = None
        cache = getattr(self.config, "cache", None)
        if cache is not None and (self.config.getoption("lf", False)
                                  or self.config.getoption("failedfirst", False)):
            lastfailed = json.dumps(cache.get("cache/lastfailed", {}))
        if self.commit is None:
            self.commit = git_commit(root)
        env = {**self._env(board, index, count), "HIL_RUN_ID": self.run_id, "HIL_ATTEMPT": "1",
               "HIL_ENVIRONMENT": f"git.commit={self.commit}\nrun.id={self.run_id}"}
        return RunPlan(run_id=f"{self.run_id}-{board.name}",
                       pytest_args=tuple(remote_args(list(params.args), root, cwd)),
                       subdir="" if subdir == "." else subdir, env=env, local_out=board.out,
                       lastfailed=lastfailed)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.showfspath = False  # the boards' files interleave, as under xdist
        self.boards = [self._board(spec) for spec in self._members()]
        started = time.monotonic()
        try:
            with sigterm_as_interrupt():
                terminal_line(self.config, f"hil: '{self.spec.name}': preparing "
                              f"{len(self.boards)} {self.member}(s) at once", cyan=True)
                with ThreadPoolExecutor(max_workers=len(self.boards)) as pool:
                    list(pool.map(self._prepare, self.boards))
                self.timings["prepare"] = round(time.monotonic() - started, 3)
                for board in self.boards:
                    if board.quarantined is not None:
                        err = board.quarantined
                        terminal_line(self.config, f"hil: {self.member} '{board.name}' "
                                      "quarantined for "
                                      f"this session: [{err.kind}] {err.message}"
                                      + (f"; {err.hint}" if err.hint else ""),
                                      yellow=True, bold=True)
                healthy = [b for b in self.boards if b.quarantined is None]
                if not healthy and self.member != "board":
                    first = self.boards[0].quarantined
                    assert first is not None
                    self._fail(first)
                    return True
                if not healthy:
                    self._fail(self._none_healthy())
                    return True
                self._run(session, healthy)
                lost = next((b.quarantined for b in self.boards if b.quarantined), None)
                if self.member != "board" and lost is not None and self.error is None:
                    # A routed target's tests have nowhere else to go: its fault is the code.
                    self._fail(lost)
        finally:
            self._finish()
        return True

    def _none_healthy(self) -> HilError:
        """The first board's fault (its kind and exit code), restated for the whole pool."""
        first = self.boards[0].quarantined
        assert first is not None
        err = copy.copy(first)
        err.message = f"no healthy board in pool '{self.spec.name}': " + "; ".join(
            f"{b.name}: [{b.quarantined.kind}] {b.quarantined.message}"
            for b in self.boards if b.quarantined is not None)
        err.target, err.command, err.exited = self.spec.name, None, None
        err.args = (err.message,)
        return err

    def _run(self, session: pytest.Session, healthy: list[BoardRun]) -> None:
        """Each healthy board runs its part; their events are replayed here as they come."""
        shared = self.shared = PoolCollection(self.config, session, [b.name for b in healthy])
        events: queue.Queue[tuple[BoardRun, str, Any]] = queue.Queue()
        run_start = time.monotonic()
        for index, board in enumerate(healthy):
            board.plan = self._plan(board, index, len(healthy))
            board.feeder = PoolFeeder(self.config, session, board.name, shared,
                                      run_allure_dir(self.settings.allure_dir, board.out),
                                      board.spec.docker.workdir,
                                      hold=self.confirm, nonce=board.plan.nonce,
                                      record=board.out / "events.jsonl")
            threading.Thread(target=self._run_board, args=(board, events), daemon=True,
                             name=f"hil-pool-{board.name}").start()
        terminal_line(self.config, f"hil: running on {len(healthy)} {self.member}(s): "
                      + ", ".join(b.name for b in healthy), cyan=True)
        self._pump(session, healthy, events, run_start)
        self._move_lost(session, healthy, events, run_start)
        self.timings["tests"] = round(time.monotonic() - run_start, 3)
        feeders = [(b, b.feeder) for b in [*healthy, *self.movers] if b.feeder is not None]
        if self.confirm:
            try:
                self._confirm(healthy)
            finally:
                for _, feeder in feeders:
                    feeder.release()
        if self.hold_ttl:
            self._hold(healthy)
        codes = [b.code for b in [*healthy, *self.movers] if b.code is not None]
        lost = [b.error for b in [*healthy, *self.movers] if b.error is not None]
        if lost:
            self._fail(lost[0])
        else:
            self.exitstatus = combine_exit_codes(codes)

    def _pump(self, session: pytest.Session, runs: list[BoardRun],
              events: queue.Queue[tuple[BoardRun, str, Any]], run_start: float) -> None:
        """Replay the running boards' output here until every one of ``runs`` has ended."""
        running = len(runs)
        while running:
            board, what, data = events.get()
            feeder = board.feeder
            assert feeder is not None
            if what == "out":
                feeder.feed(data)
                if (session.shouldfail or session.shouldstop) and not self.stopping:
                    self._stop_others(board, runs)
            elif what == "err":
                board.out.mkdir(parents=True, exist_ok=True)
                with (board.out / "stderr.log").open("ab") as log:  # what a crash report reads
                    log.write(data)
                text = data.decode("utf-8", "replace").rstrip("\n")
                if text:
                    terminal_line(self.config, f"[{board.name}] {text}", yellow=True)
            elif not self._resumed(session, board, data, events):
                running -= 1
                board.seconds = round(time.monotonic() - run_start, 3)
                self._ended(board, data)

    def _move_lost(self, session: pytest.Session, healthy: list[BoardRun],
                   events: queue.Queue[tuple[BoardRun, str, Any]], run_start: float) -> None:
        """A board lost mid-run: the tests it did not finish run on a healthy board now."""
        spare = [b for b in healthy if b.error is None and b.code is not None]
        lost = [b for b in healthy if b.error is not None and b.feeder is not None
                and b.feeder.collected and not self.stopping]
        if not spare or not lost or session.shouldfail or session.shouldstop:
            return
        movers: list[BoardRun] = []
        for place, board in enumerate(lost):
            assert board.feeder is not None and board.error is not None
            left = board.feeder.unfinished()
            err, board.error = board.error, None
            board.lost = f"[{err.kind}] {err.message}"
            if not left:
                continue
            target = spare[place % len(spare)]
            mover = BoardRun(name=target.name, spec=target.spec, backend=target.backend,
                             out=target.out / f"moved-from-{board.name}", image=target.image)
            plan = self._plan(mover, 0, 1)
            mover.plan = dataclasses.replace(
                plan, run_id=f"{plan.run_id}-from-{board.name}",
                env={**plan.env, "HIL_SHARE": encode_share([], {}, left)})
            mover.feeder = PoolFeeder(self.config, session, target.name, self.shared_or_fail(),
                                      run_allure_dir(self.settings.allure_dir, mover.out),
                                      target.spec.docker.workdir,
                                      hold=self.confirm, nonce=mover.plan.nonce,
                                      record=mover.out / "events.jsonl",
                                      resumed=True)  # counted with the lost board's run
            board.lost += f"; its {len(left)} unfinished test(s) moved to {target.name}"
            terminal_line(self.config, f"hil: board '{board.name}' lost mid-run ({err.kind}); "
                          f"its {len(left)} unfinished test(s) run on '{target.name}'",
                          yellow=True, bold=True)
            movers.append(mover)
        self.movers += movers
        for mover in movers:
            threading.Thread(target=self._run_board, args=(mover, events), daemon=True,
                             name=f"hil-pool-moved-{mover.name}").start()
        if movers:
            self._pump(session, movers, events, run_start)

    def shared_or_fail(self) -> PoolCollection:
        """The session's merged collection (there is one once the boards run)."""
        assert self.shared is not None
        return self.shared

    def _run_board(self, board: BoardRun,
                   events: queue.Queue[tuple[BoardRun, str, Any]]) -> None:
        """A board's container run, on its own thread: its output goes to the main thread."""
        assert board.plan is not None

        def sink(what: str) -> Callable[[bytes], None]:
            return lambda data: events.put((board, what, data))

        result: RunEnd | HilError
        try:
            result = board.backend.run(board.plan, board.image, sink("out"), sink("err"))
        except HilError as err:
            result = err
        except Exception as err:  # never leave the main loop waiting for this board
            result = RunLostError(f"the run on the board failed: {err!r}", target=board.name)
        events.put((board, "end", result))

    def _confirm(self, healthy: list[BoardRun]) -> None:
        """Re-run each failed test on its board and on another one; label the failures."""
        ready = [b for b in healthy if b.error is None]
        by_name = {b.name: b for b in ready}
        failed = {nodeid: by_name[run.name] for run in [*ready, *self.movers]
                  if run.feeder is not None and run.name in by_name for nodeid in run.feeder.held}
        if not failed:
            return
        wanted: dict[str, list[str]] = {b.name: [] for b in ready}
        other_of: dict[str, str] = {}
        for nodeid, board in failed.items():
            wanted[board.name].append(nodeid)
            place = ready.index(board)
            if len(ready) > 1:
                other = ready[(place + 1) % len(ready)]
                other_of[nodeid] = other.name
                wanted[other.name].append(nodeid)
        terminal_line(self.config, f"hil: confirming {len(failed)} failure(s): each re-run on its "
                      "board and on another", cyan=True)
        jobs = [(b, wanted[b.name]) for b in ready if wanted[b.name]]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            reruns = dict(zip([b.name for b, _ in jobs], pool.map(self._rerun, jobs), strict=True))
        for nodeid, board in failed.items():
            same = reruns[board.name]
            second = reruns.get(other_of.get(nodeid, ""))
            other_passed = (None if second is None or second.fault
                            else second.outcomes.get(nodeid) is True)
            found = Attribution(nodeid=nodeid, board=board.name, same=same, other=second,
                                label=label(same.outcomes.get(nodeid) is True, other_passed))
            self.attribution[nodeid] = found
            mark_allure(board.out / "allure-results", found)

    def _hold(self, healthy: list[BoardRun]) -> None:
        """Keep a container like the first failed test's, and its board's lease, for TTL s."""
        from hil.session.hold import hold_failed

        failed = [(b, n) for b in healthy for n, outcome in b.outcomes.items()
                  if outcome == "failed" and b.error is None and b.plan is not None]
        if not failed:
            return
        board, nodeid = failed[0]
        assert board.plan is not None
        try:
            self.hold = hold = hold_failed(board.backend, board.plan, board.image, nodeid,
                                           self.hold_ttl)
        except HilError as err:
            terminal_line(self.config, f"hil: could not hold {nodeid} on {board.name}: {err}",
                          red=True)
            return
        for line in self._hold_lines(hold):
            terminal_line(self.config, line, yellow=True, bold=line.startswith("hil:"))

    def _hold_lines(self, hold: Hold) -> list[str]:
        return [f"hil: holding {hold.container} on {hold.board} for {hold.ttl:.0f} s (lease kept) "
                f"for {hold.nodeid}",
                f"  shell:   {hold.shell_command()}",
                f"  re-run:  {hold.rerun_command()}",
                f"  release: hil release --target {self.spec.name}"]

    def _rerun(self, job: tuple[BoardRun, list[str]]) -> Rerun:
        """One container on ``board`` running exactly ``ids`` (attempt 2); its outcomes."""
        board, ids = job
        plan = self._plan(board, 0, 1)
        plan = dataclasses.replace(
            plan, run_id=f"{plan.run_id}-confirm", local_out=board.out / "confirm",
            env={**plan.env, "HIL_ATTEMPT": "2", "HIL_SHARE": encode_share([], {}, ids)},
            lastfailed=None)
        out = bytearray()
        rerun = Rerun(board=board.name)
        try:
            board.backend.run(plan, board.image, out.extend, lambda data: None)
            board.backend.fetch(plan)
        except HilError as err:
            rerun.fault = f"[{err.kind}] {err.message}"
        rerun.outcomes = outcomes_of(bytes(out))
        log = plan.local_out / "pytest.log"
        rerun.log = log if log.is_file() else None
        return rerun

    def _resumed(self, session: pytest.Session, board: BoardRun, result: RunEnd | HilError,
                 events: queue.Queue[tuple[BoardRun, str, Any]]) -> bool:
        """A test crashed the board's interpreter: report it, resume after it (as one board does).

        True when the board runs on in a fresh container; False when its run is
        over (``_ended`` takes it from there).
        """
        feeder, plan = board.feeder, board.plan
        assert feeder is not None and plan is not None
        if (self.stopping or not isinstance(result, RunEnd) or feeder.done
                or feeder.hello is None or result.exit_code is None or result.reason
                or result.oom_killed or feeder.workers):
            return False
        feeder.close()
        with contextlib.suppress(HilError):
            board.backend.fetch(plan)  # the worker's record and the crashed test's output
        feeder.recover(board.out / "events.jsonl")
        nodeid = feeder.started
        if feeder.done or nodeid is None:
            return False
        how = describe_exit(result.exit_code)
        CrashReport(feeder, nodeid, how, board.out, segment=plan.segment,
                    stderr_from=board.stderr_at, target=board.name,
                    allure=self.settings.allure_dir is not None).replay()
        remaining = feeder.remaining(nodeid)
        limit = int(self.config.getoption("hil_max_resumes"))
        if not remaining or session.shouldfail or session.shouldstop:
            board.code = 1  # a crashed test is a failed one; nothing after it to run
            return False
        if plan.segment >= limit:
            board.error = RunLostError(
                f"{nodeid} crashed ({how}) after {limit} resume(s), the limit "
                "(--hil-max-resumes)", not_run=remaining, target=board.name)
            return False
        terminal_line(self.config, f"hil: [{board.name}] {nodeid} crashed ({how}); resuming "
                      f"with the {len(remaining)} test(s) after it in a fresh container", cyan=True)
        stderr = board.out / "stderr.log"
        board.stderr_at = stderr.stat().st_size if stderr.exists() else 0
        segment = plan.segment + 1
        board.plan = dataclasses.replace(plan, segment=segment, env={
            **plan.env, "HIL_SEGMENT": str(segment),
            "HIL_RESUME": encode_resume(remaining, nodeid, how, feeder.last_n)})
        board.crashed = True
        feeder.next_segment()
        threading.Thread(target=self._run_board, args=(board, events), daemon=True,
                         name=f"hil-pool-{board.name}-{segment}").start()
        return True

    def _stop_others(self, board: BoardRun, healthy: list[BoardRun]) -> None:
        """``-x`` / ``--maxfail`` reached here: stop the other boards' runs, as one session stops."""
        self.stopping = True
        others = [b for b in healthy if b is not board and b.plan is not None
                  and b.feeder is not None and not b.feeder.done]

        def stop(other: BoardRun) -> None:
            assert other.plan is not None
            other.backend.stop()

        for other in others:
            threading.Thread(target=stop, args=(other,), daemon=True,
                             name=f"hil-stop-{other.name}").start()

    def _ended(self, board: BoardRun, result: RunEnd | HilError) -> None:
        """A board's run is over: its code, or the fault that ended it (results kept)."""
        feeder = board.feeder
        assert feeder is not None and board.plan is not None
        feeder.close()
        if self.stopping and not feeder.done:
            # Stopped for -x: what it ran is kept, and the others' failure is the code.
            feeder.recover(board.out / "events.jsonl")
            return
        if board.code is not None or board.error is not None:
            return  # decided by the crash that ended it (see _resumed)
        if not feeder.done:
            board.backend.stop()
            try:
                board.backend.fetch(board.plan)
            except HilError as err:
                self.log.append(f"hil: [{board.name}] could not fetch results: {err}")
            feeder.recover(board.out / "events.jsonl")
        if feeder.hello is None or not feeder.collected:
            assert self.shared is not None
            self.shared.settle(board.name, None)
        if isinstance(result, HilError):
            name_running(result, feeder.running)  # lost or timed out: what was running
            board.error = result
        elif feeder.remote_exit is not None and feeder.hello is not None:
            code = feeder.remote_exit
            board.code = 1 if board.crashed and code in (0, 5) else code
        elif feeder.exit_code is not None:
            board.code = feeder.exit_code  # pytest stopped before its session (usage error)
        else:
            why = result.reason or (f"the test container ended (exit {result.exit_code}) "
                                    "without pytest's final report")
            board.error = RunLostError(why, running_test=feeder.running, target=board.name)

    def _fail(self, err: HilError) -> None:
        self.error = err
        self.exitstatus = int(err.exit_code)
        terminal_line(self.config, f"hil: error: {err.details()}", red=True, bold=True)
        (self.run_dir / "error.json").write_text(json.dumps({
            "kind": err.kind, "exit_code": int(err.exit_code), "message": str(err),
            "target": self.spec.name, "tail": err.tail}, indent=1), encoding="utf-8")

    def _finish(self) -> None:
        """Fetch what did not come back, publish the Allure results, save the run's record."""
        for board in self.boards:
            feeder = board.feeder
            if board.plan is None or feeder is None:
                continue
            if not feeder.done:  # after an interrupt a board's run is still going
                board.backend.stop()
            try:
                board.backend.fetch(board.plan)
            except HilError as err:
                self.log.append(f"hil: [{board.name}] could not fetch results: {err}")
            if not feeder.done:  # what the stream had not carried when it was cut short
                feeder.recover(board.out / "events.jsonl")
        self._publish()
        if self.log:
            (self.run_dir / "hil.log").write_text("\n".join(self.log) + "\n", encoding="utf-8")
        (self.run_dir / "run.json").write_text(json.dumps({
            "target": self.spec.name, "kind": "pool", "run_id": self.run_id,
            "exit_code": self.exitstatus, "timings": self.timings,
            "boards": {b.name: {"image": b.image, "code": b.code, "seconds": b.seconds,
                                "quarantined": str(b.quarantined) if b.quarantined else None,
                                "phases": {k: b.backend.timings[k] for k in PREPARE_PHASES
                                           if k in b.backend.timings},
                                "error": str(b.error) if b.error else None}
                       for b in self.boards},
        }, indent=1), encoding="utf-8")

    def _publish(self) -> None:
        allure_dir = self.settings.allure_dir
        if allure_dir is None:
            return
        stale = fresh_results(allure_dir, self.settings.keep_results, self.spec.name, self.error)
        folders = [b.out / "allure-results" for b in [*self.boards, *self.movers]]

        def publish() -> None:
            for folder in folders:
                publish_results(folder, allure_dir, [])
            publish_results(Path(os.devnull), allure_dir, stale)

        self.publisher = threading.Thread(target=publish, name="hil-publish-results",
                                          daemon=True)
        self.publisher.start()

    # -- hooks ------------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Name the board in the report: a junit property, and for the summary."""
        if self.shared is None or not self.shared.current:
            return
        board = self.shared.current
        ends = report.when == "teardown" or (report.when == "setup" and report.outcome != "passed")
        if ends and (self.member, board) not in report.user_properties:
            report.user_properties.append((self.member, board))
        found = self.attribution.get(report.nodeid)
        if found is not None and report.when == "teardown":
            report.user_properties.append(("attribution", found.label))
        for run in self.boards:
            if run.name == board and (report.when == "call" or report.outcome != "passed"):
                previous = run.outcomes.get(report.nodeid)
                if previous in (None, "passed"):
                    run.outcomes[report.nodeid] = report.outcome

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.exitstatus is not None:
            session.exitstatus = self.exitstatus

    def pytest_unconfigure(self) -> None:
        boards, self.boards = self.boards, []
        if boards:  # leases released and containers removed on every board at once
            with ThreadPoolExecutor(max_workers=len(boards)) as pool:
                list(pool.map(lambda b: b.backend.close(), boards))
        if self.publisher is not None:
            self.publisher.join()
            self.publisher = None

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        tr.write_sep("-", f"hil: {'pool ' if self.member == 'board' else ''}{self.spec.name}")
        for board in self.boards:
            if board.quarantined is not None:
                tr.write_line(f"{board.name}: quarantined [{board.quarantined.kind}]: "
                              f"{board.quarantined.message}", yellow=True)
                continue
            counts: dict[str, int] = {}
            for outcome in board.outcomes.values():
                counts[outcome] = counts.get(outcome, 0) + 1
            shown = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no tests"
            line = f"{board.name}: {len(board.outcomes)} test(s) ({shown}) in {board.seconds:.2f}s"
            if board.lost:
                line += f"; lost mid-run {board.lost}"
            if board.error is not None:
                line += f"; [{board.error.kind}] {board.error.message}"
            tr.write_line(line, red=board.error is not None)
        for board in self.boards:
            for nodeid, outcome in board.outcomes.items():
                if outcome == "failed":
                    tr.write_line(f"FAILED {nodeid} on {self.member} {board.name}", red=True)
        if self.attribution:
            tr.write_line("failure attribution (--hil-confirm-failures):")
            for found in self.attribution.values():
                tr.write_line(f"  {found.label.upper()}: {found.nodeid} ({found.detail()})",
                              yellow=found.label == FLAKY, red=found.label != FLAKY)
        if self.hold is not None:
            for line in self._hold_lines(self.hold):
                tr.write_line(line, yellow=True)
        tr.write_line(f"results: {os.path.relpath(self.run_dir)}")
        if self.settings.allure_dir is not None:
            tr.write_line(f"allure results: {os.path.relpath(self.settings.allure_dir)}")
        if self.error is not None:
            tr.write_line(f"infrastructure fault [{self.error.kind}] "
                          f"(exit {int(self.error.exit_code)}): {self.error}", red=True)


__all__ = ["BoardRun", "PoolSession", "board_spec", "connect_boards_in_background"]
