"""The in-target side of pytest-hil: runs pytest and streams its reports.

This module is the only part of ``hil`` loaded inside a container, where
pytest-hil itself is not installed: it imports nothing else from ``hil`` and
nothing beyond the standard library and pytest.  It is also the single home of
the tier vocabulary (``hil.tiers`` re-exports it), so the skip reasons on a
board and on the laptop are the same strings.

Run as ``python3 worker.py PYTEST_ARGS...`` (it is mounted into containers as
``/hil/worker.py``, so projects need not install pytest-hil in their image)
with these variables:

``HIL_TARGET`` / ``HIL_TIER``
    the target's name and the tier it serves;
``HIL_OUT``
    the results folder (default ``/hil/out``): ``pytest.log`` (pytest's own
    terminal output), ``allure-results/``, ``events.jsonl``;
``HIL_ENVIRONMENT``
    extra ``key=value`` lines for Allure's ``environment.properties``;
``HIL_EVENTS``
    ``compact`` lets passed phases without output travel in the ``finish``
    event (see :class:`EventStream`); unset, every report is a ``logreport``;
``HIL_ALLURE_RESULTS``
    ``events`` sends each Allure result on the channel (an ``allure`` event)
    for the controller to write, instead of writing it here: a container's
    file writes are slow (its memory cgroup throttles dirty pages; Colima's
    shared folders cross a VM), and a streamed result is as safe as a written
    one once the controller has it.  Attachments are still written here.
    ``off`` records no Allure results at all (the host's ``--hil-no-allure``);
``HIL_EVENT_INTERVAL_MS``
    how long events may wait to be written together (default 20; ``0``
    writes at every test's start);
``HIL_CAPTURE``
    a folder of the container (not the results folder) where pytest's fd
    capture keeps its files instead of unlinked temporary ones, so that the
    output of a test that kills the interpreter survives it (the container's
    entry script copies the folder into the results when the worker did not
    end; see ``hil.backends.base.CONTAINER_ENTRY``);
``HIL_RESUME``
    set by the controller after a test crashed the interpreter: which tests
    this fresh container runs (those the crashed one did not reach, in their
    order) and the sequence number its events continue from (see
    :func:`encode_resume`); ``pytest.log`` and ``events.jsonl`` are appended to.

Under pytest-xdist (``-n``) this process is xdist's controller: its hooks see
every worker's reports, which stream as usual, and the workers load this
module as the plugin ``hil_worker`` (the tier gate, Allure's writer).

Channel: standard output carries nothing but events, one JSON object per line
(``{"ev": "...", ...}``), pytest's terminal output is moved to ``pytest.log``,
and standard error is left alone for the diagnostics a user must see.  Reports
are serialized with pytest's own ``pytest_report_to_serializable`` hook.
"""

from __future__ import annotations

import base64
import functools
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import socket
import sys
import threading
import time
import uuid
import warnings
import zlib
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pluggy
import pytest

if TYPE_CHECKING:
    from hil.tiers import (
        CUDA_PROVIDERS,
        item_tier,
        onnxruntime_providers,
        register_markers,
        skip_reason,
        torch_cuda,
    )
else:
    try:  # in a target: tiers.py is mounted beside this file as hil_tiers.py
        from hil_tiers import (
            CUDA_PROVIDERS,
            item_tier,
            onnxruntime_providers,
            register_markers,
            skip_reason,
            torch_cuda,
        )
    except ImportError:  # on the host: part of the package
        from hil.tiers import (
            CUDA_PROVIDERS,
            item_tier,
            onnxruntime_providers,
            register_markers,
            skip_reason,
            torch_cuda,
        )

PROTOCOL = 1

