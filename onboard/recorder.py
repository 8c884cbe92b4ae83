"""The flight-data recorder: typed records written as JSON lines.

Each record has a ``kind`` and the fields of that kind's schema.  A record is
validated when it is written (and again when it is read back), so a bad field
fails where it is produced, not in the post-flight analysis.  One line of the
file is one JSON object::

    {"kind": "cpu fallback", "seq": 3, "time": 1763800000.12, "runtime": ...}
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from onboard.errors import RecordSchemaError

#: JSON types a field may hold, by name.
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list, tuple),
    "dict": (dict,),
}


@dataclass(frozen=True)
class FieldSpec:
    """One field of a record schema: its JSON type, and whether it may be absent or null."""

    type: str
    required: bool = True
    nullable: bool = False

    def check(self, kind: str, name: str, value: Any) -> None:
        """Raise :class:`RecordSchemaError` unless ``value`` fits this field."""
        if value is None:
            if self.nullable:
                return
            raise RecordSchemaError(f"record {kind!r}: field {name!r} must not be null")
        allowed = _TYPES[self.type]
        # bool is an int in Python; keep the two apart in records.
        if isinstance(value, bool) and self.type != "bool":
            allowed = ()
        if not isinstance(value, allowed):
            raise RecordSchemaError(
                f"record {kind!r}: field {name!r} must be {self.type}, got {type(value).__name__} {value!r}"
            )


@dataclass(frozen=True)
class RecordSchema:
    """The fields one kind of record carries."""

    kind: str
    fields: Mapping[str, FieldSpec]
    description: str = ""

    def validate(self, data: Mapping[str, Any]) -> None:
        """Raise :class:`RecordSchemaError` for a missing, unknown or mistyped field."""
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise RecordSchemaError(f"record {self.kind!r}: unknown field(s) {', '.join(unknown)}")
        for name, spec in self.fields.items():
            if name not in data:
                if spec.required:
                    raise RecordSchemaError(f"record {self.kind!r}: missing field {name!r}")
                continue
            spec.check(self.kind, name, data[name])


def _schema(kind: str, description: str, **fields: FieldSpec) -> RecordSchema:
    return RecordSchema(kind=kind, fields=fields, description=description)


_S = FieldSpec
_OPT_STR = FieldSpec("str", required=False, nullable=True)
_NULL_STR = FieldSpec("str", nullable=True)

#: Every kind of record the onboard software writes, by kind name.
SCHEMAS: dict[str, RecordSchema] = {
    s.kind: s
    for s in (
        _schema(
            "runtime selected",
            "the factory built a runtime",
            runtime=_S("str"),
            label=_S("str"),
            chain=_S("list"),
            fallback_from=_OPT_STR,
        ),
        _schema(
            "fallback step",
            "a runtime of the fallback chain was unavailable; the factory moved on",
            failed=_S("str"),
            reason=_S("str"),
            next=_OPT_STR,
        ),
        _schema(
            "fallback activated",
            "the first inference of a runtime that was built as a fallback",
            runtime=_S("str"),
            label=_S("str"),
            fallback_from=_S("str"),
            model_name=_S("str"),
            reason=_NULL_STR,
        ),
        _schema(
            "cpu fallback",
            "ONNX Runtime runs (or would run) on the CPU execution provider only",
            runtime=_S("str"),
            requested_providers=_S("list"),
            active_providers=_S("list"),
            refused=_S("bool"),
            model_name=_NULL_STR,
            reason=_S("str"),
        ),
        _schema(
            "tensorrt ep refused",
            "ONNX Runtime was asked for the TensorRT EP (it is listed) but the session runs without it",
            runtime=_S("str"),
            model_name=_S("str"),
            requested_providers=_S("list"),
            active_providers=_S("list"),
            reason=_S("str"),
        ),
        _schema(
            "engine staged",
            "a cached TensorRT engine was put into the TensorRT EP's cache folder",
            runtime=_S("str"),
            source=_S("str"),
            target=_S("str"),
            how=_S("str"),
        ),
        _schema(
            "engine built",
            "an engine (or session cache) was compiled",
            runtime=_S("str"),
            path=_S("str"),
            key=_S("dict"),
            seconds=_S("float"),
        ),
        _schema(
            "engine cache hit",
            "a compiled engine was found in the cache",
            runtime=_S("str"),
            path=_S("str"),
            key=_S("dict"),
        ),
        _schema(
            "engine refused",
            "a cached engine built for another host or setting was refused",
            runtime=_S("str"),
            path=_S("str"),
            differences=_S("dict"),
        ),
        _schema(
            "inference error",
            "a runtime raised while compiling, loading or running",
            runtime=_S("str"),
            stage=_S("str"),
            error=_S("str"),
        ),
        _schema(
            "latency",
            "a latency measurement (milliseconds) next to its product budget",
            runtime=_S("str"),
            label=_S("str"),
            phase=_S("str"),
            samples=_S("int"),
            p50_ms=_S("float"),
            p95_ms=_S("float"),
            budget_ms=FieldSpec("float", required=False, nullable=True),
        ),
        _schema(
            "thermal",
            "a thermal-state reading",
            source=_S("str"),
            temperatures_c=_S("dict"),
            max_c=FieldSpec("float", nullable=True),
        ),
        _schema(
            "telemetry",
            "one parsed tegrastats sample (TegrastatsSample.to_dict())",
            sample=_S("dict"),
        ),
    )
}


@dataclass(frozen=True)
class Record:
    """One validated flight-data record."""

    kind: str
    seq: int
    time: float
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """This record as one JSON line (no trailing newline)."""
        return json.dumps(
            {"kind": self.kind, "seq": self.seq, "time": self.time, **self.data},
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, line: str) -> Record:
        """Parse and validate one JSON line written by :meth:`to_json`."""
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordSchemaError(f"record line is not JSON: {line[:120]!r}") from exc
        if not isinstance(obj, dict):
            raise RecordSchemaError(f"record line is not a JSON object: {line[:120]!r}")
        kind, seq, stamp = obj.pop("kind", None), obj.pop("seq", None), obj.pop("time", None)
        if not isinstance(kind, str):
            raise RecordSchemaError(f"record line has no kind: {line[:120]!r}")
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(stamp, (int, float)):
            raise RecordSchemaError(f"record {kind!r}: seq and time are required")
        validate(kind, obj)
        return cls(kind=kind, seq=seq, time=float(stamp), data=obj)


def validate(kind: str, data: Mapping[str, Any]) -> None:
    """Validate ``data`` against the schema of ``kind``; raise :class:`RecordSchemaError`."""
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise RecordSchemaError(f"unknown record kind {kind!r}; known: {', '.join(sorted(SCHEMAS))}")
    schema.validate(data)
    try:
        json.dumps(dict(data))
    except (TypeError, ValueError) as exc:
        raise RecordSchemaError(f"record {kind!r}: not serializable as JSON: {exc}") from exc


class FlightRecorder:
    """Writes validated records as JSON lines to a file, and keeps them in memory.

    Without a path it only keeps them in memory (useful in tests and on hosts
    with a read-only filesystem).  Thread-safe; each line is flushed at once so
    a crash loses at most the record being written.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._records: list[Record] = []
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")

    def write(self, kind: str, **data: Any) -> Record:
        """Validate and append one record of ``kind``; return it."""
        validate(kind, data)
        with self._lock:
            record = Record(kind=kind, seq=len(self._records), time=time.time(), data=data)
            self._records.append(record)
            if self._file is not None:
                self._file.write(record.to_json() + "\n")
                self._file.flush()
        return record

    @property
    def records(self) -> tuple[Record, ...]:
        """Every record written so far, in order."""
        with self._lock:
            return tuple(self._records)

    def of_kind(self, kind: str) -> list[Record]:
        """The records of one kind, in order."""
        return [r for r in self.records if r.kind == kind]

    def close(self) -> None:
        """Close the file (idempotent); the in-memory records stay readable."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> FlightRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: Path | str) -> list[Record]:
    """Read back and validate every record of a JSON-lines file."""
    return list(iter_records(path))


def iter_records(path: Path | str) -> Iterator[Record]:
    """Yield the validated records of a JSON-lines file; a bad line names its number."""
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield Record.from_json(line)
            except RecordSchemaError as exc:
                raise RecordSchemaError(f"{path}:{number}: {exc}") from exc
