"""Controller of container targets: drives a backend and feeds remote reports into pytest.

Registered by the plugin only when a container target is chosen.  Collection
happens in the container; each event the worker streams back is replayed into
the local session's hooks as it arrives (:mod:`hil.session.events`), so the
terminal, ``--junitxml``, ``--lf`` and ``-x`` behave as if the tests ran here.
The exit code is the remote pytest's own, or an infrastructure code from
:mod:`hil.errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil.backends import load_backend
from hil.backends.base import PREPARE_PHASES, Backend, RunEnd, RunPlan, describe_exit
from hil.errors import (
    HilError,
    RunLostError,
    RunTimedOutError,
    TargetUnhealthyError,
    name_running,
)
from hil.progress import Progress, TerminalProgress, terminal_line
from hil.redact import redactor_for
from hil.session.args import checkout_subdir, remote_args
from hil.session.crash import CrashReport
from hil.session.events import EventFeeder
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
from hil.worker import encode_resume


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


class RemoteSession:
    """Drives a container backend and feeds its reports into the local session."""

    def __init__(self, config: pytest.Config, settings: HilSettings) -> None:
        self.config = config
        self.settings = settings
        self.spec = settings.target
        if self.spec.kind == "ssh":  # the handshake overlaps the rest of the start-up
            from hil.ssh.connection import connect_in_background

            connect_in_background(self.spec)
        self.run_id = new_run_id(self.spec.name)
        self.run_dir = settings.reports / "runs" / self.run_id
        self.timings: dict[str, float] = {}
        self.exitstatus: int | None = None
        self.error: HilError | None = None
        self.log: list[str] = []
        self.backend: Backend | None = None
        self.publisher: threading.Thread | None = None
        #: The container segment whose results were fetched last (-1: none yet).
        self.fetched = -1
        register_run_junit(config, self.run_dir)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> bool:
        # Tests are collected inside the container; none here (pytest 7 sets
        # Session.items only in its own collection, which this replaces).
        session.items = []
        return True

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.monotonic() - start, 3)

    def _plan(self) -> RunPlan:
        params = self.config.invocation_params
        root = self.settings.root
        cwd = Path(params.dir)
        subdir = checkout_subdir(root, cwd)
        lastfailed = None
        cache = getattr(self.config, "cache", None)  # absent under -p no:cacheprovider
        if cache is not None and (self.config.getoption("lf", False)
                                  or self.config.getoption("failedfirst", False)):
            lastfailed = json.dumps(cache.get("cache/lastfailed", {}))
        env = {**self.spec.env, "HIL_TARGET": self.spec.name, "HIL_TIER": str(self.settings.tier),
               "HIL_RUN_ID": self.run_id,
               "HIL_ENVIRONMENT": f"git.commit={git_commit(root)}\nrun.id={self.run_id}",
               **share_env(self.config, shard_levels(self.config)),
               **allure_env(self.settings.allure_dir)}
        return RunPlan(
            run_id=self.run_id,
            pytest_args=tuple(remote_args(list(params.args), root, cwd)),
            subdir=subdir,
            env=env,
            local_out=self.run_dir,
            lastfailed=lastfailed,
        )

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        """The phases in order: preflight, image, tests (resumed after crashes), read-back."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.plan = self._plan()
        feeder = EventFeeder(self.config, session, self.spec.docker.workdir,
                             allure_dir=run_allure_dir(self.settings.allure_dir, self.run_dir),
                             root=self.settings.root, nonce=self.plan.nonce,
                             record=self.run_dir / "events.jsonl")
        progress = TerminalProgress(self.config, self.log)
        started = time.time()
        backend = load_backend(self.spec)(
            self.spec, self.settings.root, progress,
            rebuild=bool(self.config.getoption("hil_rebuild")),
            lease_timeout=self.config.getoption("hil_lease_timeout"))
        image = ""
        try:
            with sigterm_as_interrupt():
                try:
                    with self._phase("preflight"):
                        report = backend.preflight()
                    (self.run_dir / "preflight.json").write_text(
                        json.dumps(report.as_dict(), indent=1), encoding="utf-8")
                    try:
                        image = backend.prepare(self.plan)
                    finally:  # the backend timed its steps: lease, sync, image, services
                        self.timings.update((name, backend.timings[name]) for name in
                                            PREPARE_PHASES if name in backend.timings)
                    progress.step(f"running tests in {image} on '{self.spec.name}'")
                    self.exitstatus = self._run_tests(session, backend, image, feeder, progress)
                except HilError as err:
                    self._fail(err)
                finally:  # also after an interrupt: whatever ran is kept
                    fault = self._read_back(backend, feeder)
                    if fault is not None and self.error is None:
                        self._fail(fault)
                    self._publish()
        finally:
            # Closed at unconfigure: the container's removal (and an SSH lease's release)
            # then overlaps with writing the reports and the summary.
            self.backend = backend
            self._save(self.plan, image, started, feeder)
        return True

    def _on_stderr(self, data: bytes) -> None:
        """The container's standard error: kept in ``stderr.log`` and shown as it comes."""
        with (self.run_dir / "stderr.log").open("ab") as log:
            log.write(data)
        text = data.decode("utf-8", "replace").rstrip("\n")
        if text:
            terminal_line(self.config, text, yellow=True)

    def _run_container(self, backend: Backend, image: str, feeder: EventFeeder) -> RunEnd:
        """One test container, start to end; what its worker recorded is read back when it
        ended without its final report, so a lost run's error names the running test."""
        try:
            end = backend.run(self.plan, image, feeder.feed, self._on_stderr)
        except (RunLostError, RunTimedOutError) as err:  # name the test that was running
            self._read_back(backend, feeder)
            name_running(err, feeder.running)
            err.target = err.target or self.spec.name
            raise
        feeder.close()
        if not feeder.done:  # crashed, killed or cut short: the record knows more
            self._read_back(backend, feeder)
        return end

    def _run_tests(self, session: pytest.Session, backend: Backend, image: str,
                   feeder: EventFeeder, progress: Progress) -> int:
        """Run the test container, and a fresh one after each test that crashes it; the code.

        The exit code is pytest's rule over the whole run: the last container's
        own code, but 1 where a test crashed and the rest passed.
        """
        limit = int(self.config.getoption("hil_max_resumes"))
        crashes = 0
        while True:
            run_start = time.monotonic()
            log = self.run_dir / "stderr.log"
            stderr_at = log.stat().st_size if log.exists() else 0
            end = self._run_container(backend, image, feeder)
            run_end = time.monotonic()
            hello = feeder.hello_at if feeder.hello_at is not None else run_end
            for name, seconds in (("container start", hello - run_start),
                                  ("tests", run_end - hello)):
                self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 3)
            crash = self._crash(feeder, end)
            if crash is None:
                code = self._exit_code(feeder, end)
                return 1 if crashes and code in (0, 5) else code
            crashes += 1
            nodeid, how = crash
            CrashReport(feeder, nodeid, how, self.run_dir, segment=self.plan.segment,
                        stderr_from=stderr_at, target=self.spec.name,
                        allure=self.settings.allure_dir is not None).replay()
            remaining = feeder.remaining(nodeid)
            if not remaining or session.shouldfail or session.shouldstop:
                return 1  # a crashed test is a failed one; -x stops here too
            if crashes > limit:
                raise RunLostError(
                    f"{nodeid} crashed ({how}) after {limit} resume(s), the limit "
                    "(--hil-max-resumes)", not_run=remaining, target=self.spec.name)
            progress.step(f"{nodeid} crashed ({how}); resuming with the {len(remaining)} "
                          f"test(s) after it in a fresh container ({crashes} of {limit})")
            self.plan = self._resume_plan(remaining, nodeid, how, feeder.last_n, crashes,
                                          failed=session.testsfailed)
            feeder.next_segment()

    @staticmethod
    def _worker_died(feeder: EventFeeder, end: RunEnd) -> bool:
        """Whether the worker's process ended mid-session on its own: not killed, no lost link."""
        return (not feeder.done and feeder.hello is not None and end.exit_code is not None
                and not end.reason and not end.oom_killed)

    def _crash(self, feeder: EventFeeder, end: RunEnd) -> tuple[str, str] | None:
        """(node id, how) of the test that crashed the interpreter, if that ended the run.

        The worker's process ended without its final report while its record
        names the test it was running.  Under xdist, pytest-xdist itself
        reports a crashed worker's test (this process is its controller).
        """
        if not self._worker_died(feeder, end) or feeder.workers or feeder.started is None:
            return None
        assert end.exit_code is not None
        return feeder.started, describe_exit(end.exit_code)

    def _resume_plan(self, remaining: list[str], after: str, how: str, seq: int,
                     segment: int, failed: int) -> RunPlan:
        """The plan of the container resumed after ``after`` crashed: the tests after it."""
        env = {**self.plan.env, "HIL_SEGMENT": str(segment),
               "HIL_RESUME": encode_resume(remaining, after, how, seq)}
        maxfail = int(self.config.getoption("maxfail") or 0)
        args = self.plan.pytest_args
        if maxfail:
            # The failures so far count towards --maxfail, as in one pytest session.
            args = (*args, f"--maxfail={max(1, maxfail - failed)}")
        return dataclasses.replace(self.plan, segment=segment, env=env, pytest_args=args)

    def _recover(self, feeder: EventFeeder) -> None:
        """Replay what the worker recorded but the channel never carried (a run cut short)."""
        if feeder.done:
            return
        try:
            replayed = feeder.recover(self.run_dir / "events.jsonl")
        except Exception as err:  # a replay that fails must not hide the run's own fault
            self.log.append(f"hil: could not replay the worker's record: {err!r}")
            return
        if replayed:
            self.log.append(f"hil: {replayed} event(s) read back from the worker's record")

    def _exit_code(self, feeder: EventFeeder, end: RunEnd) -> int:
        if feeder.remote_exit is not None and feeder.hello is not None:
            return feeder.remote_exit
        if feeder.exit_code is not None and feeder.hello is None:
            # pytest in the container stopped before its first event (an option it does not
            # know, a bad ini file, a plugin that fails to import): its own code, and its
            # reason is on its standard error, shown above as it came.
            terminal_line(
                self.config, f"hil: pytest in the container stopped before its session started "
                f"(exit {feeder.exit_code}); its standard error is above and in "
                f"{os.path.relpath(self.run_dir / 'stderr.log')}", red=True)
            return feeder.exit_code
        if feeder.hello is None and feeder.remote_exit is None:
            stderr = self.run_dir / "stderr.log"
            raise TargetUnhealthyError(
                f"the test container exited {end.exit_code} before pytest started"
                + (f" ({end.reason})" if end.reason else ""),
                target=self.spec.name,
                tail=stderr.read_text(encoding="utf-8", errors="replace") if stderr.exists() else "")
        if end.oom_killed:
            why = "the test container was OOM-killed"
            if self.spec.docker.memory:
                why += f" (memory limit {self.spec.docker.memory})"
        elif end.reason:
            why = end.reason
        else:
            why = f"the test container ended (exit {end.exit_code}) without pytest's final report"
        raise RunLostError(why, running_test=feeder.running, target=self.spec.name)

    def _fail(self, err: HilError) -> None:
        self.error = err
        self.exitstatus = int(err.exit_code)
        terminal_line(self.config, f"hil: error: {err.details()}", red=True, bold=True)
        (self.run_dir / "error.json").write_text(json.dumps({
            "kind": err.kind, "exit_code": int(err.exit_code), "message": str(err),
            "target": self.spec.name, "tail": err.tail}, indent=1), encoding="utf-8")

    def _read_back(self, backend: Backend, feeder: EventFeeder) -> HilError | None:
        """Bring this container's results here (once) and replay what the stream missed.

        Returns the fault that stopped the fetch, if any; the replay runs regardless,
        from whatever part of the worker's record arrived.
        """
        fault: HilError | None = None
        if self.fetched != self.plan.segment:
            self.fetched = self.plan.segment
            if not feeder.done:  # cut short (a lost link, an interrupt): it may still be going
                backend.stop()
            with self._phase("fetch"):
                try:
                    backend.fetch(self.plan)
                except HilError as err:
                    terminal_line(self.config, f"hil: could not fetch results: {err}", red=True)
                    fault = err
        self._recover(feeder)
        return fault

    def _publish(self) -> None:
        """Put the run's Allure results (and an infrastructure fault's) in the results folder."""
        allure_dir = self.settings.allure_dir
        if allure_dir is None:
            return
        stale = fresh_results(allure_dir, self.settings.keep_results, self.spec.name, self.error)
        # Thousands of links and removals: off the session's path, done by unconfigure.
        self.publisher = threading.Thread(
            target=publish_results, args=(self.run_dir / "allure-results", allure_dir, stale),
            name="hil-publish-results", daemon=True)
        self.publisher.start()

    def _save(self, plan: RunPlan, image: str, started: float, feeder: EventFeeder) -> None:
        if self.log:
            (self.run_dir / "hil.log").write_text("\n".join(self.log) + "\n", encoding="utf-8")
        (self.run_dir / "timings.json").write_text(json.dumps(self.timings, indent=1),
                                                   encoding="utf-8")
        # Secrets (a token passed as a pytest option, say) stay out of the saved file.
        (self.run_dir / "run.json").write_text(json.dumps(redactor_for(self.spec).data({
            "target": self.spec.name, "kind": self.spec.kind, "tier": self.settings.tier,
            "run_id": self.run_id, "exit_code": self.exitstatus, "image": image,
            "pytest_args": list(plan.pytest_args), "started": started, "finished": time.time(),
            "remote": feeder.hello or {}, "stray_output": feeder.stray[-50:],
        }), indent=1), encoding="utf-8")

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.exitstatus is not None:
            session.exitstatus = self.exitstatus

    def pytest_unconfigure(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        if self.publisher is not None:
            self.publisher.join()
            self.publisher = None

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        phases = ("preflight", *PREPARE_PHASES, "container start", "tests", "fetch")
        shown = [f"{name} {self.timings[name]:.2f}s" for name in phases if name in self.timings]
        tr.write_sep("-", f"hil: {self.spec.name}")
        if shown:
            tr.write_line("phases: " + " | ".join(shown))
        tr.write_line(f"results: {os.path.relpath(self.run_dir)}")
        if self.settings.allure_dir is not None:
            tr.write_line(f"allure results: {os.path.relpath(self.settings.allure_dir)}")
        if self.error is not None:
            tr.write_line(f"infrastructure fault [{self.error.kind}] "
                          f"(exit {int(self.error.exit_code)}): {self.error}", red=True)


__all__ = ["EventFeeder", "RemoteSession", "remote_args"]
