"""Controller of container targets: drives a backend and feeds remote reports into pytest.

Registered by the plugin only when a container target is chosen.  Collection
happens in the container; each event the worker streams back (see
:mod:`hil.worker`) is replayed into the local session's hooks as it arrives,
so the terminal, ``--junitxml``, ``--lf`` and ``-x`` behave as if the tests
ran here.  The exit code is the remote pytest's own, or an infrastructure
code from :mod:`hil.errors`.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hil.backends.base import (
    Backend,
    ByteSink,
    Progress,
    RunEnd,
    RunPlan,
    describe_exit,
    load_backend,
)
from hil.crash import CrashReport
from hil.errors import HilError, RunLostError, TargetUnhealthyError
from hil.plugin import HilSettings, git_commit
from hil.shards import shard_levels, share_env
from hil.worker import encode_resume, only_pytest_implements

#: Options that only make sense on the controller: (name, takes a value).
HOST_ONLY_OPTIONS: dict[str, bool] = {
    "--target": True, "--hil-targets": True, "--hil-require-tier": True,
    "--hil-keep-results": False, "--hil-rebuild": False, "--hil-lease-timeout": True,
    "--hil-reports": True, "--hil-no-allure": False, "--hil-plan": False, "--hil-max-resumes": True,
    "--hil-shard": True, "--hil-confirm-failures": False, "--hil-hold-on-failure": True,
    "--junitxml": True, "--junit-xml": True, "--alluredir": True, "--clean-alluredir": False,
    "--basetemp": True, "--result-log": True, "--resultlog": True, "--pastebin": True,
}
#: Options whose value is a path that must be rewritten to the container's view.
PATH_OPTIONS = {"--rootdir", "-c", "--config-file", "--confcutdir", "--ignore", "--deselect",
                "--ignore-glob"}


def remote_args(args: list[str], root: Path, cwd: Path, mount: str = "/src") -> list[str]:
    """The user's pytest arguments as the container's pytest must see them.

    Host-only options are dropped, absolute paths under the checkout are
    rewritten to the mount point; everything else passes unchanged as a list
    (never through a shell), so ids with spaces and brackets survive.
    """
    out: list[str] = []
    i = 0

    def remap(value: str) -> str:
        path = Path(value.split("::", 1)[0])
        if path.is_absolute():
            try:
                rel = path.resolve().relative_to(root.resolve())
            except ValueError:
                return value
            return (Path(mount) / rel).as_posix() + value[len(value.split("::", 1)[0]):]
        return value

    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in HOST_ONLY_OPTIONS:
            i += 1 if eq or not HOST_ONLY_OPTIONS[name] else 2
            continue
        if name in PATH_OPTIONS:
            if eq:
                out.append(f"{name}={remap(value)}")
            elif i + 1 < len(args):
                out += [arg, remap(args[i + 1])]
                i += 1
            i += 1
            continue
        out.append(remap(arg) if not arg.startswith("-") else arg)
        i += 1
    return out


@dataclass
class _RemoteItem:
    """Stands in for a deselected item in the terminal's statistics."""

    nodeid: str


class EventFeeder:
    """Decodes the worker's JSON lines and replays them into the local hooks."""

    def __init__(self, config: pytest.Config, session: pytest.Session, mount: str = "/src",
                 allure_dir: Path | None = None) -> None:
        self.config = config
        #: Where the worker's streamed Allure results (``allure`` events) are written.
        self.allure_dir = allure_dir
        self.allure_results = 0
        self.session = session
        self.mount = mount.rstrip("/") + "/"
        self.root = str(config.rootpath)
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
            hook.pytest_runtest_logfinish(nodeid=event["nodeid"], location=tuple(event["location"]))
            self._finished(event["nodeid"])
        elif kind == "logreport":
            report = self._report(event["report"])
            if report.nodeid in self.active:
                self.phases.setdefault(report.nodeid, []).append((report.when, report.outcome))
            hook.pytest_runtest_logreport(report=report)
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
            terminal = self.config.pluginmanager.get_plugin("terminalreporter")
            if self.workers and terminal is not None:
                # Reports of several files interleave: progress without file names, as
                # pytest-xdist shows it.
                terminal.showfspath = False
        elif kind == "internalerror":
            self.config.get_terminal_writer().line(f"remote INTERNALERROR> {event['text']}",
                                                   red=True)

    def _allure_result(self, event: dict[str, Any]) -> None:
        """Write one streamed Allure result, byte for byte what the worker would have."""
        name = str(event.get("name", ""))
        text = event.get("text")
        if (self.allure_dir is None or not name or name.startswith(".") or "/" in name
                or "\\" in name or not isinstance(text, str)):
            self.stray.append(f"hil: an Allure result event that cannot be written: {name!r}")
            return
        if not self.allure_results:  # once, not a mkdir per result
            self.allure_dir.mkdir(parents=True, exist_ok=True)
        write_file(self.allure_dir / name, text.encode("utf-8"))
        self.allure_results += 1

    def close(self) -> None:
        """Flush a last line that had no newline."""
        if self.buffer.strip():
            self._line(self.buffer)
        self.buffer = b""


