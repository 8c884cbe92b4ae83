"""The one error hierarchy of pytest-hil and its stable exit codes.

Exit codes 0-5 belong to pytest and are passed through unchanged from the
pytest that ran the tests (locally, in a container or on a board).  Faults of
the infrastructure around the tests get codes of their own, starting at 10, so
that a nightly job can tell a dead board from a real regression.  The README
holds the same table; ``tests/test_errors.py`` checks that the two agree.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class ExitCode(enum.IntEnum):
    """Every exit code pytest-hil can end a session with."""

    OK = 0
    TESTS_FAILED = 1
    INTERRUPTED = 2
    INTERNAL_ERROR = 3
    USAGE_ERROR = 4  # also: bad target configuration
    NO_TESTS_COLLECTED = 5

    UNREACHABLE = 10
    AUTH_REFUSED = 11
    HOST_KEY_REJECTED = 12
    ENGINE_DOWN = 13
    NVIDIA_RUNTIME_MISSING = 14
    DISK_LOW = 15
    TARGET_UNHEALTHY = 16
    IMAGE_BUILD_FAILED = 17
    SYNC_FAILED = 18
    RUN_LOST = 19
    RUN_TIMED_OUT = 20
    DEVICE_BUSY = 21
    SERVICE_FAILED = 22
    CONTAINER_FAILED = 23
    REPORT_FAILED = 24
    RIG_FAILED = 25


#: One line per infrastructure code, used by the README table and ``hil --exit-codes``.
EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "all tests passed (pytest)",
    ExitCode.TESTS_FAILED: "some tests failed (pytest)",
    ExitCode.INTERRUPTED: "interrupted: Ctrl-C, SIGTERM or collection errors (pytest)",
    ExitCode.INTERNAL_ERROR: "internal error (pytest)",
    ExitCode.USAGE_ERROR: "usage error: bad option or bad target configuration (pytest)",
    ExitCode.NO_TESTS_COLLECTED: "no tests collected (pytest)",
    ExitCode.UNREACHABLE: "target unreachable: no route, connection refused or timed out",
    ExitCode.AUTH_REFUSED: "SSH authentication refused",
    ExitCode.HOST_KEY_REJECTED: "SSH host key unknown or changed",
    ExitCode.ENGINE_DOWN: "the target's Docker engine does not answer",
    ExitCode.NVIDIA_RUNTIME_MISSING: "the Docker runtime the target needs (e.g. nvidia) is not registered",
    ExitCode.DISK_LOW: "free space on the engine's data root below the threshold",
    ExitCode.TARGET_UNHEALTHY: "target unhealthy: declared tier not served (no CUDA), bad board",
    ExitCode.IMAGE_BUILD_FAILED: "building the dependencies image failed",
    ExitCode.SYNC_FAILED: "syncing the checkout to the target failed",
    ExitCode.RUN_LOST: ("run lost mid-way: connection dropped, container killed or OOM, "
                        "a test crashed past the resume limit"),
    ExitCode.RUN_TIMED_OUT: "run timed out, or a command on the target did",
    ExitCode.DEVICE_BUSY: ("device busy: the board's lease was not acquired in time, or its "
                           "lease did not answer"),
    ExitCode.SERVICE_FAILED: ("a compose service beside the tests was unhealthy, exited or "
                              "died during the run"),
    ExitCode.CONTAINER_FAILED: ("the engine would not remove a test container, or could not "
                                "keep one for --hil-hold"),
    ExitCode.REPORT_FAILED: "hil report: Allure could not generate the HTML report",
    ExitCode.RIG_FAILED: "hil sim: a part of the simulated rig failed or did not come up",
}


class HilError(Exception):
    """Base of every error pytest-hil reports to the user.

    Carries what the user needs to act: the target, the command that failed,
    its exit code and the last lines of its output.  ``str()`` is one line;
    :meth:`details` adds the output tail.
    """

    exit_code: ExitCode = ExitCode.INTERNAL_ERROR
    #: Short machine-readable kind, shown in reports ("unreachable", "build-failed", ...).
    kind: str = "error"

    def __init__(
        self,
        message: str,
        *,
        target: str | None = None,
        command: str | Sequence[str] | None = None,
        exited: int | None = None,
        tail: str = "",
        hint: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.target = target
        self.command = command if command is None or isinstance(command, str) else " ".join(command)
        self.exited = exited
        self.tail = tail
        self.hint = hint
        if tail.strip() and hasattr(self, "add_note"):  # Python 3.11+: tracebacks show it
            self.add_note("output tail:\n" + "\n".join(tail.rstrip().splitlines()[-20:]))

    def __str__(self) -> str:
        where = f"target '{self.target}': " if self.target else ""
        line = f"{where}{self.message}"
        if self.command is not None and self.exited is not None:
            line += f" (`{self.command}` exited {self.exited})"
        if self.hint:
            line += f"; {self.hint}"
        return line

    def details(self, lines: int = 20) -> str:
        """The one-line message followed by the last ``lines`` lines of output."""
        text = str(self)
        if self.tail:
            tail = "\n".join(self.tail.rstrip().splitlines()[-lines:])
            text += "\n" + tail
        return text


class ConfigError(HilError):
    """Bad option or target configuration; surfaces as a pytest usage error (exit 4)."""

    exit_code = ExitCode.USAGE_ERROR
    kind = "config"


class UnreachableError(HilError):
    """No route to the target, connection refused or timed out, a name that does not resolve."""

    exit_code = ExitCode.UNREACHABLE
    kind = "unreachable"


class AuthRefusedError(HilError):
    """The target refused every SSH key offered."""

    exit_code = ExitCode.AUTH_REFUSED
    kind = "auth-refused"


class HostKeyError(HilError):
    """The target's SSH host key is unknown or changed."""

    exit_code = ExitCode.HOST_KEY_REJECTED
    kind = "host-key"


