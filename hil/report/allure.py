"""Allure result files through allure-commons: its model classes and its file logger.

pytest-hil writes three kinds of Allure items of its own: the synthetic broken
result of an infrastructure fault (one per faulty target, the session's and
``hil nightly``'s), the staged copies of allure-pytest's results with a
``target`` label and log tails laid over, and one container per run whose
set-up fixture carries the run's artifacts.  All are ``allure_commons.model2``
objects written by ``allure_commons.logger.AllureFileLogger``, so the files
have exactly the shape allure-pytest gives its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attr
from allure_commons.logger import AllureFileLogger
from allure_commons.model2 import (
    ATTACHMENT_PATTERN,
    Attachment,
    Label,
    Link,
    Parameter,
    Status,
    StatusDetails,
    TestResult,
    TestStepResult,
)
from allure_commons.utils import md5 as _md5
from allure_commons.utils import platform_label as _platform_label

#: allure-commons' indentation when ``ALLURE_INDENT_OUTPUT`` is set.
INDENT = 4
#: The biggest result file read back (attribution, staging) and attached log, in bytes.
RESULT_LIMIT = 16 * 1024 * 1024
LOG_LIMIT = 4 * 1024 * 1024
#: The most captured output of one kind kept in a result built from reports (characters).
SECTION_LIMIT = 256 * 1024
#: The names allure-commons gives results and containers: the only ones a container may stream.
STREAMED_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,80}-(?:result|container)\.json")
#: What a target's image lacks when it has no allure-pytest (said once per session).
RICHER_PARTS = ("steps, attachments of the tests' own, titles, descriptions, links and "
                "allure labels need allure-pytest in the image; the Allure results were "
                "written from the test reports (status, duration, failure, captured output, "
                "parameters)")
_HAS_TITLE_PATH = "titlePath" in {a.name for a in attr.fields(TestResult)}
md5: Any = _md5  # allure-commons is untyped
platform_label: Any = _platform_label

#: How every infrastructure-fault message starts; ``reports/allure/categories.json`` matches it.
INFRA_PREFIX = "hil infrastructure fault"

#: Fields of the model that hold model objects (or lists of them), and their class.
_NESTED: dict[str, Any] = {
    "statusDetails": StatusDetails, "steps": TestStepResult, "attachments": Attachment,
    "parameters": Parameter, "labels": Label, "links": Link,
}


def _from_json(cls: Any, data: Mapping[str, Any]) -> Any:
    names = {a.name for a in attr.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            continue
        nested = _NESTED.get(key)
        if nested is not None and isinstance(value, list):
            value = [_from_json(nested, v) for v in value if isinstance(v, Mapping)]
        elif nested is not None and isinstance(value, Mapping):
            value = _from_json(nested, value)
        values[key] = value
    return cls(**values)


def result_from_json(data: Mapping[str, Any]) -> Any:
    """A ``TestResult`` (with its steps, attachments, labels...) from a result file's JSON.

    Keys outside allure-commons' model are dropped; allure-pytest writes none.
    """
    return _from_json(TestResult, data)


def read_result(path: Path) -> Any | None:
    """The ``TestResult`` of a ``*-result.json`` file, or None when it is not one.

    A link is not followed and a file over :data:`RESULT_LIMIT` is not read:
    the folder may have been written by the container.
    """
    return _parse_result(read_capped(path, RESULT_LIMIT))


def result_target(result: Any) -> str | None:
    """The value of a result's ``target`` parameter, without allure-pytest's quotes."""
    for param in result.parameters or ():
        if param.name == "target":
            value = str(param.value or "")
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            return value
    return None


def is_infrastructure_result(result: Any) -> bool:
    """Whether a result is the synthetic one written for an infrastructure fault."""
    details = result.statusDetails
    return bool(details and str(details.message or "").startswith(INFRA_PREFIX))


def infrastructure_message(kind: str, exit_code: int | None, message: str) -> str:
    """``hil infrastructure fault [<kind>] (exit <code>): <message>``."""
    return f"{INFRA_PREFIX} [{kind}] (exit {exit_code}): {message}"


def infrastructure_result(target: str, kind: str, exit_code: int, message: str, *,
                          trace: str = "", when: float | None = None) -> Any:
    """The synthetic broken ``TestResult`` that shows an infrastructure fault in the report."""
    now = int((when if when is not None else time.time()) * 1000)
    return TestResult(
        uuid=str(uuid.uuid4()), historyId=f"hil-infrastructure-{target}",
        name=f"infrastructure: {target}", fullName=f"hil.infrastructure.{target}",
        status=Status.BROKEN, stage="finished", start=now, stop=now,
        statusDetails=StatusDetails(message=infrastructure_message(kind, exit_code, message),
                                    trace=trace),
        labels=[Label(name="suite", value="hil infrastructure"),
                Label(name="framework", value="pytest-hil")],
        parameters=[Parameter(name="target", value=repr(target))])


def write_infrastructure_result(folder: Path, target: str, kind: str, exit_code: int,
                                message: str, *, trace: str = "",
                                when: float | None = None) -> Any:
    """Write :func:`infrastructure_result` into the results ``folder``; returns the result."""
    writer = AllureWriter(folder, target)
    try:
        return writer.write_infrastructure(kind, exit_code, message, trace=trace, when=when)
    finally:
        writer.close()


def _safe_name(name: str) -> bool:
    """Whether ``name`` is a plain file name (no folder, not hidden, not empty)."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".") \
        and "\0" not in name and len(name) <= 255


