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

import json
import time
import uuid
from collections.abc import Mapping
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
    """The ``TestResult`` of a ``*-result.json`` file, or None when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result_from_json(data) if isinstance(data, dict) else None


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
    result = infrastructure_result(target, kind, exit_code, message, trace=trace, when=when)
    file_logger(folder).report_result(result)
    return result


def file_logger(folder: Path, *, clean: bool = False) -> Any:
    """allure-commons' ``AllureFileLogger`` writing into ``folder`` (made when missing)."""
    logger: Any = AllureFileLogger  # the library is untyped
    return logger(str(folder), clean=clean)


def attach_data(logger: Any, name: str, body: bytes | str, mime: str, ext: str) -> Any:
    """Write one attachment file through ``logger``; returns its ``Attachment`` entry."""
    source = ATTACHMENT_PATTERN.format(prefix=uuid.uuid4(), ext=ext)
    logger.report_attached_data(body=body, file_name=source)
    return Attachment(name=name, source=source, type=mime)


__all__ = [
    "INFRA_PREFIX", "attach_data", "file_logger", "infrastructure_message", "infrastructure_result",
    "is_infrastructure_result", "read_result", "result_from_json", "result_target",
    "write_infrastructure_result",
]
