"""What long steps show on the terminal: one ``hil:`` line per step, ``  |`` lines of detail."""

from __future__ import annotations

import re
import sys
import threading
from typing import TextIO

import pytest

#: Terminal control: CSI and OSC sequences whole, then any other C0/C1 control but tab and
#: newline.  What a board or a container prints reaches the terminal as text, not commands.
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|"
                      r"\x9b[0-?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` without terminal control sequences and control characters (tab and newline
    kept)."""
    return _CONTROL.sub("", text)


class Progress:
    """Shows progress of long steps on the terminal and keeps a copy in a log file."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet

    def step(self, message: str) -> None:
        """One line saying what starts now."""
        if not self.quiet:
            self.stream.write(f"hil: {printable(message)}\n")
            self.stream.flush()

    def detail(self, message: str) -> None:
        """A line of build or sync output (shown only when not quiet)."""
        if not self.quiet:
            self.stream.write(f"  | {printable(message)}\n")
            self.stream.flush()


class TerminalProgress(Progress):
    """Progress lines on pytest's terminal (stdout), in order with test output."""

    def __init__(self, config: pytest.Config, log: list[str]) -> None:
        super().__init__(quiet=int(config.getoption("verbose")) < -1)
        self.config = config
        self.tw = config.get_terminal_writer()
        self.log = log

    def step(self, message: str) -> None:
        self.log.append(f"hil: {message}")
        if not self.quiet:
            terminal_line(self.config, f"hil: {message}", cyan=True)

    def detail(self, message: str) -> None:
        self.log.append(f"  | {message}")
        if not self.quiet:
            self.tw.line(f"  | {printable(message)}")


class MemberProgress(Progress):
    """Progress lines of one member of a session (a board of a pool, a routed target),
    prefixed with its name; safe from the member's own thread."""

    def __init__(self, config: pytest.Config, member: str, log: list[str],
                 lock: threading.Lock) -> None:
        super().__init__(quiet=int(config.getoption("verbose")) < -1)
        self.config, self.member, self.log, self.lock = config, member, log, lock

    def step(self, message: str) -> None:
        with self.lock:
            self.log.append(f"hil: [{self.member}] {message}")
            if not self.quiet:
                terminal_line(self.config, f"hil: [{self.member}] {message}", cyan=True)

    def detail(self, message: str) -> None:
        with self.lock:
            self.log.append(f"  | [{self.member}] {message}")


def terminal_line(config: pytest.Config, text: str, **markup: bool) -> None:
    """One line on pytest's terminal, on a line of its own (also amid a file's progress)."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        terminal.ensure_newline()
    config.get_terminal_writer().line(printable(text), **markup)
