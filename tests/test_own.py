"""pytest-hil removes only folders it marked as its own (or pure Allure results folders)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report import run_local

from hil.errors import ConfigError
from hil.own import OWN_MARK, is_own, mark_own
from hil.session.runfolder import set_aside


def test_set_aside_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"refusing to replace the Allure results folder "
                                          f"{checkout}: pytest-hil did not make it"):
        set_aside(checkout)
    assert (checkout / "notes.txt").read_text(encoding="utf-8") == "mine"
    link = tmp_path / "link"
    link.symlink_to(checkout)
    with pytest.raises(ConfigError):
        set_aside(link)


def test_set_aside_moves_its_own_and_plain_allure_results(tmp_path: Path) -> None:
    ours = tmp_path / "results"
    mark_own(ours)
    (ours / "x.txt").write_text("kept aside", encoding="utf-8")
    assert set_aside(ours) and not ours.exists()
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "0a1b-result.json").write_text("{}", encoding="utf-8")
    (plain / "environment.properties").write_text("", encoding="utf-8")
    assert is_own(plain)
    stale = set_aside(plain)
    assert [p.name.startswith(".plain.old-") for p in stale] == [True]


@pytest.mark.usefixtures("node_for_allure3")
def test_hil_report_into_the_checkout_is_refused_and_removes_nothing(
        report_project: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from hil.cli import main

    results = report_project / "results"
    run_local(report_project, "local-a", results)
    monkeypatch.chdir(report_project)
    assert main(["report", str(results), "-o", "."]) == 4
    assert f"refusing to replace the report folder {report_project}:" in capsys.readouterr().err
    assert (report_project / "test_demo.py").is_file()
    assert main(["report", str(results), "-o", "html"]) == 0
    assert (report_project / "html" / OWN_MARK).is_file()
    assert main(["report", str(results), "-o", "html"]) == 0  # its own: replaced


def test_attachments_naming_files_outside_the_results_folder_are_not_staged(
        tmp_path: Path) -> None:
    import json

    from hil.progress import Progress
    from hil.report.html import Stager

    secret = tmp_path / "id_ed25519"
    secret.write_text("PRIVATE KEY", encoding="utf-8")
    results = tmp_path / "results"
    results.mkdir()
    (results / "ok-attachment.txt").write_text("log", encoding="utf-8")
    (results / "link-attachment.txt").symlink_to(secret)

    def attachment(source: str) -> dict[str, str]:
        return {"name": source, "source": source, "type": "text/plain"}

    result = {"uuid": "r1", "name": "test_x", "fullName": "t.py#test_x", "status": "passed",
              "labels": [{"name": "target", "value": "local-a"}],
              "attachments": [attachment("ok-attachment.txt"), attachment(str(secret)),
                              attachment("../id_ed25519")],
              "steps": [{"name": "s", "attachments": [attachment("link-attachment.txt")]}]}
    (results / "r1-result.json").write_text(json.dumps(result), encoding="utf-8")
    container = {"uuid": "c1", "children": ["r1"],
                 "befores": [{"name": "f", "attachments": [attachment("../id_ed25519")]}]}
    (results / "c1-container.json").write_text(json.dumps(container), encoding="utf-8")
    stage = tmp_path / "stage"
    Stager(stage, Progress(quiet=True)).add_folder(results)
    staged = {p.name: p.read_text(encoding="utf-8") for p in stage.iterdir()}
    assert not any("PRIVATE KEY" in text for text in staged.values())
    sources = [a["source"] for name, text in staged.items() if name.endswith("-result.json")
               for a in json.loads(text)["attachments"]]
    assert sources == ["ok-attachment.txt"]
    steps = [json.loads(text)["steps"] for name, text in staged.items()
             if name.endswith("-result.json")]
    assert steps[0][0].get("attachments", []) == []
    assert json.loads(staged["c1-container.json"])["befores"][0]["attachments"] == []


@pytest.mark.usefixtures("node_for_allure3")
def test_allure3_installs_exactly_the_shipped_lock_without_install_scripts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    from importlib import resources

    from hil.progress import Progress
    from hil.report.allure3 import ALLURE3_VERSION, allure3_prefix, install_allure3

    monkeypatch.setenv("HIL_TOOLS_DIR", str(tmp_path / "tools"))
    engine = install_allure3(tmp_path, Progress(quiet=True))
    assert engine.version == ALLURE3_VERSION
    prefix = allure3_prefix(tmp_path, ALLURE3_VERSION)
    shipped = json.loads((resources.files("hil") / "data" / "allure3-package-lock.json")
                         .read_text(encoding="utf-8"))["packages"]
    installed = json.loads((prefix / "node_modules" / ".package-lock.json")
                           .read_text(encoding="utf-8"))["packages"]
    assert {name: entry["integrity"] for name, entry in installed.items()} == \
        {name: entry["integrity"] for name, entry in shipped.items() if name}
