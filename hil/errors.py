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
    ExitCode.RUN_TIMED_OUT: "run timed out",
    ExitCode.DEVICE_BUSY: "device busy: the board's lease was not acquired in time",
    ExitCode.SERVICE_FAILED: ("a compose service beside the tests was unhealthy, exited or "
                              "died during the run"),
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
    """Bad target configuration; surfaces as a pytest usage error (exit 4)."""

    exit_code = ExitCode.USAGE_ERROR
    kind = "config"


class UnreachableError(HilError):
    exit_code = ExitCode.UNREACHABLE
    kind = "unreachable"


class AuthRefusedError(HilError):
    exit_code = ExitCode.AUTH_REFUSED
    kind = "auth-refused"


class HostKeyError(HilError):
    exit_code = ExitCode.HOST_KEY_REJECTED
    kind = "host-key"


class EngineDownError(HilError):
    exit_code = ExitCode.ENGINE_DOWN
    kind = "engine-down"


class RuntimeMissingError(HilError):
    exit_code = ExitCode.NVIDIA_RUNTIME_MISSING
    kind = "runtime-missing"


class DiskLowError(HilError):
    exit_code = ExitCode.DISK_LOW
    kind = "disk-low"


class TargetUnhealthyError(HilError):
    exit_code = ExitCode.TARGET_UNHEALTHY
    kind = "unhealthy"


class BuildFailedError(HilError):
    exit_code = ExitCode.IMAGE_BUILD_FAILED
    kind = "build-failed"


class SyncFailedError(HilError):
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
    exit_code = ExitCode.RUN_TIMED_OUT
    kind = "timed-out"


class DeviceBusyError(HilError):
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
    )
}
