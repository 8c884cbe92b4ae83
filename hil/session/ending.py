"""How a member's run ended, and one exit code for many: two pure functions.

:func:`classify` reads a frozen record of one container run (what its event
stream showed, and how its process ended) and says what it means: pytest's
own exit code, a test that crashed the interpreter (the member resumes after
it), or an infrastructure fault.  :func:`combine_exit_codes` is the one rule
that turns several codes into one: for the members of a pool or a routed run,
the containers of a resumed run, the shards of a CI matrix and the targets of
``hil nightly`` alike (the README's "Exit codes" states it).

Neither touches pytest, a backend or the disk: both are tested as tables.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from hil.backends.base import describe_exit
from hil.errors import ExitCode, HilError, RunLostError, TargetUnhealthyError, name_running

#: Infrastructure codes (10 and up, ``hil.errors.ExitCode``).
INFRA_CODES = frozenset(int(c) for c in ExitCode if int(c) >= 10)
#: pytest's codes that are worse than a failed test, most severe first.
PYTEST_SEVERITY = (int(ExitCode.INTERNAL_ERROR), int(ExitCode.INTERRUPTED),
                   int(ExitCode.USAGE_ERROR), int(ExitCode.TESTS_FAILED))


def combine_exit_codes(codes: Sequence[int]) -> int:
    """One exit code for many, whatever their order:

    1. the highest infrastructure code (10-22) when any: CI tells "the board is
       down" from "the product regressed";
    2. else pytest's internal error (3), interrupted (2), usage error (4), in
       that order; then 1 when any test failed;
    3. else 5 when every part collected nothing (and there was a part);
    4. else 0; a code outside pytest's and ours counts as an internal error (3).

    A test that crashed the interpreter counts as a failed test (1): a resumed
    run combines 1 with its last container's code.
    """
    infra = [c for c in codes if c in INFRA_CODES]
    if infra:
        return max(infra)
    for code in PYTEST_SEVERITY:
        if code in codes:
            return code
    if codes and all(c == int(ExitCode.NO_TESTS_COLLECTED) for c in codes):
        return int(ExitCode.NO_TESTS_COLLECTED)
    if any(c not in (0, 5) for c in codes):
        return int(ExitCode.INTERNAL_ERROR)
    return 0


@dataclass(frozen=True)
class StreamOutcome:
    """What one container's event stream (and the worker's record) showed by its end."""

    #: The worker's ``hello`` arrived: pytest's session started in the container.
    hello: bool
    #: The code of the worker's final ``exit`` event (None: the stream never carried it).
    exit_event: int | None
    #: pytest's own exit status in the container (``sessionfinish``, else ``exit``).
    remote_exit: int | None
    #: The test(s) running at the end, as far as the events tell (for a lost run's message).
    running: str | None
    #: The test started and not finished when the stream ended (None under xdist: a
    #: crashed xdist worker is pytest-xdist's to report).
    started: str | None


@dataclass(frozen=True)
class ProcessEnd:
    """How the container's process ended, as the backend saw it."""

    exit_code: int | None
    oom_killed: bool = False
    #: Why the stream ended early (killed, link lost, script died); "" for the process's own end.
    reason: str = ""
    #: The fault the backend raised instead of returning (a lost link, a timeout).
    fault: HilError | None = None


@dataclass(frozen=True)
class Crash:
    """A test crashed the interpreter: it is reported failed and the run resumes after it."""

    nodeid: str
    #: ``exit code 3``, ``signal SIGSEGV``.
    how: str


@dataclass(frozen=True)
class Ending:
    """What :func:`classify` made of a member's end: exactly one of the three is set."""

    code: int | None = None
    crash: Crash | None = None
    error: HilError | None = None
    #: pytest in the container stopped before its session (its code, its reason on stderr).
    early: bool = False


def classify(stream: StreamOutcome, process: ProcessEnd, *, target: str,
             memory: str = "", tail: str = "") -> Ending:
    """What one container run's end means (``tail``: the container's stderr, for a fault)."""
    if process.fault is not None:
        # A lost link or a timeout: the stream knows the test that was running.
        fault = copy.copy(process.fault)
        name_running(fault, stream.running)
        fault.target = fault.target or target
        return Ending(error=fault)
    if stream.hello and stream.remote_exit is not None:
        return Ending(code=stream.remote_exit)
    if not stream.hello and stream.exit_event is not None:
        return Ending(code=stream.exit_event, early=True)
    died = process.exit_code is not None and not process.reason and not process.oom_killed
    if died and stream.hello and stream.started is not None:
        return Ending(crash=Crash(stream.started, describe_exit(int(process.exit_code or 0))))
    if process.oom_killed:
        why = "the test container was OOM-killed" + (f" (memory limit {memory})" if memory else "")
        return Ending(error=RunLostError(why, running_test=stream.running, target=target))
    if not stream.hello and not process.reason:  # it ended on its own before pytest started
        return Ending(error=TargetUnhealthyError(
            f"the test container exited {process.exit_code} before pytest started",
            target=target, tail=tail))
    why = process.reason or (f"the test container ended (exit {process.exit_code}) without "
                             "pytest's final report")
    return Ending(error=RunLostError(why, running_test=stream.running, target=target))


__all__ = ["INFRA_CODES", "Crash", "Ending", "ProcessEnd", "StreamOutcome", "classify",
           "combine_exit_codes"]