class SafeFileLogger(AllureFileLogger):
    """allure-commons' file logger, creating its files under a folder descriptor.

    The run folder can be written by the container on docker targets: a link
    planted there must never be followed by the host.  The folder is opened
    once with ``O_NOFOLLOW``, and every file is created in it with
    ``O_EXCL | O_NOFOLLOW``, so neither a linked folder nor a linked or
    existing file name is written through.  Items are serialized as
    allure-commons does (``attr.asdict`` of its model classes).
    """

    def __init__(self, report_dir: str | Path, clean: bool = False) -> None:
        folder = Path(report_dir).absolute()
        if clean and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        self._report_dir = folder
        self.fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def close(self) -> None:
        """Close the folder's descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def write_new(self, name: str, data: bytes) -> None:
        """Create ``name`` in the folder with ``data``; never through a link, never over a file."""
        if not _safe_name(name):
            raise ValueError(f"not a plain file name: {name!r}")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644, dir_fd=self.fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def remove(self, name: str) -> None:
        """Remove ``name`` from the folder (a link is removed, not followed)."""
        if _safe_name(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=self.fd)

    def read(self, name: str, limit: int = RESULT_LIMIT) -> bytes | None:
        """At most ``limit`` bytes of the regular file ``name`` (None: a link, missing, too big)."""
        return read_capped(name, limit, dir_fd=self.fd)

    def names(self) -> list[str]:
        """The file names in the folder, sorted."""
        return sorted(os.listdir(self.fd))

    def _report_item(self, item: Any) -> None:
        indent = INDENT if os.environ.get("ALLURE_INDENT_OUTPUT") else None
        data = attr.asdict(item, filter=lambda _, v: v or v is False)
        self.write_new(item.file_pattern.format(prefix=uuid.uuid4()),
                       json.dumps(data, indent=indent, ensure_ascii=False).encode("utf-8"))

    def report_result(self, result: Any) -> None:
        """Write one ``TestResult`` (allure-commons' hook)."""
        self._report_item(result)

    def report_container(self, container: Any) -> None:
        """Write one ``TestResultContainer`` (allure-commons' hook)."""
        self._report_item(container)

    def report_attached_data(self, body: bytes | str, file_name: str) -> None:
        """Write one attachment (allure-commons' hook)."""
        self.write_new(file_name, body.encode("utf-8") if isinstance(body, str) else body)

    def report_attached_file(self, source: str, file_name: str) -> None:
        """Copy one attachment file in (allure-commons' hook)."""
        self.write_new(file_name, Path(source).read_bytes())


def read_capped(path: str | Path, limit: int, *, dir_fd: int | None = None) -> bytes | None:
    """At most ``limit`` bytes of a regular file, not through a link; None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dir_fd)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        with os.fdopen(fd, "rb", closefd=False) as file:
            return file.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def file_logger(folder: Path, *, clean: bool = False) -> Any:
    """The one file logger of this side (:class:`SafeFileLogger`) writing into ``folder``."""
    return SafeFileLogger(folder, clean=clean)


def attach_data(logger: Any, name: str, body: bytes | str, mime: str, ext: str) -> Any:
    """Write one attachment file through ``logger``; returns its ``Attachment`` entry."""
    source = ATTACHMENT_PATTERN.format(prefix=uuid.uuid4(), ext=ext)
    logger.report_attached_data(body=body, file_name=source)
    return Attachment(name=name, source=source, type=mime)


# --------------------------------------------------------------------------- names


@dataclass(frozen=True)
class NodeNames:
    """How allure-pytest names a test, from its node id alone (its ``ParsedPytestNodeId``)."""

    #: ``test_x[2-4]``: the last node id part.
    name: str
    #: ``suites.tier1.test_a.TestB#test_x``.
    full_name: str
    #: ``[2-4]`` of a parametrized test, else empty.
    params: str
    package: str
    parent_package: str
    module: str
    classes: tuple[str, ...]
    title_path: tuple[str, ...]

    @classmethod
    def of(cls, nodeid: str) -> NodeNames:
        """The names of the test ``nodeid``."""
        filepath, *rest = nodeid.split("::")
        segments = filepath.split("/")
        *parents, filename = segments
        module = filename.rsplit(".", 1)[0]
        parent = ".".join(parents)
        package = ".".join(filter(None, [parent, module]))
        classes = tuple(rest[:-1])
        function = rest[-1] if rest else ""
        base, bracket, params = function.partition("[")
        class_part = "".join("." + c for c in classes)
        return cls(name=function, full_name=f"{package}{class_part}#{base}",
                   params=bracket + params, package=package, parent_package=parent,
                   module=module, classes=classes,
                   title_path=tuple(filter(None, [*segments, *classes])))

    def labels(self) -> list[Any]:
        """allure-pytest's default suite, framework, language and package labels."""
        pairs = [("parentSuite", self.parent_package), ("suite", self.module),
                 ("subSuite", " > ".join(self.classes)), ("framework", "pytest"),
                 ("language", platform_label()), ("package", self.package)]
        return [Label(name=k, value=v) for k, v in pairs if v]

    def matches(self, result: Any) -> bool:
        """Whether an Allure ``TestResult`` is this test's."""
        name = str(result.name or "")
        return (str(result.fullName or "") == self.full_name
                and (not self.params or name.endswith(self.params)))


# --------------------------------------------------------------------------- from reports


def _status(reports: Sequence[Any]) -> tuple[Any, Any]:
    """(Allure status, the report that decided it) over a test's phase reports.

    As allure-pytest: a failed set-up or teardown is broken; a failed call is
    failed when an assertion (or ``pytest.fail``) failed, else broken; a skip
    (xfail included) is skipped.
    """
    for report in reports:
        if report.failed:
            if report.when != "call":
                return Status.BROKEN, report
            message = _crash_message(report)
            exception = re.match(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)):", message)
            broken = exception and exception.group(1).rsplit(".", 1)[-1] != "AssertionError"
            return (Status.BROKEN if broken else Status.FAILED), report
    for report in reports:
        if report.skipped:
            return Status.SKIPPED, report
    return Status.PASSED, None