class EngineDownError(HilError):
    """The target's Docker engine does not answer."""

    exit_code = ExitCode.ENGINE_DOWN
    kind = "engine-down"


class RuntimeMissingError(HilError):
    """The Docker runtime the target needs is not registered."""

    exit_code = ExitCode.NVIDIA_RUNTIME_MISSING
    kind = "runtime-missing"


class DiskLowError(HilError):
    """Free space on the engine's data root is below the threshold."""

    exit_code = ExitCode.DISK_LOW
    kind = "disk-low"


class TargetUnhealthyError(HilError):
    """The target does not serve its declared tier, or is broken."""

    exit_code = ExitCode.TARGET_UNHEALTHY
    kind = "unhealthy"


class BuildFailedError(HilError):
    """Building the dependencies image failed."""

    exit_code = ExitCode.IMAGE_BUILD_FAILED
    kind = "build-failed"


class SyncFailedError(HilError):
    """Syncing the checkout to the target (or fetching back) failed."""

    exit_code = ExitCode.SYNC_FAILED
    kind = "sync-failed"


class RunLostError(HilError):
    """The run ended without its final report: connection dropped, container killed, OOM."""

    exit_code = ExitCode.RUN_LOST
    kind = "run-lost"

    def __init__(self, message: str, *, running_test: str | None = None,
                 not_run: Sequence[str] = (), **kw: object) -> None:
        if running_test:
            message = f"{message} while running {running_test}"
        if not_run:
            shown = ", ".join(not_run[:5]) + (f" and {len(not_run) - 5} more"
                                              if len(not_run) > 5 else "")
            message = f"{message}; {len(not_run)} test(s) not run: {shown}"
            kw.setdefault("tail", "tests not run:\n" + "\n".join(not_run))
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.running_test = running_test
        #: The tests the run did not get to (a crash past the resume limit).
        self.not_run = tuple(not_run)


class RunTimedOutError(HilError):
    """The run exceeded ``timeouts.run`` and was killed."""

    exit_code = ExitCode.RUN_TIMED_OUT
    kind = "timed-out"

    def __init__(self, message: str, *, running_test: str | None = None, **kw: object) -> None:
        if running_test:
            message = f"{message} while running {running_test}"
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.running_test = running_test