def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions of ``names`` (distribution names), without importing them."""
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


#: Distributions whose versions go into Allure's environment.properties.
RUNTIME_PACKAGES = ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy", "pytest")


class TierGate:
    """Skips tests above the target's tier and labels every Allure result with the target.

    Used in-process by the local target and inside containers by the worker.
    """

    def __init__(self, target: str, tier: int, allure_dir: str | None = None,
                 environment: dict[str, str] | None = None, *,
                 write_environment: bool = True) -> None:
        self.target = target
        self.tier = tier
        self.allure_dir = allure_dir
        self.environment = environment or {}
        #: False in xdist workers: their controller writes environment.properties.
        self.write_environment = write_environment

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            needed = item_tier(item)
            if needed > self.tier:
                item.add_marker(pytest.mark.skip(reason=skip_reason(needed, self.target, self.tier)))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if self.allure_dir:
            _allure_target_parameter(self.target)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Tests skipped at setup never reach a test body; label them here.
        if self.allure_dir and report.when == "setup" and report.skipped:
            _allure_target_parameter(self.target)

    def pytest_sessionfinish(self) -> None:
        if self.allure_dir and self.write_environment:
            write_environment(Path(self.allure_dir), self.environment_lines())

    def environment_lines(self) -> dict[str, str]:
        """What Allure shows under Environment for this target."""
        env = {
            "target": self.target,
            "tier": str(self.tier),
            "host": socket.gethostname(),
            "python": platform.python_version(),
        }
        env.update({f"{k}.version": v for k, v in package_versions(RUNTIME_PACKAGES).items()})
        env.update(self.environment)
        return env


def _allure_target_parameter(target: str) -> None:
    try:
        import allure
    except ImportError:
        return
    try:
        allure.dynamic.parameter("target", target)
        board = os.environ.get("HIL_BOARD")
        if board:  # a board of a pool: every result names it
            allure.dynamic.parameter("board", board)
    except Exception:  # no Allure test context (allure-pytest inactive)
        return


def write_environment(folder: Path, values: dict[str, str]) -> None:
    """Write Allure's ``environment.properties`` (keys prefixed by nothing, one per line)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{k}={v}".replace("\n", " ") for k, v in sorted(values.items())]
    (folder / "environment.properties").write_text("\n".join(lines) + "\n", encoding="utf-8")


def parse_environment(text: str) -> dict[str, str]:
    """``key=value`` lines -> dict (blank lines and ``#`` / ``!`` comments ignored, as in Java properties)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


#: Field names of each attrs class met, in definition order (what ``attr.fields`` gives).
_ATTRS_FIELDS: dict[type, tuple[str, ...]] = {}


def _attrs_asdict(inst: Any) -> dict[str, Any]:
    """``attr.asdict(inst, filter=lambda _, v: v or v is False)``, with fewer calls per value.

    Allure's results are small trees of attrs classes, lists, dicts and plain
    values; ``attr.asdict`` checks and passes its options at every node.  This
    gives the same dict: falsy values other than ``False`` dropped, attrs
    classes recursed into, other collections turned into lists (tuples as
    dict keys), everything else kept as is.
    """
    cls = type(inst)
    names = _ATTRS_FIELDS.get(cls)
    if names is None:
        import attr

        names = _ATTRS_FIELDS[cls] = tuple(a.name for a in attr.fields(cls))
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(inst, name)
        if value or value is False:
            out[name] = _attrs_value(value, False)
    return out


def _attrs_value(value: Any, is_key: bool) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if getattr(kind, "__attrs_attrs__", None) is not None:
        return _attrs_asdict(value)
    if issubclass(kind, (tuple, list, set, frozenset)):
        items = [_attrs_value(v, False) for v in value]
        return tuple(items) if is_key else items
    if issubclass(kind, dict):
        return {_attrs_value(k, True): _attrs_value(v, False) for k, v in value.items()}
    return value


#: Receives each Allure result instead of a file: (file name, result as a dict, indent).
AllureSink = Callable[[str, "dict[str, Any]", "int | None"], None]


def write_allure_result(folder: str | Path, filename: str, data: dict[str, Any],
                        indent: int | None) -> None:
    """One Allure result file, as allure-commons writes it, whole or not at all."""
    final = os.path.join(folder, filename)
    with open(final + ".tmp", "wb") as file:
        file.write(json.dumps(data, indent=indent, ensure_ascii=False).encode("utf-8"))
    os.replace(final + ".tmp", final)


#: allure-commons' hook marker (its plugin manager's project name), without importing it.
allure_hookimpl = pluggy.HookimplMarker("allure")


class AllureResultsLogger:
    """An allure-commons logger plugin: what ``AllureFileLogger`` writes, faster or elsewhere.

    allure-commons serializes each result with ``json.dump`` into a text file,
    which runs the pure-Python encoder chunk by chunk (about half of Allure's
    cost per test); ``json.dumps`` with the same options gives the same text in
    one call.  A file is still written whole, under a temporary name, and
    renamed at once, so a run killed mid-way keeps every finished result.  With
    a ``sink``, results and containers go there instead (the controller writes
    them: see :meth:`EventStream.send_allure`).  Attachments are written by an
    ``AllureFileLogger`` of our own, through its public hook methods.
    """

    def __init__(self, folder: str, sink: AllureSink | None = None) -> None:
        from allure_commons.logger import AllureFileLogger

        self.folder = folder
        self.sink = sink
        self.files: Any = AllureFileLogger(folder)  # type: ignore[no-untyped-call]

    def _item(self, item: Any) -> None:
        from allure_commons.logger import INDENT

        indent = INDENT if os.environ.get("ALLURE_INDENT_OUTPUT") else None
        filename = item.file_pattern.format(prefix=uuid.uuid4())
        data = _attrs_asdict(item)
        if self.sink is not None:
            self.sink(filename, data, indent)
        else:
            write_allure_result(self.folder, filename, data, indent)

    @allure_hookimpl
    def report_result(self, result: Any) -> None:
        self._item(result)

    @allure_hookimpl
    def report_container(self, container: Any) -> None:
        self._item(container)

    @allure_hookimpl
    def report_attached_file(self, source: Any, file_name: str) -> None:
        self.files.report_attached_file(source, file_name)

    @allure_hookimpl
    def report_attached_data(self, body: Any, file_name: str) -> None:
        self.files.report_attached_data(body, file_name)


def record_allure(config: pytest.Config, folder: str, sink: AllureSink | None = None) -> bool:
    """Record Allure results into ``folder`` (or ``sink``); False without allure-pytest.

    What allure-pytest's ``--alluredir`` sets up (its listener and a file
    logger), with :class:`AllureResultsLogger` as the logger: allure-commons'
    plugin hooks are its public way to receive results.
    """
    try:
        import allure_commons
        from allure_pytest.listener import AllureListener
    except ImportError:
        return False
    listener = AllureListener(config)
    config.pluginmanager.register(listener, "allure_listener")
    for plugin in (listener, AllureResultsLogger(folder, sink)):
        allure_commons.plugin_manager.register(plugin)
        config.add_cleanup(functools.partial(allure_commons.plugin_manager.unregister, plugin))
    return True


def only_pytest_implements(hook: Any) -> bool:
    """Whether every implementation of ``hook`` (a hook caller) is pytest's own."""
    return all(str(getattr(i.plugin, "__name__", "")).startswith("_pytest.")
               for i in hook.get_hookimpls())