class TerminalProgress(Progress):
    """Progress lines on pytest's terminal (stdout), in order with test output."""

    def __init__(self, config: pytest.Config, log: list[str]) -> None:
        super().__init__(quiet=config.get_verbosity() < -1)
        self.config = config
        self.tw = config.get_terminal_writer()
        self.log = log

    def step(self, message: str) -> None:
        self.log.append(f"hil: {message}")
        if not self.quiet:
            terminal_line(self.config, f"hil: {message}", cyan=True)

    def detail(self, message: str) -> None:
        self.log.append(f"  | {message}")
        if not self.quiet:
            self.tw.line(f"  | {message}")


def terminal_line(config: pytest.Config, text: str, **markup: bool) -> None:
    """One line on pytest's terminal, on a line of its own (also amid a file's progress)."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        terminal.ensure_newline()
    config.get_terminal_writer().line(text, **markup)


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` in one go: no buffered file object for thousands of small files."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def link_or_copy(source: Path, dest: Path) -> None:
    """Hard-link ``source`` to ``dest`` (fast for thousands of results), else copy it."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def set_aside(folder: Path) -> list[Path]:
    """Rename ``folder`` to a hidden sibling; returns the set-aside folders to remove later.

    Those of earlier sessions that ended before removing theirs are included.
    """
    aside = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        folder.rename(aside)
    except OSError:  # a mount point, say: remove it in place
        shutil.rmtree(folder)
    return sorted(folder.parent.glob(f".{folder.name}.old-*"))


def publish_results(fetched: Path, dest: Path, stale: list[Path]) -> None:
    """Link a run's Allure results into ``dest``, then remove the set-aside old results."""
    try:
        entries = list(os.scandir(fetched))
    except OSError:
        entries = []
    for entry in entries:
        if entry.is_file():
            link_or_copy(Path(entry.path), dest / entry.name)
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)


def new_run_id(target: str) -> str:
    """``20261122-103012.345-colima-1a2b``: sorts in start order, unique, names the target.

    Milliseconds: two runs a second apart (quick ones) still sort in the order they ran.
    """
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{stamp}.{int(now * 1000) % 1000:03d}-{target}-{uuid.uuid4().hex[:4]}"


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


def write_infra_result(allure_dir: Path, target: str, err: HilError) -> None:
    """One synthetic, broken Allure result that shows the fault in the report."""
    allure_dir.mkdir(parents=True, exist_ok=True)
    now = int(time.time() * 1000)
    uid = str(uuid.uuid4())
    result = {
        "uuid": uid,
        "historyId": f"hil-infrastructure-{target}",
        "name": f"infrastructure: {target}",
        "fullName": f"hil.infrastructure.{target}",
        "status": "broken",
        "statusDetails": {
            "message": f"hil infrastructure fault [{err.kind}] (exit {int(err.exit_code)}): {err}",
            "trace": err.details(40),
        },
        "stage": "finished",
        "start": now,
        "stop": now,
        "labels": [{"name": "suite", "value": "hil infrastructure"},
                   {"name": "framework", "value": "pytest-hil"}],
        "parameters": [{"name": "target", "value": repr(target)}],
    }
    (allure_dir / f"{uid}-result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")