def name_running(err: HilError, test: str | None) -> None:
    """Name ``test`` in a run that was lost or timed out, as the test that was running.

    Unless the fault names one already, or is no such fault, or names the
    tests not run instead (a crash past the resume limit).
    """
    if (test and isinstance(err, (RunLostError, RunTimedOutError)) and not err.running_test
            and not getattr(err, "not_run", ())):
        err.running_test = test
        err.message = f"{err.message} while running {test}"
        err.args = (err.message,)


class DeviceBusyError(HilError):
    """The board's lease was held by another session until the deadline."""

    exit_code = ExitCode.DEVICE_BUSY
    kind = "device-busy"


class ServiceFailedError(HilError):
    """A compose service beside the tests was unhealthy, exited, or died while the tests ran."""

    exit_code = ExitCode.SERVICE_FAILED
    kind = "service-failed"

    def __init__(self, message: str, *, service: str = "", **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        #: The compose service at fault.
        self.service = service


class ConnectionLostError(RunLostError):
    """The SSH transport to the board died under a command: while leasing, syncing, building,
    running or fetching alike (one class, one code: the run is lost)."""

    kind = "connection-lost"


class CommandTimedOutError(RunTimedOutError):
    """A command on the target (not the test run itself) exceeded its own timeout."""

    kind = "command-timed-out"


class LeaseFailedError(DeviceBusyError):
    """The board's lease did not answer, or its command failed: the lease was not acquired."""

    kind = "lease-failed"


class ContainerRemoveError(HilError):
    """The engine kept refusing to remove a finished test container."""

    exit_code = ExitCode.CONTAINER_FAILED
    kind = "container-remove"


class HoldFailedError(HilError):
    """``--hil-hold`` could not keep the failed test's container (and its lease) on the board."""

    exit_code = ExitCode.CONTAINER_FAILED
    kind = "hold-failed"


class ReportToolError(HilError):
    """Generating the HTML report failed (Allure's generator exited non-zero or wrote nothing)."""

    exit_code = ExitCode.REPORT_FAILED
    kind = "report"


class ReportToolMissingError(ReportToolError):
    """Neither Node.js 20+ nor Allure 2's commandline is available (exit 4, a setup problem)."""

    exit_code = ExitCode.USAGE_ERROR
    kind = "report-tool-missing"


class NoResultsError(HilError):
    """``hil report`` was given a folder that is missing or holds no Allure results (exit 4)."""

    exit_code = ExitCode.USAGE_ERROR
    kind = "no-results"


class RigError(HilError):
    """A part of the simulated rig (``hil sim``) failed: a tool exited non-zero or timed out."""

    exit_code = ExitCode.RIG_FAILED
    kind = "sim-rig"


class LabError(HilError):
    """The lab's coordinator could not be reached or refused a call."""

    exit_code = ExitCode.UNREACHABLE
    kind = "lab-coordinator"


class LabUnavailableError(LabError):
    """labgrid is not installed (``pip install 'pytest-hil[lab]'``)."""

    exit_code = ExitCode.USAGE_ERROR
    kind = "lab-not-installed"


def all_error_classes() -> list[type[HilError]]:
    """``HilError`` and every subclass defined so far, depth first (for tables and tests)."""
    found: list[type[HilError]] = [HilError]
    for cls in found:
        found += [sub for sub in cls.__subclasses__() if sub not in found]
    return found


#: Every infrastructure error class, keyed by kind (used by reports and nightly).
ERROR_KINDS: dict[str, type[HilError]] = {
    cls.kind: cls
    for cls in (
        UnreachableError,
        AuthRefusedError,
        HostKeyError,
        EngineDownError,
        RuntimeMissingError,
        DiskLowError,
        TargetUnhealthyError,
        BuildFailedError,
        SyncFailedError,
        RunLostError,
        RunTimedOutError,
        DeviceBusyError,
        ServiceFailedError,
        ConnectionLostError,
        CommandTimedOutError,
        LeaseFailedError,
        ContainerRemoveError,
        HoldFailedError,
    )
}
