"""The outcome of one finished command, local or on a board."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """Command, exit code and output of one finished command."""

    command: str | tuple[str, ...]
    exited: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether the command exited 0."""
        return self.exited == 0

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of stdout and stderr together."""
        text = (self.stdout.rstrip() + "\n" + self.stderr.rstrip()).strip()
        return "\n".join(text.splitlines()[-lines:])
