"""The exit-code table: one enum, the same table in the README and in `hil --exit-codes`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import hil.report.allure3
import hil.sim
from hil.cli import main
from hil.errors import (
    ERROR_KINDS,
    EXIT_CODE_MEANINGS,
    ExitCode,
    HilError,
    RunLostError,
    all_error_classes,
)
from hil.ssh.connection import SshConnection, resolve_endpoint

#: Every error class of pytest-hil and the exit code it ends a session with.
CODES = {
    "HilError": ExitCode.INTERNAL_ERROR,
    "ConfigError": ExitCode.USAGE_ERROR,
    "UnreachableError": ExitCode.UNREACHABLE,
    "AuthRefusedError": ExitCode.AUTH_REFUSED,
    "HostKeyError": ExitCode.HOST_KEY_REJECTED,
    "EngineDownError": ExitCode.ENGINE_DOWN,
    "RuntimeMissingError": ExitCode.NVIDIA_RUNTIME_MISSING,
    "DiskLowError": ExitCode.DISK_LOW,
    "TargetUnhealthyError": ExitCode.TARGET_UNHEALTHY,
    "BuildFailedError": ExitCode.IMAGE_BUILD_FAILED,
    "SyncFailedError": ExitCode.SYNC_FAILED,
    "RunLostError": ExitCode.RUN_LOST,
    "ConnectionLostError": ExitCode.RUN_LOST,
    "RunTimedOutError": ExitCode.RUN_TIMED_OUT,
    "CommandTimedOutError": ExitCode.RUN_TIMED_OUT,
    "DeviceBusyError": ExitCode.DEVICE_BUSY,
    "LeaseFailedError": ExitCode.DEVICE_BUSY,
    "ServiceFailedError": ExitCode.SERVICE_FAILED,
    "ContainerRemoveError": ExitCode.CONTAINER_FAILED,
    "HoldFailedError": ExitCode.CONTAINER_FAILED,
    "ReportToolError": ExitCode.REPORT_FAILED,
    "ReportToolMissingError": ExitCode.USAGE_ERROR,
    "NoResultsError": ExitCode.USAGE_ERROR,
    "RigError": ExitCode.RIG_FAILED,
    "LabError": ExitCode.UNREACHABLE,
    "LabUnavailableError": ExitCode.USAGE_ERROR,
    "NotReadyError": ExitCode.RIG_FAILED,
    "PoolSizeError": ExitCode.USAGE_ERROR,
    "RigUnsupportedError": ExitCode.USAGE_ERROR,
}

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_is_the_enum() -> None:
    rows = re.findall(r"^\| (\d+) \| (\w+) \| (.+?) \|$", README.read_text(), re.MULTILINE)
    assert [(int(c), n, m) for c, n, m in rows] == [
        (int(code), code.name, EXIT_CODE_MEANINGS[code]) for code in ExitCode]


def test_every_error_class_has_its_documented_code() -> None:
    assert hil.sim and hil.report.allure3  # every module that defines an error is loaded
    classes = all_error_classes()
    assert {cls.__name__: cls.exit_code for cls in classes} == CODES
    assert all(cls.__doc__ for cls in classes)
    assert all(cls.exit_code in EXIT_CODE_MEANINGS for cls in classes)
    # One kind names one class: reports and nightly tell faults apart by it.
    kinds = [cls.kind for cls in classes]
    assert len(kinds) == len(set(kinds))


def test_infrastructure_kinds_have_infrastructure_codes() -> None:
    assert all(cls.exit_code >= 10 for cls in ERROR_KINDS.values())
    assert {cls.exit_code for cls in ERROR_KINDS.values()} >= {
        code for code in ExitCode if 10 <= code <= 23}


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


def test_a_remote_command_past_its_timeout_is_a_timeout_fault(sim_jetson: Any) -> None:
    ep = resolve_endpoint(sim_jetson.ssh.host, config_file=sim_jetson.ssh.config)
    with SshConnection(ep, "sim-jetson").open() as conn:
        with pytest.raises(HilError) as info:
            conn.run("sleep 30", timeout=1)
        assert info.value.exit_code == ExitCode.RUN_TIMED_OUT
        assert info.value.kind == "command-timed-out"
        assert str(info.value) == "target 'sim-jetson': remote command timed out after 1 s"
        assert info.value.command == "sleep 30"
        assert conn.run("echo still here").stdout == "still here\n"
