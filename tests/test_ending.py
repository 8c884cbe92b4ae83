"""How a member's run ended, and the one exit-code rule: tables, without a pytest session."""

from __future__ import annotations

import pytest

from hil.errors import ExitCode, RunLostError, RunTimedOutError
from hil.session.ending import Crash, ProcessEnd, StreamOutcome, classify, combine_exit_codes

T = "test_a.py::test_x"


def stream(hello: bool = True, exit_event: int | None = None, remote_exit: int | None = None,
           running: str | None = None, started: str | None = None) -> StreamOutcome:
    """A stream's outcome; a final ``exit`` event is also pytest's status unless told."""
    if remote_exit is None and exit_event is not None and hello:
        remote_exit = exit_event
    return StreamOutcome(hello=hello, exit_event=exit_event, remote_exit=remote_exit,
                         running=running, started=started)


LOST_LINK = RunLostError("connection to the board lost", target="b")
TIMED_OUT = RunTimedOutError("the run exceeded 5 s and was killed", target="b")

# (stream, process end) -> an exit code, a crash (node id, how) or an error (exit code, words)
TABLE: list[tuple[str, StreamOutcome, ProcessEnd, object]] = [
    ("passed", stream(exit_event=0), ProcessEnd(0), 0),
    ("failed", stream(exit_event=1), ProcessEnd(1), 1),
    ("no-tests", stream(exit_event=5), ProcessEnd(5), 5),
    ("interrupted-in-container", stream(exit_event=2), ProcessEnd(2), 2),
    ("status-before-a-kill", stream(remote_exit=1), ProcessEnd(137, reason="killed"), 1),
    ("usage-error-before-session", stream(hello=False, exit_event=4), ProcessEnd(4), 4),
    ("died-before-pytest", stream(hello=False), ProcessEnd(1),
     (16, "exited 1 before pytest started")),
    ("killed-before-pytest", stream(hello=False),
     ProcessEnd(137, reason="the test container was killed (exit 137)"),
     (19, "the test container was killed (exit 137)")),
    ("crash-exit", stream(running=T, started=T), ProcessEnd(3), Crash(T, "exit code 3")),
    ("crash-segv", stream(running=T, started=T), ProcessEnd(139), Crash(T, "signal SIGSEGV")),
    ("died-between-tests", stream(running=T), ProcessEnd(3),
     (19, "ended (exit 3) without pytest's final report")),
    ("oom", stream(running=T, started=T), ProcessEnd(137, oom_killed=True, reason="OOM"),
     (19, "OOM-killed (memory limit 64m)")),
    ("oom-before-pytest", stream(hello=False), ProcessEnd(137, oom_killed=True, reason="OOM"),
     (19, "OOM-killed")),
    ("killed", stream(running=T, started=T), ProcessEnd(137, reason="the test container was "
                                                        "killed (exit 137)"),
     (19, "the test container was killed (exit 137)")),
    ("script-died", stream(running=T, started=T),
     ProcessEnd(255, reason="the run script on the board exited 255 without reporting"),
     (19, "without reporting")),
    ("no-exit-status", stream(running=T), ProcessEnd(None), (19, "ended (exit None)")),
    ("link-lost", stream(running=T, started=T), ProcessEnd(None, fault=LOST_LINK),
     (19, "connection to the board lost")),
    ("timed-out", stream(running=T), ProcessEnd(None, fault=TIMED_OUT), (20, "exceeded 5 s")),
]


@pytest.mark.parametrize(("s", "p", "expected"), [row[1:] for row in TABLE],
                         ids=[row[0] for row in TABLE])
def test_each_end_of_a_run_classifies_to_one_code_crash_or_fault(
        s: StreamOutcome, p: ProcessEnd, expected: object) -> None:
    ending = classify(s, p, target="b", memory="64m")
    if isinstance(expected, int):
        assert (ending.code, ending.crash, ending.error) == (expected, None, None)
    elif isinstance(expected, Crash):
        assert (ending.code, ending.crash, ending.error) == (None, expected, None)
    else:
        code, words = expected  # type: ignore[misc]
        assert ending.code is None and ending.crash is None and ending.error is not None
        assert int(ending.error.exit_code) == code
        assert words in ending.error.message


def test_a_lost_run_names_the_test_the_stream_saw_running() -> None:
    ending = classify(stream(running=T, started=T), ProcessEnd(None, fault=LOST_LINK),
                      target="b")
    assert isinstance(ending.error, RunLostError)
    assert ending.error.running_test == T
    assert classify(stream(hello=False, exit_event=4), ProcessEnd(4), target="b").early


@pytest.mark.parametrize(("codes", "expected"), [
    ([], 0),
    ([0, 0], 0),
    ([0, 1], 1),
    ([1, 5], 1),
    ([5, 5], 5),
    ([0, 5], 0),
    ([1, 10], 10),
    ([0, 19, 10], 19),
    ([16, 1, 3], 16),
    ([2, 1], 2),
    ([3, 2, 1], 3),
    ([4, 1], 4),
    ([4, 2], 2),
    ([2, 4], 2),
    ([1, 2, 0], 2),
    ([0, 99], 3),
])
def test_one_rule_combines_exit_codes_whatever_their_order(codes: list[int],
                                                           expected: int) -> None:
    assert combine_exit_codes(codes) == expected
    assert combine_exit_codes(list(reversed(codes))) == expected


@pytest.mark.parametrize(("last", "expected"), [(0, 1), (5, 1), (1, 1), (2, 2), (4, 4)])
def test_a_crashed_test_counts_as_a_failed_one_in_a_resumed_run(last: int, expected: int) -> None:
    assert combine_exit_codes([int(ExitCode.TESTS_FAILED), last]) == expected