class RemoteSession:
    """Drives a container backend and feeds its reports into the local session."""

    def __init__(self, config: pytest.Config, settings: HilSettings) -> None:
        self.config = config
        self.settings = settings
        self.spec = settings.target
        if self.spec.kind == "ssh":  # the handshake overlaps the rest of the start-up
            from hil.sshconn import connect_in_background

            connect_in_background(self.spec)
        self.run_id = new_run_id(self.spec.name)
        self.run_dir = settings.reports / "runs" / self.run_id
        self.timings: dict[str, float] = {}
        self.exitstatus: int | None = None
        self.error: HilError | None = None
        self.log: list[str] = []
        self.backend: Backend | None = None
        self.publisher: threading.Thread | None = None
        self.fetched = False
        # The run's own junit.xml, written here from the streamed reports.
        from _pytest.junitxml import LogXML

        config.pluginmanager.register(LogXML(
            str(self.run_dir / "junit.xml"), None,
            suite_name=config.getini("junit_suite_name"),
            family=config.getini("junit_family"),
            report_duration=config.getini("junit_duration_report"),
            logging=config.getini("junit_logging"),
            log_passing_tests=config.getini("junit_log_passing_tests"),
        ), "hil-run-junitxml")

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> bool:
        return True  # tests are collected inside the container

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.monotonic() - start, 3)

    def _plan(self) -> RunPlan:
        params = self.config.invocation_params
        root = self.config.rootpath
        cwd = Path(params.dir)
        try:
            subdir = cwd.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            subdir = ""
        subdir = "" if subdir == "." else subdir
        lastfailed = None
        cache = getattr(self.config, "cache", None)  # absent under -p no:cacheprovider
        if cache is not None and (self.config.getoption("lf", False)
                                  or self.config.getoption("failedfirst", False)):
            lastfailed = json.dumps(cache.get("cache/lastfailed", {}))
        env = {**self.spec.env, "HIL_TARGET": self.spec.name, "HIL_TIER": str(self.settings.tier),
               "HIL_RUN_ID": self.run_id,
               "HIL_ENVIRONMENT": f"git.commit={git_commit(root)}\nrun.id={self.run_id}",
               **share_env(self.config, shard_levels(self.config))}
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
        self.run_dir.mkdir(parents=True, exist_ok=True)
        feeder = EventFeeder(self.config, session, self.spec.docker.workdir,
                             allure_dir=self.run_dir / "allure-results")
        progress = TerminalProgress(self.config, self.log)
        backend_cls = load_backend(self.spec)
        self.plan = plan = self._plan()
        started = time.time()
        stderr_log = (self.run_dir / "stderr.log").open("ab")
        backend = backend_cls(self.spec, self.config.rootpath, progress,
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
                    with self._phase("image"):
                        image = backend.prepare(plan)
                    progress.step(f"running tests in {image} on '{self.spec.name}'")

                    def on_stderr(data: bytes) -> None:
                        stderr_log.write(data)
                        stderr_log.flush()
                        text = data.decode("utf-8", "replace").rstrip("\n")
                        if text:
                            terminal_line(self.config, text, yellow=True)

                    self.exitstatus = self._run_tests(session, backend, image, feeder,
                                                      on_stderr, progress)
                except HilError as err:
                    unnamed = (isinstance(err, RunLostError) and err.running_test is None
                               and not err.not_run)
                    if unnamed:
                        # A lost link: the worker's record comes back with the results, and
                        # it knows the running test better than the events that got here.
                        with self._phase("fetch"):
                            self._fetch(backend, self.plan)  # its own fault is second
                    self._recover(feeder)
                    if unnamed and feeder.running:
                        err = RunLostError(err.message, running_test=feeder.running,
                                           target=err.target or self.spec.name, tail=err.tail)
                    self._fail(err)
                finally:
                    with self._phase("fetch"):
                        fault = self._fetch(backend, self.plan)
                    if fault is not None and self.error is None:
                        self._fail(fault)
                    self._recover(feeder)  # after an interrupt
                    self._publish()
        finally:
            # Closed at unconfigure: the container's removal (and an SSH lease's release)
            # then overlaps with writing the reports and the summary.
            self.backend = backend
            stderr_log.close()
            self._save(self.plan, image, started, feeder)
        return True

    def _run_tests(self, session: pytest.Session, backend: Backend, image: str,
                   feeder: EventFeeder, on_stderr: ByteSink, progress: Progress) -> int:
        """Run the test container, and a fresh one after each test that crashes it; the code.

        The exit code is pytest's rule over the whole run: the last container's
        own code, but 1 where a test crashed and the rest passed.
        """
        limit = int(self.config.getoption("hil_max_resumes"))
        crashes = 0
        while True:
            run_start = time.monotonic()
            stderr_at = (self.run_dir / "stderr.log").stat().st_size
            end = backend.run(self.plan, image, feeder.feed, on_stderr)
            feeder.close()
            if self._worker_died(feeder, end):
                with self._phase("fetch"):
                    backend.fetch(self.plan)  # the record, if it did not come back with the run
            self._recover(feeder)
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

    def _fetch(self, backend: Any, plan: RunPlan) -> HilError | None:
        """Bring the run's results folder here, once; the fault that stopped that, if any."""
        if self.fetched:
            return None
        self.fetched = True
        try:
            backend.fetch(plan)
        except HilError as err:
            self.config.get_terminal_writer().line(f"hil: could not fetch results: {err}", red=True)
            return err
        return None

    def _publish(self) -> None:
        """Put the run's Allure results (and an infrastructure fault's) in the results folder."""
        allure_dir = self.settings.allure_dir
        if allure_dir is None:
            return
        stale: list[Path] = []
        if not self.settings.keep_results and allure_dir.exists():
            stale = set_aside(allure_dir)
        allure_dir.mkdir(parents=True, exist_ok=True)
        if self.error is not None:
            write_infra_result(allure_dir, self.spec.name, self.error)
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
        (self.run_dir / "run.json").write_text(json.dumps({
            "target": self.spec.name, "kind": self.spec.kind, "tier": self.settings.tier,
            "run_id": self.run_id, "exit_code": self.exitstatus, "image": image,
            "pytest_args": list(plan.pytest_args), "started": started, "finished": time.time(),
            "remote": feeder.hello or {}, "stray_output": feeder.stray[-50:],
        }, indent=1), encoding="utf-8")

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
        phases = ("preflight", "image", "container start", "tests", "fetch")
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


__all__ = ["EventFeeder", "RemoteSession", "remote_args", "write_infra_result"]
