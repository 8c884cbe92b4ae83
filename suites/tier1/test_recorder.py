"""Flight-data recorder: one schema per kind, validated on write, round-trips through JSON lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from onboard.diag.tegrastats import TegrastatsSample, parse_line
from onboard.errors import RecordSchemaError
from onboard.recorder import SCHEMAS, FieldSpec, FlightRecorder, Record, read_records

pytestmark = pytest.mark.tier1

SAMPLE_VALUES: dict[str, Any] = {
    "str": "value",
    "int": 3,
    "float": 1.5,
    "bool": True,
    "list": ["a", "b"],
    "dict": {"k": 1},
}
TEGRASTATS = (
    "11-22-2026 10:29:36 RAM 2147/7620MB (lfb 2x4MB) SWAP 1476/3810MB (cached 1MB) "
    "CPU [0%@729,0%@729,off,off,0%@729,0%@729] GR3D_FREQ 0% cpu@47.687C soc2@46.718C "
    "gpu@48.625C tj@48.625C VDD_IN 4556mW/4556mW VDD_CPU_GPU_CV 483mW/483mW "
    "VDD_SOC 1451mW/1451mW"
)


def _valid(kind: str) -> dict[str, Any]:
    return {name: SAMPLE_VALUES[spec.type] for name, spec in SCHEMAS[kind].fields.items()}


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_every_kind_round_trips_through_the_file(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "flight.jsonl"
    with FlightRecorder(path) as recorder:
        written = recorder.write(kind, **_valid(kind))
    (read,) = read_records(path)
    assert read == Record(kind=kind, seq=written.seq, time=written.time, data=_valid(kind))
    assert json.loads(path.read_text())["kind"] == kind


def test_records_keep_their_order_and_sequence_numbers(tmp_path: Path) -> None:
    path = tmp_path / "flight.jsonl"
    with FlightRecorder(path) as recorder:
        recorder.write("fallback step", failed="tensorrt", reason="not installed", next="onnxruntime")
        recorder.write("telemetry", sample=parse_line(TEGRASTATS).to_dict())
        recorder.write("fallback step", failed="torch-fp16", reason="no CUDA", next=None)
    records = read_records(path)
    assert [r.seq for r in records] == [0, 1, 2]
    assert [r.kind for r in records] == ["fallback step", "telemetry", "fallback step"]
    assert records[2].data["next"] is None
    sample = TegrastatsSample.from_dict(records[1].data["sample"])
    assert sample == parse_line(TEGRASTATS)


@pytest.mark.parametrize(
    ("kind", "data", "message"),
    [
        ("no such kind", {}, "unknown record kind 'no such kind'"),
        ("fallback step", {"failed": "tensorrt", "next": None}, "missing field 'reason'"),
        ("fallback step", {"failed": "x", "reason": "y", "extra": 1}, r"unknown field\(s\) extra"),
        ("fallback step", {"failed": 7, "reason": "y"}, "field 'failed' must be str, got int"),
        ("fallback step", {"failed": None, "reason": "y"}, "field 'failed' must not be null"),
        (
            "cpu fallback",
            {"runtime": "o", "requested_providers": [], "active_providers": [], "refused": 1},
            "field 'refused' must be bool",
        ),
        (
            "latency",
            {"runtime": "r", "label": "l", "phase": "p", "samples": True, "p50_ms": 1.0, "p95_ms": 2.0},
            "field 'samples' must be int, got bool",
        ),
        (
            "thermal",
            {"source": "s", "temperatures_c": {"a": object()}, "max_c": None},
            "not serializable as JSON",
        ),
    ],
)
def test_an_invalid_record_is_refused_on_write(kind: str, data: dict[str, Any], message: str) -> None:
    recorder = FlightRecorder()
    with pytest.raises(RecordSchemaError, match=message):
        recorder.write(kind, **data)
    assert recorder.records == ()


def test_a_float_field_accepts_an_int_but_not_a_string() -> None:
    spec = FieldSpec("float")
    spec.check("k", "f", 3)
    with pytest.raises(RecordSchemaError):
        spec.check("k", "f", "3")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"seq": 0, "time": 1.0}', "has no kind"),
        ('{"kind": "telemetry", "time": 1.0, "sample": {}}', "seq and time are required"),
        ('{"kind": "telemetry", "seq": 0, "time": 1.0}', "missing field 'sample'"),
    ],
)
def test_a_bad_line_is_refused_on_read_with_its_line_number(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "flight.jsonl"
    good = Record(kind="telemetry", seq=0, time=1.0, data={"sample": {}}).to_json()
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(RecordSchemaError, match=rf"flight.jsonl:3: .*{message}"):
        read_records(path)


def test_a_recorder_without_a_path_keeps_records_in_memory() -> None:
    recorder = FlightRecorder()
    recorder.write("thermal", source="none", temperatures_c={}, max_c=None)
    assert recorder.of_kind("thermal")[0].data["source"] == "none"
    recorder.close()
    recorder.close()  # idempotent
