"""The event protocol between the worker (in the target) and the host: one module for both.

The worker writes one JSON object per line on its standard output: ``{"ev":
KIND, "n": SEQ, "t": TIME, ...fields}``.  :data:`EVENTS` names every kind and
the fields it must (or may) carry, with their JSON types; the worker emits
nothing else and the host (:mod:`hil.session.events`) accepts nothing else.
Standard library only: this file is mounted into every target with the worker.

What the host does not take on trust, because any process in the container can
write to the channel (``/proc/1/fd/1``):

* a line is at most :data:`MAX_LINE` bytes; :class:`LineSplitter` cuts the
  channel into lines in linear time and drops a longer one up to its newline;
* :func:`decode` turns a line into an object or None, whatever the bytes
  (invalid UTF-8, deep nesting, huge numbers), and :func:`problem` says what
  an object lacks to be an event of its kind;
* sequence numbers run ``last + 1``; the host fills a gap from the worker's
  record (``events.jsonl``) or refuses the event, so a forged jump cannot
  silence the stream;
* the final ``exit`` event carries a nonce the host made for this run and put
  in the results folder as :data:`NONCE_FILE`; the worker reads and removes
  that file before pytest imports any test.  Not an environment variable
  (``/proc/1/environ`` is readable by the container's processes) nor an
  argument (``/proc/1/cmdline``); not standard input either, which
  containers created by compose do not attach.  The tests run in the
  worker's own process, so code that reads the worker's memory could still
  find it: the nonce stops forged lines, not a test that attacks the worker;
  the host's cross-check of the claimed exit code with the reports it
  received covers what remains.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

#: Bumped whenever an event's meaning or required fields change; checked at ``hello``.
PROTOCOL = 2

#: The longest line the host accepts (bytes, without its newline).
MAX_LINE = 1 << 20

#: The file in the results folder that holds the run's nonce until the worker reads it.
NONCE_FILE = ".hil-nonce"

Check = Callable[[Any], bool]


def _int(value: Any) -> bool:
    return type(value) is int


def _num(value: Any) -> bool:
    return type(value) in (int, float)


def _bool(value: Any) -> bool:
    return type(value) is bool


def _str(value: Any) -> bool:
    return type(value) is str


def _dict(value: Any) -> bool:
    return type(value) is dict


def _strings(value: Any) -> bool:
    return type(value) is list and all(type(v) is str for v in value)


def _location(value: Any) -> bool:
    """pytest's ``(path, lineno or None, domain)``, as a JSON list."""
    return (type(value) is list and len(value) == 3 and type(value[0]) is str
            and (value[1] is None or type(value[1]) is int) and type(value[2]) is str)


def _phases(value: Any) -> bool:
    """A ``finish`` event's passed phases: ``[[when, duration, start, stop], ...]``."""
    return type(value) is list and all(
        type(p) is list and len(p) == 4 and p[0] in ("setup", "call", "teardown")
        and all(_num(x) for x in p[1:]) for p in value)


def _report(value: Any) -> bool:
    """A report as pytest's ``pytest_report_to_serializable`` gives it (the keys we read)."""
    if type(value) is not dict or type(value.get("nodeid")) is not str:
        return False
    kind = value.get("$report_type")
    if kind == "CollectReport":
        return value.get("outcome") in ("passed", "failed", "skipped")
    return (kind == "TestReport" and type(value.get("outcome")) is str
            and value.get("when") in ("setup", "call", "teardown")
            and _location(value.get("location")))


#: Every event kind: field -> (its check, whether it is required).  ``n`` and ``t`` are
#: common to all (see :data:`COMMON`).
EVENTS: dict[str, dict[str, tuple[Check, bool]]] = {
    "hello": {"protocol": (_int, True), "workers": (_int, False), "pytest": (_str, False),
              "python": (_str, False), "host": (_str, False), "pid": (_int, False),
              "report_keys": (_strings, False), "allure": (_bool, False),
              "target": (_str, False), "board": (_str, False)},
    "collectreport": {"report": (_report, True)},
    "deselected": {"nodeids": (_strings, True)},
    "collection_finish": {"nodeids": (_strings, True)},
    "logstart": {"nodeid": (_str, True), "location": (_location, True)},
    "logreport": {"report": (_report, True)},
    "finish": {"nodeid": (_str, True), "location": (_location, True),
               "keywords": (_dict, True), "passed": (_phases, True)},
    "logfinish": {"nodeid": (_str, True), "location": (_location, True)},
    "warning": {"message": (_str, True), "category": (_str, True), "filename": (_str, True),
                "lineno": (_int, True), "when": (_str, True), "nodeid": (_str, True)},
    "internalerror": {"text": (_str, True)},
    "allure": {"name": (_str, True), "text": (_str, True)},
    "sessionfinish": {"exitstatus": (_int, True), "duration": (_num, False),
                      "shouldfail": (_str, False), "shouldstop": (_str, False)},
    "exit": {"code": (_int, True), "nonce": (_str, False)},
}

#: Fields of every event: its sequence number (from 1) and the worker's wall clock.
COMMON: dict[str, tuple[Check, bool]] = {"n": (_int, True), "t": (_num, False)}


def decode(line: bytes) -> dict[str, Any] | None:
    """The JSON object on ``line``; None for anything else, never an exception."""
    if not line.lstrip().startswith(b"{"):
        return None  # not an event: cheap to tell, and no parser for 100,000 "["
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return value if type(value) is dict else None


def problem(event: dict[str, Any]) -> str | None:
    """What keeps ``event`` from being a well-formed event of its kind (None: nothing)."""
    kind = event.get("ev")
    fields = EVENTS.get(kind) if type(kind) is str else None
    if fields is None:
        return f"unknown event kind {str(kind)[:40]!r}"
    for name, (check, required) in (*COMMON.items(), *fields.items()):
        if name not in event:
            if required:
                return f"{kind} event without {name!r}"
        elif not check(event[name]):
            return f"{kind} event with a malformed {name!r}"
    if event["n"] < 1:
        return f"{kind} event with sequence number {event['n']}"
    return None


class LineSplitter:
    """Cuts a byte stream into lines of at most ``limit`` bytes, in linear time.

    Chunks of a line not ended yet are kept in a list and joined once, when its
    newline arrives.  A line past ``limit`` is dropped up to its newline and
    given as None, so the reader can count it.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._dropping = False

    def feed(self, data: bytes) -> Iterator[bytes | None]:
        """The complete lines in ``data`` (with what came before), None for a dropped one."""
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._keep(data[start:])
                return
            if self._dropping or self._size + end - start > self.limit:
                self._reset()
                yield None
            elif self._parts:
                self._parts.append(data[start:end])
                line = b"".join(self._parts)
                self._reset()
                yield line
            else:
                yield data[start:end]
            start = end + 1

    def _keep(self, tail: bytes) -> None:
        if self._dropping or not tail:
            return
        self._size += len(tail)
        if self._size > self.limit:
            self._parts.clear()
            self._dropping = True
        else:
            self._parts.append(tail)

    def _reset(self) -> None:
        self._parts.clear()
        self._size = 0
        self._dropping = False

    def rest(self) -> bytes | None:
        """What came after the last newline (None when it was too long); forgets it."""
        line = None if self._dropping else b"".join(self._parts)
        self._reset()
        return line


__all__ = ["COMMON", "EVENTS", "MAX_LINE", "NONCE_FILE", "PROTOCOL", "LineSplitter", "decode",
           "problem"]