def _crash_message(report: Any) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2])  # a skip: (path, lineno, reason)
    text = str(report.longreprtext or "")
    return text.strip().splitlines()[-1] if text.strip() else ""


def _sections(reports: Sequence[Any]) -> dict[str, str]:
    """Captured output over all phases, by kind (``stdout``, ``stderr``, ``log``), capped."""
    kinds: dict[str, list[tuple[str, str]]] = {}
    # A phase's report repeats the sections of the phases before it (pytest's way).
    seen: set[tuple[str, str]] = set()
    for report in reports:
        for title, content in report.sections:
            kind = ("stderr" if "stderr" in title else "log" if " log " in f" {title} "
                    else "stdout" if "stdout" in title else str(title))
            if str(content).strip() and (title, content) not in seen:
                seen.add((title, content))
                kinds.setdefault(kind, []).append((str(title), str(content)))
    out = {}
    for kind, parts in kinds.items():
        text = parts[0][1] if len(parts) == 1 else "\n".join(
            f"----- {title} -----\n{content}" for title, content in parts)
        if len(text) > SECTION_LIMIT:
            text = "[... output cut ...]\n" + text[-SECTION_LIMIT:]
        if text.strip():
            out[kind] = text
    return out


# --------------------------------------------------------------------------- the writer


