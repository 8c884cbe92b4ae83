"""The host's one Allure writer: results built from real pytest reports, streamed results
checked, attribution on the model, and no link in the results folder ever followed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from allure_commons import model2
from allure_commons.logger import AllureFileLogger
from allure_commons.model2 import Label, Status, StatusDetails

from hil.report.allure import AllureWriter, NodeNames, SafeFileLogger, read_result

pytest_plugins = ["pytester"]

TESTS = """
import pytest

def test_passes():
    print("quiet")

def test_fails():
    print("the value was 41")
    assert 41 == 42

def test_breaks():
    raise RuntimeError("helper crashed")

@pytest.fixture
def bad_setup():
    raise OSError("no board")

def test_setup_errors(bad_setup):
    pass

def test_skips():
    pytest.skip("not today")

class TestGroup:
    @pytest.mark.parametrize("n", [1, 2])
    def test_param(self, n):
        assert n
"""


def results_of(folder: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in folder.glob("*-result.json"):
        data = json.loads(path.read_text())
        found[data["name"]] = data
    return found


def attachment_text(folder: Path, result: dict[str, Any], name: str) -> str:
    source = next(a["source"] for a in result.get("attachments", []) if a["name"] == name)
    return (folder / source).read_text()


def test_results_built_from_real_reports_have_status_failure_output_and_parameters(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(test_demo=TESTS)
    rec = pytester.inline_run("-p", "no:cacheprovider", "-p", "no:labgrid", "-p", "no:allure_pytest")
    writer = AllureWriter(tmp_path / "out", "sim-colima", board="board-2", from_reports=True)
    for report in rec.getreports("pytest_runtest_logreport"):
        writer.add_report(report)
    writer.close()
    results = results_of(tmp_path / "out")
    assert sorted(results) == ["test_breaks", "test_fails", "test_param[1]", "test_param[2]",
                               "test_passes", "test_setup_errors", "test_skips"]
    assert writer.written == 7
    status = {name: r["status"] for name, r in results.items()}
    assert status == {"test_passes": "passed", "test_fails": "failed", "test_breaks": "broken",
                      "test_setup_errors": "broken", "test_skips": "skipped",
                      "test_param[1]": "passed", "test_param[2]": "passed"}
    failed = results["test_fails"]
    assert failed["statusDetails"]["message"] == "assert 41 == 42"
    assert "def test_fails():" in failed["statusDetails"]["trace"]
    assert attachment_text(tmp_path / "out", failed, "stdout") == "the value was 41\n"
    assert results["test_breaks"]["statusDetails"]["message"] == "RuntimeError: helper crashed"
    assert results["test_skips"]["statusDetails"]["message"] == "Skipped: not today"
    assert failed["fullName"] == "test_demo#test_fails"
    assert failed["stop"] >= failed["start"] > 0
    assert {"name": "target", "value": "'sim-colima'"} in failed["parameters"]
    assert {"name": "board", "value": "'board-2'"} in failed["parameters"]
    param = results["test_param[2]"]
    assert param["fullName"] == "test_demo.TestGroup#test_param"
    assert {"name": "id", "value": "2"} in param["parameters"]
    assert param["historyId"] != results["test_param[1]"]["historyId"]
    assert {"name": "subSuite", "value": "TestGroup"} in param["labels"]


def test_without_from_reports_only_a_crashed_test_is_built_from_its_reports(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(test_demo=TESTS)
    rec = pytester.inline_run("-p", "no:cacheprovider", "-p", "no:labgrid", "-k", "fails or passes")
    writer = AllureWriter(tmp_path / "out", "box")
    writer.write_reports_of("test_demo.py::test_fails")
    for report in rec.getreports("pytest_runtest_logreport"):
        writer.add_report(report)
    assert sorted(results_of(tmp_path / "out")) == ["test_fails"]


def test_the_safe_logger_writes_the_bytes_allure_commons_writes(tmp_path: Path) -> None:
    result = model2.TestResult(uuid="u", name="test_ü", status=Status.FAILED, start=1, stop=2,
                               statusDetails=StatusDetails(message="m\n"),
                               labels=[Label(name="suite", value="日本")])
    AllureFileLogger(str(tmp_path / "a")).report_result(result)
    ours = SafeFileLogger(tmp_path / "b")
    ours.report_result(result)
    ours.close()
    [theirs] = (tmp_path / "a").iterdir()
    [mine] = (tmp_path / "b").iterdir()
    assert mine.read_bytes() == theirs.read_bytes()


def test_no_link_in_the_results_folder_is_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("keep")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The folder itself planted as a link (the container can write the run folder).
    (tmp_path / "linked").symlink_to(elsewhere)
    writer = AllureWriter(tmp_path / "linked", "box")
    assert not writer.write_streamed("a-result.json", '{"name": "t"}')
    with pytest.raises(OSError):
        writer.write_infrastructure("unreachable", 10, "board down")
    assert not list(elsewhere.iterdir())
    # A file name planted as a link to a host file: never written through, never replaced.
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "b-result.json").symlink_to(secret)
    writer = AllureWriter(folder, "box")
    assert not writer.write_streamed("b-result.json", '{"name": "t"}')
    assert secret.read_text() == "keep"
    assert read_result(folder / "b-result.json") is None  # read back: not through the link
    assert writer.write_streamed("c-result.json", '{"name": "t"}')
    assert not writer.write_streamed("c-result.json", '{"name": "again"}')  # never overwritten
    assert json.loads((folder / "c-result.json").read_text()) == {"name": "t"}
    for name, text in [("../d-result.json", "{}"), ("d-attachment.txt", "{}"),
                       ("e-result.json", "[1]"), ("f-result.json", "{not json")]:
        assert not writer.write_streamed(name, text)
    assert sorted(os.listdir(folder)) == ["b-result.json", "c-result.json"]


def test_attribution_is_set_on_the_model_and_the_old_file_replaced(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(test_demo=TESTS)
    rec = pytester.inline_run("-p", "no:cacheprovider", "-p", "no:labgrid", "-k", "fails or passes")
    folder = tmp_path / "out"
    writer = AllureWriter(folder, "board-1", from_reports=True)
    for report in rec.getreports("pytest_runtest_logreport"):
        writer.add_report(report)
    log = tmp_path / "pytest.log"
    log.write_text("re-run output\n")
    assert writer.mark_attribution("test_demo.py::test_fails", "flaky", "passed when re-run",
                                   [("re-run on board-1 (pytest.log)", log)])
    assert not writer.mark_attribution("test_demo.py::test_passes", "flaky", "-")
    results = results_of(folder)
    assert len(list(folder.glob("*-result.json"))) == 2
    failed = results["test_fails"]
    assert failed["statusDetails"]["message"] == ("hil attribution: flaky (passed when re-run)\n"
                                                  "assert 41 == 42")
    assert {"name": "tag", "value": "hil:flaky"} in failed["labels"]
    assert attachment_text(folder, failed, "re-run on board-1 (pytest.log)") == "re-run output\n"


def test_names_are_allure_pytests() -> None:
    names = NodeNames.of("suites/tier1/test_x.py::TestA::TestB::test_b[cpu-1]")
    assert (names.full_name, names.params, names.name) == (
        "suites.tier1.test_x.TestA.TestB#test_b", "[cpu-1]", "test_b[cpu-1]")
    assert names.title_path == ("suites", "tier1", "test_x.py", "TestA", "TestB")
    assert {(label.name, label.value) for label in names.labels()} >= {
        ("parentSuite", "suites.tier1"), ("suite", "test_x"), ("subSuite", "TestA > TestB"),
        ("package", "suites.tier1.test_x")}