def _plain_report_shape() -> tuple[frozenset[str], list[str]]:
    """A passed report's attribute names and its serialized keys, in order, for this pytest."""
    report = pytest.TestReport("a.py::t", ("a.py", 0, "t"), {}, "passed", None, "call", [],
                               0.0, 0.0, 0.0, [])
    serialized = report._to_json()
    serialized["$report_type"] = "TestReport"
    return frozenset(report.__dict__), list(serialized)


#: Attributes the reports in an xdist controller carry beside pytest's own: the keys the
#: workers add when serializing, and the controller's node.  None is sent on: the
#: controller's reports then look like those of a run without xdist.
XDIST_REPORT_ATTRS = frozenset({"$report_type", "worker_id", "item_index", "testrun_uid", "node"})


class EventStream:
    """Sends pytest's hooks to the controller as JSON lines on a file object.

    Every event carries a sequence number ``n``.  Writes to the channel are
    batched: a test's events are queued and go out with a later test's
    ``logstart``, at most every ``interval`` seconds, and a background thread
    writes whatever has waited that long, so the controller is never more than
    ``interval`` behind.  Each write crosses the container runtime and the
    engine to the controller, so one write per test would cost more than a
    trivial test itself.  The ``copy`` (``events.jsonl``), a local file write,
    still gets every event before the next test starts (and before the
    session's end): when the container is killed, the controller reads what
    the channel had not carried yet from it (by ``n``), so no finished test's
    result is lost and the running test is named.  ``interval=0`` writes the
    channel at every ``logstart`` too.

    With ``compact``, a test's passed phases that carry nothing but timings
    (no output, no longrepr, no user properties, no extra attributes) travel
    in one ``finish`` event in place of their ``logreport`` events and the
    ``logfinish``: ``{"ev": "finish", "nodeid", "location", "keywords",
    "passed": [[when, duration, start, stop], ...]}``.  The controller rebuilds
    the very reports pytest would have deserialized, with the key order given
    by ``report_keys`` in ``hello``.  Any other report of a test goes out in
    full, after that test's compact phases queued before it.

    Under pytest-xdist several tests run at once and their hooks interleave:
    what is queued and which tests run is kept per test, ``hello`` says how
    many workers there are, and ``collection_finish`` comes from the first
    worker's collection (xdist's controller collects nothing itself).
    """

    def __init__(self, channel: IO[str], copy: IO[str] | None = None,
                 compact: bool = False, allure_events: bool = False,
                 interval: float = 0.0, first_seq: int = 0) -> None:
        self.channel = channel
        self.copy = copy
        self.compact = compact
        self.allure_events = allure_events
        #: Where Allure results go (set by :func:`main` when allure-pytest is installed).
        self.allure_dir: str | None = None
        self.interval = interval
        self.config: pytest.Config | None = None
        self.started = time.perf_counter()
        #: The running tests (several under xdist): node id -> location.
        self.running: dict[str, Any] = {}
        #: Their compact phases, not yet sent.
        self.held: dict[str, list[pytest.TestReport]] = {}
        self.plain_attrs: frozenset[str] = frozenset()
        #: xdist's workers (0 without xdist): their reports carry XDIST_REPORT_ATTRS.
        self.workers = 0
        self.collection_sent = False
        # Shared with the flusher thread: the sequence, both queues, the writes.
        self.lock = threading.Lock()
        self.seq = first_seq  # a resumed run continues the crashed one's numbering
        self.pending: list[str] = []  # lines the channel has not carried yet
        self.unrecorded: list[str] = []  # lines the copy has not got yet
        self.last_write = 0.0
        self.closed = False  # the exit event is written: nothing may follow it
        self.due = threading.Event()  # queued lines wait for the flusher
        if interval > 0 and copy is not None:
            threading.Thread(target=self._flusher, name="hil-event-flusher", daemon=True).start()
        else:
            self.interval = 0.0  # without a record, a kill would lose what was batched

    def _queue(self, data: dict[str, Any]) -> None:
        with self.lock:
            self.seq += 1
            data["n"] = self.seq
            line = json.dumps(data, separators=(",", ":"), default=str)
            self.pending.append(line)
            self.unrecorded.append(line)

    def send(self, ev: str, flush: bool = True, soon: bool = False, **data: Any) -> None:
        """Queue one event line; ``flush`` writes it at once, ``soon`` within ``interval``."""
        data["ev"] = ev
        data["t"] = time.time()  # wall clock, for test boundaries on telemetry charts
        self._queue(data)
        if soon and self.interval > 0 and time.monotonic() - self.last_write < self.interval:
            self.record()
            self.due.set()
        elif flush or soon:
            self.flush()

    def send_allure(self, name: str, result: dict[str, Any], indent: int | None) -> None:
        """Queue one Allure result for the controller.

        The result travels as the text allure-commons would have written, so the
        controller writes it without decoding and encoding it again.
        """
        self._queue({"ev": "allure", "name": name,
                     "text": json.dumps(result, indent=indent, ensure_ascii=False)})

    def record(self) -> None:
        """Write the lines the copy has not got yet."""
        with self.lock:
            if self.copy is not None and self.unrecorded:
                self.copy.write("\n".join(self.unrecorded) + "\n")
                self.copy.flush()
            self.unrecorded.clear()

    def flush(self) -> None:
        """Write the queued events to the channel and the copy."""
        with self.lock:
            if self.pending and not self.closed:
                self.last_write = time.monotonic()
                self.channel.write("\n".join(self.pending) + "\n")
                self.channel.flush()
            self.pending.clear()
        self.record()

    def finish(self, code: int) -> None:
        """Write what is queued and the final ``exit`` event; nothing is written after it."""
        self.flush()
        with self.lock:
            self.closed = True
            self.channel.write(json.dumps({"ev": "exit", "code": code, "t": time.time()}) + "\n")
            self.channel.flush()

    def _flusher(self) -> None:
        """Write queued events that have waited ``interval`` seconds (a slow test is running)."""
        while True:
            self.due.wait()
            self.due.clear()
            time.sleep(max(0.0, self.last_write + self.interval - time.monotonic()))
            try:
                self.flush()
            except (OSError, ValueError):  # the channel is gone: the worker is ending
                return

    def _is_plain(self, report: pytest.TestReport) -> bool:
        """Whether the controller can rebuild ``report`` from its phase and timings alone."""
        if not (type(report) is pytest.TestReport and report.outcome == "passed"
                and report.longrepr is None and not report.sections
                and not report.user_properties):
            return False
        attrs = report.__dict__.keys()
        if (attrs - XDIST_REPORT_ATTRS if self.workers else attrs) != self.plain_attrs:
            return False
        location = self.running.get(report.nodeid)
        held = self.held.get(report.nodeid)
        return (location is not None and tuple(report.location) == tuple(location)
                and (not held or report.keywords == held[0].keywords))

    def _release_held(self, nodeid: str | None = None) -> None:
        """Send a test's compact phases queued so far (every test's: ``None``) as full reports."""
        for test in list(self.held) if nodeid is None else [nodeid]:
            for report in self.held.pop(test, ()):
                self.send("logreport", flush=False, report=self._report(report))

    def _report(self, report: pytest.CollectReport | pytest.TestReport) -> dict[str, Any]:
        assert self.config is not None
        data: dict[str, Any] = self.config.hook.pytest_report_to_serializable(
            config=self.config, report=report
        )
        if self.workers:
            for key in XDIST_REPORT_ATTRS - {"$report_type"}:
                data.pop(key, None)
        return data

    @pytest.hookimpl(trylast=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        self.config = config
        register_markers(config)
        # Whether allure-pytest records here: without it the controller writes each test's
        # result from its reports, naming the target (and board) as our results do.
        allure = bool(self.allure_dir) and record_allure(
            config, str(self.allure_dir), self.send_allure if self.allure_events else None)
        extra: dict[str, Any] = {"allure": allure, "target": os.environ.get("HIL_TARGET", ""),
                                 "board": os.environ.get("HIL_BOARD", "")}
        # Only pytest's own serializers may be skipped: a plugin's could add to the reports.
        if self.compact and only_pytest_implements(config.hook.pytest_report_to_serializable):
            self.plain_attrs, extra["report_keys"] = _plain_report_shape()
        else:
            self.compact = False
        # xdist resolved -n into its test environments in pytest_cmdline_main.
        tx = config.getoption("tx", None) or []
        if config.getoption("dist", "no") != "no" and tx:
            self.workers = len(tx)
        self.send("hello", protocol=PROTOCOL, pytest=pytest.__version__,
                  python=platform.python_version(), host=socket.gethostname(), pid=os.getpid(),
                  workers=self.workers, **extra)

    def pytest_sessionstart(self) -> None:
        self.started = time.perf_counter()

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        # Passed collect reports only carry counts, which collection_finish sends.
        if not report.passed:
            self.send("collectreport", report=self._report(report))

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.send("deselected", nodeids=[item.nodeid for item in items])

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collection_sent = True
        self.send("collection_finish", nodeids=[item.nodeid for item in session.items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # Every worker collects the same tests (xdist checks): the first one says which.
        if not self.collection_sent:
            self.collection_sent = True
            self.send("collection_finish", nodeids=list(ids))

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self.running[nodeid] = location
        # Written with the previous tests' events, within ``interval``.
        self.send("logstart", flush=False, soon=True, nodeid=nodeid, location=location)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.compact and self._is_plain(report):
            self.held.setdefault(report.nodeid, []).append(report)
            return
        self._release_held(report.nodeid)
        self.send("logreport", flush=False, report=self._report(report))

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        held = self.held.pop(nodeid, [])
        self.running.pop(nodeid, None)
        # Not written yet: the next logstart (or the session's end) carries it.
        if held:
            self.send("finish", flush=False, nodeid=nodeid, location=location,
                      keywords=held[0].keywords,
                      passed=[[r.when, r.duration, r.start, r.stop] for r in held])
        else:
            self.send("logfinish", flush=False, nodeid=nodeid, location=location)

    def pytest_warning_recorded(self, warning_message: warnings.WarningMessage, when: str,
                                nodeid: str, location: tuple[str, int, str] | None) -> None:
        self._release_held(nodeid or None)
        self.send("warning", flush=False, message=str(warning_message.message),
                  category=type(warning_message.message).__name__,
                  filename=warning_message.filename, lineno=warning_message.lineno,
                  when=when, nodeid=nodeid)

    def pytest_internalerror(self, excrepr: object) -> None:
        self.send("internalerror", text=str(excrepr))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_sessionfinish(self, session: pytest.Session,
                             exitstatus: int) -> Generator[None, None, None]:
        # The last test's events reach the record before any plugin's session end runs:
        # an interpreter that dies there must not leave that test looking unfinished.
        self.record()
        yield
        self.send("sessionfinish", exitstatus=int(exitstatus),
                  duration=round(time.perf_counter() - self.started, 4),
                  shouldfail=str(session.shouldfail or ""),
                  shouldstop=str(session.shouldstop or ""))


def _prepare_cache(out: Path) -> list[str]:
    """Point pytest's cache into ``out`` and seed it with the controller's last failures."""
    cache = out / ".pytest_cache"
    lastfailed = out / "lastfailed.json"
    if lastfailed.is_file():
        dest = cache / "v" / "cache"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "lastfailed").write_text(lastfailed.read_text(encoding="utf-8"), encoding="utf-8")
    return ["-o", f"cache_dir={cache}"]


#: The module name xdist's workers load this file as (``PYTEST_PLUGINS``); the
#: container mounts it under this name, in a folder of its own.
WORKER_MODULE = "hil_worker"


class XdistWorkers:
    """Gives xdist's workers, started by this process, what the worker gives pytest here.

    The workers are fresh interpreters that load plugins from their command line
    and ``PYTEST_PLUGINS``: this module is named there before they start, and
    each gets the target, tier and Allure folder in its ``workerinput``.
    """

    def __init__(self, target: str, tier: int, allure_dir: str | None) -> None:
        self.settings = {"target": target, "tier": tier, "allure_dir": allure_dir}

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_setupnodes(self) -> None:
        names = [n for n in os.environ.get("PYTEST_PLUGINS", "").split(",") if n.strip()]
        if WORKER_MODULE not in names:
            os.environ["PYTEST_PLUGINS"] = ",".join([*names, WORKER_MODULE])

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[WORKER_MODULE] = self.settings


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """In an xdist worker of the worker's pytest: the tier gate and Allure's faster writer."""
    settings = getattr(config, "workerinput", {}).get(WORKER_MODULE)
    if not settings:
        return
    register_markers(config)
    config.pluginmanager.register(
        TierGate(settings["target"], settings["tier"], settings["allure_dir"],
                 write_environment=False), "hil-tiergate")
    share = ShareFilter.from_env()  # each xdist worker collects: each keeps the same part
    if share is not None:
        config.pluginmanager.register(share, "hil-share")
    route = RouteFilter.from_env()
    if route is not None:
        config.pluginmanager.register(route, "hil-route")
    if settings["allure_dir"]:
        record_allure(config, settings["allure_dir"])


def encode_resume(ids: list[str], after: str, how: str, seq: int) -> str:
    """``HIL_RESUME``: the tests a fresh container runs after ``after`` crashed, compressed.

    ``seq`` is the last event number handled, which the new events continue from.
    """
    return _pack({"ids": ids, "after": after, "how": how, "n": seq})


def _pack(payload: dict[str, Any]) -> str:
    """A JSON object as one compressed environment value (base64 of zlib)."""
    data = json.dumps(payload).encode("utf-8")
    return base64.b64encode(zlib.compress(data, 9)).decode("ascii")


def _unpack(value: str) -> dict[str, Any]:
    """The inverse of :func:`_pack`."""
    data: dict[str, Any] = json.loads(zlib.decompress(base64.b64decode(value)))
    return data


def decode_resume(value: str) -> dict[str, Any]:
    """The inverse of :func:`encode_resume`."""
    return _unpack(value)


class ResumeFilter:
    """Runs only the tests a crashed run did not reach, in the order it would have.

    The rest are left out silently (not "deselected": the first run counted
    them), after every other plugin's selection (``-k``, ``--lf``, ...).
    """

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        by_id = {item.nodeid: item for item in items}
        items[:] = [by_id[nodeid] for nodeid in self.ids if nodeid in by_id]


# -- shares: the part of a suite one board (or one CI shard) runs ---------------------------

def split_shares(ids: list[str], durations: dict[str, float], count: int) -> list[list[str]]:
    """``ids`` split into ``count`` parts of about equal run time, each in collection order.

    With durations recorded in earlier runs: longest first onto the least
    loaded part (ties: the one with fewest tests, then the lowest index, so
    tests recorded as taking no time are spread too); a test with no record counts as the
    mean of those recorded.  With none recorded: ``count`` consecutive runs of
    the collection order (file order), sizes differing by one at most.  The
    same inputs always give the same split, so every board (or shard) that
    collects the same tests computes the same parts.
    """
    if count <= 1:
        return [list(ids)]
    known = [durations[i] for i in ids if i in durations]
    if not known:
        size, extra = divmod(len(ids), count)
        parts, start = [], 0
        for k in range(count):
            end = start + size + (1 if k < extra else 0)
            parts.append(list(ids[start:end]))
            start = end
        return parts
    mean = sum(known) / len(known)
    cost = [durations.get(i, mean) for i in ids]
    loads = [0.0] * count
    sizes = [0] * count
    owner = [0] * len(ids)
    for place in sorted(range(len(ids)), key=lambda p: (-cost[p], p)):
        k = min(range(count), key=lambda b: (loads[b], sizes[b], b))
        loads[k] += cost[place]
        sizes[k] += 1
        owner[place] = k
    return [[i for place, i in enumerate(ids) if owner[place] == k] for k in range(count)]


def share_of(ids: list[str], durations: dict[str, float], levels: list[list[int]]) -> list[str]:
    """The part of ``ids`` that ``levels`` name: ``[[index, count], ...]``, 0-based, nested.

    ``[[0, 3]]`` is the first of three parts; ``[[1, 3], [0, 2]]`` the first
    half of the second third (a CI shard spread over a pool of two boards).
    """
    for index, count in levels:
        ids = split_shares(ids, durations, count)[index]
    return ids


def encode_share(levels: list[list[int]], durations: dict[str, float],
                 ids: list[str] | None = None) -> str:
    """``HIL_SHARE``: which part of the collected tests this container runs, compressed.

    ``ids``, when given, names the tests outright (a re-run of failed tests).
    """
    payload: dict[str, Any] = {"levels": levels, "durations": durations}
    if ids is not None:
        payload["ids"] = ids
    return _pack(payload)


def decode_share(value: str) -> dict[str, Any]:
    """The inverse of :func:`encode_share`."""
    return _unpack(value)


class ShareFilter:
    """Runs only this board's (or shard's) part of the suite.

    The rest are left out silently (not "deselected": the other parts run
    them), after every other plugin's selection (``-k``, ``--lf``, ...), so
    every part splits the same selected list.
    """

    def __init__(self, levels: list[list[int]], durations: dict[str, float],
                 ids: list[str] | None = None) -> None:
        self.levels = levels
        self.durations = durations
        self.ids = ids

    @classmethod
    def from_env(cls) -> ShareFilter | None:
        """The filter ``HIL_SHARE`` asks for, if any."""
        value = os.environ.get("HIL_SHARE")
        if not value:
            return None
        data = decode_share(value)
        ids = data.get("ids")
        return cls([list(level) for level in data["levels"]],
                   {str(k): float(v) for k, v in data["durations"].items()},
                   [str(i) for i in ids] if isinstance(ids, list) else None)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if self.ids is not None:
            keep = set(self.ids)
        else:
            keep = set(share_of([item.nodeid for item in items], self.durations, self.levels))
        items[:] = [item for item in items if item.nodeid in keep]


class RouteFilter:
    """Runs only the tests routed to this target (``--target a,b``): ``HIL_ROUTE``.

    ``HIL_ROUTE`` maps each tier ("1", "2", "3") to the target its tests go
    to; this container keeps those whose tier maps to ``HIL_TARGET``.  The
    rest are left out silently: the other targets run them.
    """

    def __init__(self, route: dict[str, str], target: str) -> None:
        self.route = route
        self.target = target

    @classmethod
    def from_env(cls) -> RouteFilter | None:
        """The filter ``HIL_ROUTE`` asks for, if any."""
        value = os.environ.get("HIL_ROUTE")
        if not value:
            return None
        route = json.loads(value)
        return cls({str(k): str(v) for k, v in route.items()},
                   os.environ.get("HIL_TARGET", "container"))

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        items[:] = [item for item in items
                    if self.route.get(str(item_tier(item))) == self.target]


def keep_capture_files(folder: Path) -> bool:
    """Have pytest's fd capture write into named files in ``folder``; False if it cannot.

    pytest captures a test's output in unlinked temporary files, lost with a
    process that dies; these outlive it, so a crashed test's output so far can
    be reported.  Each is named ``<seq>-fd<N>`` (N: the captured descriptor).
    """
    try:
        import _pytest.capture as capture
    except ImportError:  # pragma: no cover - every pytest has it
        return False
    if not callable(getattr(capture, "TemporaryFile", None)):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    counter = itertools.count(1)

    def temporary_file(*args: Any, **kwargs: Any) -> IO[bytes]:
        targetfd = sys._getframe(1).f_locals.get("targetfd")  # FDCaptureBinary's descriptor
        name = f"{next(counter):04d}-fd{targetfd if isinstance(targetfd, int) else 'x'}"
        return open(folder / name, "w+b", buffering=0)

    capture.TemporaryFile = temporary_file  # type: ignore[attr-defined,assignment]
    return True


def _open_record(path: Path, resume: bool) -> IO[str]:
    """``events.jsonl``: new, or appended to after a crashed run (on a line of its own)."""
    copy = open(path, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115
    if resume and copy.tell():
        with open(path, "rb") as old:
            old.seek(-1, os.SEEK_END)
            if old.read(1) != b"\n":  # the crash cut the last line short
                copy.write("\n")
    return copy


def _run_pytest(args: list[str], plugins: list[object]) -> int:
    """``pytest.main``; an exception it lets out ends with its traceback, as the CLI's does."""
    try:
        return int(pytest.main(args, plugins=plugins))
    except Exception:  # e.g. a plugin that fails to import, on an older pytest
        import traceback

        traceback.print_exc()
        return 1  # what the interpreter exits with, under pytest's own command line


def main(argv: list[str] | None = None) -> int:
    """Run pytest with ``argv`` and stream its reports on standard output."""
    args = list(sys.argv[1:] if argv is None else argv)
    out = Path(os.environ.get("HIL_OUT", "/hil/out"))
    out.mkdir(parents=True, exist_ok=True)
    target = os.environ.get("HIL_TARGET", "container")
    tier = int(os.environ.get("HIL_TIER", "1"))
    resume = decode_resume(os.environ["HIL_RESUME"]) if os.environ.get("HIL_RESUME") else None

    # Standard output becomes the event channel; pytest's terminal goes to the log.
    sys.stdout.flush()
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    log = open(out / "pytest.log", "a" if resume else "w", buffering=1,  # noqa: SIM115
               encoding="utf-8")
    if resume:
        log.write(f"\nhil: {resume['after']} crashed ({resume['how']}); resumed in a fresh "
                  f"container with the {len(resume['ids'])} test(s) after it\n")
    os.dup2(log.fileno(), 1)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    copy = _open_record(out / "events.jsonl", resume is not None)

    stream = EventStream(channel, copy, compact=os.environ.get("HIL_EVENTS") == "compact",
                         allure_events=os.environ.get("HIL_ALLURE_RESULTS") == "events",
                         interval=_flush_interval(os.environ.get("HIL_EVENT_INTERVAL_MS")),
                         first_seq=int(resume["n"]) if resume else 0)
    plugins: list[object] = [stream]
    # A resumed container's list is already within its share: splitting it again would differ.
    share = None if resume else ShareFilter.from_env()
    route = None if resume else RouteFilter.from_env()
    # Registered last, called first: the route picks the tests, the share splits those.
    plugins += [f for f in (share, route) if f is not None]
    if resume:
        plugins.append(ResumeFilter(list(resume["ids"])))
    # junit.xml is written by the controller from the streamed reports (see session.py):
    # it then exists also when the container dies mid-run.
    extra = ["-p", "no:hil"]
    if "no:cacheprovider" not in args:
        extra += _prepare_cache(out)
    allure_dir: str | None = None
    if (os.environ.get("HIL_ALLURE_RESULTS") != "off"
            and importlib.util.find_spec("allure_pytest") is not None):
        allure_dir = str(out / "allure-results")
        stream.allure_dir = allure_dir
    environment = parse_environment(os.environ.get("HIL_ENVIRONMENT", ""))
    plugins.append(TierGate(target, tier, allure_dir, environment))
    here = Path(__file__).resolve()
    if here.stem == WORKER_MODULE:
        # xdist's workers get this sys.path: appended, so no project module is shadowed.
        if str(here.parent) not in sys.path:
            sys.path.append(str(here.parent))
        plugins.append(XdistWorkers(target, tier, allure_dir))
    capture = os.environ.get("HIL_CAPTURE")
    if capture:
        keep_capture_files(Path(capture))
    try:
        code = _run_pytest(extra + args, plugins)
    finally:
        stream.flush()  # what a session that never finished queued
        sys.stdout.flush()
    stream.finish(code)
    copy.close()
    if capture:  # the run ended: nothing to keep for a crash report
        import shutil

        shutil.rmtree(capture, ignore_errors=True)
    return code


#: The default for ``HIL_EVENT_INTERVAL_MS``: how long events may wait to be batched.
EVENT_INTERVAL_MS = 20.0


def _flush_interval(value: str | None) -> float:
    """``HIL_EVENT_INTERVAL_MS`` in seconds: 0 to 10000 ms, else the default (and a warning)."""
    if not value:
        return EVENT_INTERVAL_MS / 1000
    try:
        ms = float(value)
    except ValueError:
        ms = -1.0
    if not 0 <= ms <= 10_000:  # NaN fails both
        print(f"hil worker: HIL_EVENT_INTERVAL_MS={value!r} is not a number of milliseconds "
              f"from 0 to 10000; using {EVENT_INTERVAL_MS:g}", file=sys.stderr)
        return EVENT_INTERVAL_MS / 1000
    return ms / 1000


def probe() -> dict[str, Any]:
    """What this environment offers: Python, packages, and CUDA as the suites would see it.

    ``cuda`` is true when torch sees a CUDA device or an onnxruntime CUDA or
    TensorRT provider really loads (not merely listed).
    """
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "host": socket.gethostname(),
        "packages": package_versions(RUNTIME_PACKAGES),
        "cuda": False,
        "gpu": "",
    }
    release = Path("/etc/nv_tegra_release")
    if release.is_file():
        info["nv_tegra_release"] = release.read_text(encoding="utf-8", errors="replace").strip()
    torch_found = torch_cuda()
    if torch_found is not None:
        info["torch"] = torch_found
        if torch_found["cuda"]:
            info["cuda"], info["gpu"] = True, torch_found["device"]
    ort_found = onnxruntime_providers()
    if ort_found is not None:
        info["onnxruntime"] = ort_found
        if any(p in ort_found["loadable"] for p in CUDA_PROVIDERS):
            info["cuda"] = True
    return info


if __name__ == "__main__":
    # Run as a mounted script: give pytest the import path ``python -m pytest`` would have.
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path[0] = os.getcwd()
    if sys.argv[1:2] == ["--probe"]:
        print(json.dumps(probe()))
        sys.exit(0)
    code = main()
    # Everything is written and flushed: skip the interpreter's slow teardown,
    # the controller is waiting for the container to end.
    sys.stderr.flush()
    os._exit(code)
