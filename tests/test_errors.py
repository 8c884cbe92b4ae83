"""The exit-code table: one enum, the same table in the README and in `hil --exit-codes`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hil.cli import main
from hil.errors import ERROR_KINDS, EXIT_CODE_MEANINGS, ExitCode, HilError, RunLostError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_is_the_enum() -> None:
    rows = re.findall(r"^\| (\d+) \| (\w+) \| (.+?) \|$", README.read_text(), re.MULTILINE)
    assert [(int(c), n, m) for c, n, m in rows] == [
        (int(code), code.name, EXIT_CODE_MEANINGS[code]) for code in ExitCode]


def test_infrastructure_codes_are_distinct_from_pytest_codes() -> None:
    infra = {cls.exit_code for cls in ERROR_KINDS.values()}
    assert len(infra) == len(ERROR_KINDS)
    assert all(code >= 10 for code in infra)


def test_cli_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--exit-codes"]) == 0
    out = capsys.readouterr().out
    assert " 19  RUN_LOST " in out and " 21  DEVICE_BUSY " in out


def test_error_is_one_line_with_target_command_and_exit_and_details_add_the_tail() -> None:
    err = HilError("build failed", target="jetson", command=["docker", "build", "."], exited=1,
                   tail="step 1\nstep 2\nboom")
    assert str(err) == "target 'jetson': build failed (`docker build .` exited 1)"
    assert err.details(2) == str(err) + "\nstep 2\nboom"


def test_run_lost_names_the_running_test() -> None:
    err = RunLostError("connection dropped", running_test="suites/test_a.py::test_b", target="j")
    assert str(err) == "target 'j': connection dropped while running suites/test_a.py::test_b"
    assert err.exit_code == ExitCode.RUN_LOST


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["nosuch"])
    assert exc.value.code == 2
    assert "invalid choice: 'nosuch'" in capsys.readouterr().err