class AllureWriter:
    """The host's one writer of Allure results into one results folder, for one target.

    What goes through it: results streamed by a container that has
    allure-pytest (:meth:`write_streamed`, checked and written as sent); one
    result per test built from the reports the stream carries when the
    container has no allure-pytest, and for a test that crashed its
    interpreter (:meth:`add_report`); an infrastructure fault
    (:meth:`write_infrastructure`); the attribution of a failure re-run on
    other boards (:meth:`mark_attribution`).  The folder is created and
    opened on the first write; ``folder=None`` writes nothing.
    """

    def __init__(self, folder: Path | None, target: str, *, board: str | None = None,
                 from_reports: bool = False) -> None:
        self.folder = folder
        self.target = target
        self.board = board
        #: Whether tests are written from their reports (the container has no allure-pytest).
        self.from_reports = from_reports
        #: Results and containers written, and streamed items refused.
        self.written = 0
        self.refused = 0
        self._logger: SafeFileLogger | None = None
        self._reports: dict[str, list[Any]] = {}
        self._forced: set[str] = set()

    @property
    def logger(self) -> SafeFileLogger:
        """The file logger of the folder, opened on first use."""
        if self._logger is None:
            assert self.folder is not None
            self._logger = SafeFileLogger(self.folder)
        return self._logger

    def close(self) -> None:
        """Close the folder's descriptor; the next write opens it again."""
        if self._logger is not None:
            self._logger.close()
            self._logger = None

    def _parameters(self, names: NodeNames | None = None) -> list[Any]:
        params = [Parameter(name="target", value=repr(self.target))]
        if self.board:
            params.append(Parameter(name="board", value=repr(self.board)))
        if names is not None and names.params:
            params.append(Parameter(name="id", value=names.params[1:-1]))
        return sorted(params, key=lambda p: str(p.name))

    # -- streamed by the container ---------------------------------------------------------
    def write_streamed(self, name: str, text: str) -> bool:
        """Write one result or container allure-pytest made in the container, as it was sent.

        Refused (False): no folder, a name that is not an Allure item's, text
        that is not a JSON object, a name already written.
        """
        if self.folder is None or not STREAMED_NAME.fullmatch(name):
            self.refused += 1
            return False
        data = text.encode("utf-8")
        try:
            parsed = json.loads(data)
        except (ValueError, RecursionError):
            parsed = None
        if not isinstance(parsed, dict):
            self.refused += 1
            return False
        try:
            self.logger.write_new(name, data)
        except OSError:
            self.refused += 1
            return False
        self.written += 1
        return True

    # -- built from the reports ------------------------------------------------------------
    def write_reports_of(self, nodeid: str) -> None:
        """Write ``nodeid``'s result from its reports, whatever the container has (a crash)."""
        self._forced.add(nodeid)

    def add_report(self, report: Any) -> None:
        """Take one phase report of a test; its result is written at its teardown's report."""
        if self.folder is None or not (self.from_reports or report.nodeid in self._forced):
            return
        reports = self._reports.setdefault(report.nodeid, [])
        reports.append(report)
        if report.when == "teardown":
            del self._reports[report.nodeid]
            self._forced.discard(report.nodeid)
            try:
                self.logger.report_result(self.result_from_reports(report.nodeid, reports))
            except OSError:  # the folder is a link, or gone: the run's reports go on
                self.refused += 1
                return
            self.written += 1

    def result_from_reports(self, nodeid: str, reports: Sequence[Any]) -> Any:
        """The ``TestResult`` of a test from its phase reports: name, status, duration,
        failure text, captured output (attachments) and parameters, named as allure-pytest
        names it."""
        names = NodeNames.of(nodeid)
        status, decider = _status(reports)
        details = None
        if decider is not None:
            trace = str(decider.longreprtext or "") if status != Status.SKIPPED else ""
            details = StatusDetails(message=_crash_message(decider), trace=trace or None)
        attachments = [attach_data(self.logger, kind, text, "text/plain", "txt")
                       for kind, text in _sections(reports).items()]
        params = self._parameters(names)
        starts = [r.start for r in reports if getattr(r, "start", None)]
        stops = [r.stop for r in reports if getattr(r, "stop", None)]
        start = min(starts) if starts else time.time()
        stop = max(stops) if stops else start
        return TestResult(
            uuid=str(uuid.uuid4()), name=names.name, fullName=names.full_name,
            historyId=md5(names.full_name, *(str(p.value) for p in params)),
            testCaseId=md5(names.full_name), status=status, statusDetails=details,
            stage="finished", start=int(start * 1000), stop=int(stop * 1000),
            labels=names.labels(), parameters=params, attachments=attachments,
            **_title_path(names))

    # -- infrastructure and attribution ----------------------------------------------------
    def write_infrastructure(self, kind: str, exit_code: int, message: str, *, trace: str = "",
                             when: float | None = None) -> Any:
        """Write the synthetic broken result of an infrastructure fault; returns it."""
        result = infrastructure_result(self.target, kind, exit_code, message, trace=trace,
                                       when=when)
        if self.folder is not None:
            self.logger.report_result(result)
            self.written += 1
        return result

    def mark_attribution(self, nodeid: str, label: str, detail: str,
                         logs: Sequence[tuple[str, Path]] = ()) -> bool:
        """Label ``nodeid``'s failed result with its attribution and attach the re-runs' logs.

        The result is read into allure-commons' model, changed there and
        written anew (the old file removed); False when there is none.
        """
        if self.folder is None or not self.folder.is_dir():
            return False
        try:
            return self._mark(NodeNames.of(nodeid), label, detail, logs)
        except OSError:  # the folder is a link, or gone
            return False

    def _mark(self, names: NodeNames, label: str, detail: str,
              logs: Sequence[tuple[str, Path]]) -> bool:
        for name in self.logger.names():
            if not name.endswith("-result.json"):
                continue
            result = _parse_result(self.logger.read(name))
            if (result is None or result.status not in (Status.FAILED, Status.BROKEN)
                    or not names.matches(result)):
                continue
            details = result.statusDetails or StatusDetails()
            details.message = f"hil attribution: {label} ({detail})\n{details.message or ''}"
            result.statusDetails = details
            result.labels.append(Label(name="tag", value=f"hil:{label}"))
            for title, path in logs:
                body = read_capped(path, LOG_LIMIT)
                if body is not None:
                    result.attachments.append(
                        attach_data(self.logger, title, body, "text/plain", "txt"))
            self.logger.report_result(result)
            self.logger.remove(name)
            return True
        return False


def _title_path(names: NodeNames) -> dict[str, Any]:
    # titlePath came with allure-commons 2.14; older ones have no such field.
    return {"titlePath": list(names.title_path)} if _HAS_TITLE_PATH else {}


def _parse_result(data: bytes | None) -> Any | None:
    if data is None:
        return None
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return result_from_json(parsed) if isinstance(parsed, dict) else None

__all__ = [
    "INFRA_PREFIX",
    "RICHER_PARTS",
    "AllureWriter",
    "NodeNames",
    "SafeFileLogger",
    "attach_data",
    "file_logger",
    "infrastructure_message",
    "infrastructure_result",
    "is_infrastructure_result",
    "read_capped",
    "read_result",
    "result_from_json",
    "result_target",
    "write_infrastructure_result",
]
