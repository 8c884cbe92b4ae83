"""The worker's Allure logger produces the very bytes allure-commons' file logger writes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from hil.session.events import EventFeeder
from hil.worker import AllureResultsLogger, EventStream

allure_commons = pytest.importorskip("allure_commons")
from allure_commons import model2  # noqa: E402
from allure_commons.logger import AllureFileLogger  # noqa: E402
from allure_commons.model2 import Label, Parameter, Status, StatusDetails  # noqa: E402


def sample_items() -> list[object]:
    # model2's classes are named Test*: used through the module so pytest does not collect them.
    result = model2.TestResult(name="test_ünïcode[br[ack]et]", uuid="u-1", fullName="a.b#test", start=1, stop=2,
                        status=Status.FAILED, historyId="h", testCaseId="t",
                        statusDetails=StatusDetails(message="assert 1 == 2 \u2013 \"quoted\"\n", trace="tb\n"))
    result.labels += [Label(name="suite", value="s"), Label(name="tag", value="日本")]
    result.parameters.append(Parameter(name="target", value="'box'", excluded=False))
    result.steps.append(model2.TestStepResult(name="step", status=Status.PASSED, start=1, stop=2))
    result.steps[0].steps.append(model2.TestStepResult(name="inner", status=Status.SKIPPED,
                                                       parameters=[Parameter(name="n", value="")]))
    result.steps[0].attachments.append(model2.Attachment(name="log", source="x-attachment.txt",
                                                         type="text/plain"))
    result.statusDetails.flaky = False  # type: ignore[union-attr]
    result.parameters.append(Parameter(name="pair", value=("a", 1.5)))  # type: ignore[arg-type]
    container = model2.TestResultContainer(uuid="c-1", children=["u-1"], start=1, stop=2)
    return [result, container]


@pytest.mark.parametrize("indent", ["", "1"], ids=["compact", "ALLURE_INDENT_OUTPUT"])
def test_faster_writer_writes_the_same_bytes_as_allure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, indent: str
) -> None:
    monkeypatch.setenv("ALLURE_INDENT_OUTPUT", indent)
    original, faster = AllureFileLogger(tmp_path / "a"), AllureResultsLogger(str(tmp_path / "b"))
    result, container = sample_items()
    for logger in (original, faster):
        logger.report_result(result)
        logger.report_container(container)
    ours = sorted(p.read_bytes() for p in (tmp_path / "b").iterdir())
    assert ours == sorted(p.read_bytes() for p in (tmp_path / "a").iterdir())
    assert len(ours) == 2 and not list((tmp_path / "b").glob("*.tmp"))


@pytest.mark.parametrize("indent", ["", "1"], ids=["compact", "ALLURE_INDENT_OUTPUT"])
def test_results_streamed_to_the_controller_are_written_as_allure_writes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pytestconfig: pytest.Config, indent: str
) -> None:
    monkeypatch.setenv("ALLURE_INDENT_OUTPUT", indent)
    original = AllureFileLogger(tmp_path / "a")
    channel, copy = io.StringIO(), io.StringIO()
    stream = EventStream(channel, copy, allure_events=True)
    ours_logger = AllureResultsLogger(str(tmp_path / "unused"), sink=stream.send_allure)
    result, container = sample_items()
    for logger in (original, ours_logger):
        logger.report_result(result)
        logger.report_container(container)
    stream.send("logstart", nodeid="a.py::t", location=["a.py", 0, "t"], flush=False)
    stream.flush()
    assert not list((tmp_path / "unused").iterdir())  # nothing written on the worker's side
    # events.jsonl records them too: a killed run's controller recovers them from it.
    assert [json.loads(line)["ev"] for line in copy.getvalue().splitlines()] == [
        "allure", "allure", "logstart"]

    feeder = EventFeeder(pytestconfig, None, allure_dir=tmp_path / "b")  # type: ignore[arg-type]
    for line in [*filter(None, channel.getvalue().splitlines())]:
        if json.loads(line)["ev"] == "allure":
            feeder.feed(line.encode() + b"\n")
    ours = sorted(p.read_bytes() for p in (tmp_path / "b").iterdir())
    assert ours == sorted(p.read_bytes() for p in (tmp_path / "a").iterdir())
    assert len(ours) == 2 and feeder.allure_results == 2


@pytest.mark.parametrize("name", ["../escape-result.json", ".hidden-result.json", ""])
def test_a_streamed_result_never_lands_outside_its_folder(
    tmp_path: Path, pytestconfig: pytest.Config, name: str
) -> None:
    feeder = EventFeeder(pytestconfig, None, allure_dir=tmp_path / "out")  # type: ignore[arg-type]
    feeder.feed(json.dumps({"ev": "allure", "name": name, "n": 1,
                            "text": '{"name": "t"}'}).encode() + b"\n")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape-result.json").exists()
    assert feeder.stray and "cannot be written" in feeder.stray[0]


def test_a_result_event_without_text_is_kept_as_stray_output(
    tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    feeder = EventFeeder(pytestconfig, None, allure_dir=tmp_path / "out")  # type: ignore[arg-type]
    feeder.feed(json.dumps({"ev": "allure", "name": "a-result.json", "n": 1,
                            "text": {"name": "t"}}).encode() + b"\n")
    assert not (tmp_path / "out").exists()
    assert feeder.stray == ["hil: a malformed event was ignored (allure event with a malformed "
                            "'text')"]


def test_attachments_are_written_as_allure_writes_them(tmp_path: Path) -> None:
    source = tmp_path / "log.txt"
    source.write_text("captured\n")
    original, ours = AllureFileLogger(tmp_path / "a"), AllureResultsLogger(str(tmp_path / "b"))
    for logger in (original, ours):
        logger.report_attached_file(source, "f-attachment.txt")
        logger.report_attached_data("text ü", "d-attachment.txt")
    for name in ("f-attachment.txt", "d-attachment.txt"):
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()
