"""What every SSH connection offers the rest of pytest-hil, without importing paramiko.

A session reaches a board either over its own paramiko transport
(:class:`hil.sshconn.SshConnection`) or through the local connection keeper
that outlives it (:class:`hil.sshmux.MuxConnection`).  Both hand out channels
with paramiko's ``Channel`` interface and share the command helpers here, so
the lease, sync, telemetry and the backend never care which one they hold.
paramiko costs about 0.2 s of import: a session served by the keeper never
pays it.
"""

from __future__ import annotations

import contextlib
import select
import shlex
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hil.errors import HilError
from hil.result import Result

DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts",)
DEFAULT_ALIVE_INTERVAL = 5.0
DEFAULT_ALIVE_COUNT = 3

ByteSink = Callable[[bytes], object]  # a return value (e.g. "done") is ignored here


class ConnectionLostError(HilError):
    """The SSH transport died under a command (maps to a run-lost or unreachable fault)."""


@dataclass(frozen=True)
class SshEndpoint:
    """Where and how to connect, after ssh_config resolution."""

    alias: str
    hostname: str
    port: int = 22
    user: str = ""
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    known_hosts: tuple[str, ...] = DEFAULT_KNOWN_HOSTS
    host_key_alias: str = ""
    proxy_jump: str = ""
    proxy_command: str = ""
    connect_timeout: float = 10.0
    alive_interval: float = DEFAULT_ALIVE_INTERVAL
    alive_count: int = DEFAULT_ALIVE_COUNT
    config_file: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SshEndpoint:
        """From :func:`dataclasses.asdict` output that went through JSON (lists -> tuples)."""
        fixed: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fixed)

    @property
    def key_name(self) -> str:
        """The name its host key is filed under in known_hosts (OpenSSH's rule)."""
        name = self.host_key_alias or self.hostname
        return name if self.port == 22 else f"[{name}]:{self.port}"

    @property
    def display(self) -> str:
        """``user@alias (hostname:port)`` for messages."""
        who = f"{self.user}@" if self.user else ""
        real = "" if self.hostname == self.alias else f" ({self.hostname}:{self.port})"
        return f"{who}{self.alias}{real}"

    def ssh_command(self) -> str:
        """The OpenSSH command a user would type to reach the same host."""
        parts = ["ssh"]
        if self.config_file:
            parts += ["-F", self.config_file]
        parts.append(self.alias)
        return shlex.join(parts)


class Channel(Protocol):
    """The part of paramiko's ``Channel`` that pytest-hil uses (both kinds provide it)."""

    @property
    def closed(self) -> bool: ...
    @property
    def eof_received(self) -> int: ...
    @property
    def exit_status(self) -> int: ...
    @property
    def status_event(self) -> threading.Event:
        """Set when the exit status arrived or the channel closed."""

    def fileno(self) -> int: ...
    def recv_ready(self) -> bool: ...
    def recv(self, nbytes: int) -> bytes: ...
    def recv_stderr_ready(self) -> bool: ...
    def recv_stderr(self, nbytes: int) -> bytes: ...
    def exit_status_ready(self) -> bool: ...
    def recv_exit_status(self) -> int: ...
    def sendall(self, data: bytes) -> None: ...
    def shutdown_write(self) -> None: ...
    def settimeout(self, timeout: float | None) -> None: ...
    def makefile(self, mode: str) -> Any: ...
    def close(self) -> None: ...


def exited(chan: Channel) -> bool:
    """Whether the server sent the channel's exit status.

    paramiko's ``exit_status_ready()`` is also true for a channel closed under
    a dying transport, with the placeholder status -1; that is not an exit.
    """
    return chan.exit_status_ready() and chan.exit_status != -1


class Connection(ABC):
    """An authenticated way to run commands on a board, one channel per command."""

    endpoint: SshEndpoint
    target: str | None
    #: Why the connection was found dead ("" while it is alive).
    lost_reason: str
    #: When the SSH transport was opened (epoch seconds).
    connected_at: float
    #: What a channel raises when the connection breaks under it.
    channel_errors: tuple[type[BaseException], ...] = (OSError, EOFError)

    @property
    @abstractmethod
    def alive(self) -> bool:
        """Whether commands can still be run."""

    @property
    @abstractmethod
    def host_key(self) -> str:
        """The board's host key as ``type SHA256:...`` (checked against known_hosts)."""

    @abstractmethod
    def exec(self, command: str, *, timeout: float | None = None) -> Channel:
        """Start ``command`` on a new channel; output is read from the channel."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the connection (idempotent)."""

    def channel_lost(self, chan: Channel) -> str:
        """Why ``chan`` ended without its command's end, when the connection says ("")."""
        return ""

    @abstractmethod
    def kill_socket(self) -> None:
        """Drop everything abruptly, as a crashed client would (used by tests)."""

    def stream(self, chan: Channel, on_stdout: ByteSink, on_stderr: ByteSink, *,
               deadline: float | None = None, tick: Callable[[], None] | None = None) -> int:
        """Pump a channel's output to the sinks until it exits; returns its exit status.

        Raises :class:`ConnectionLostError` when the transport dies first and
        :class:`TimeoutError` at ``deadline`` (``time.monotonic()`` based).
        """
        fd = chan.fileno()
        while True:
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            with contextlib.suppress(OSError, ValueError):
                select.select([fd], [], [], wait)
            got = _drain(chan, on_stdout, on_stderr)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError
            if got:
                continue
            # Read "closed" before the exit status: a status always arrives before the
            # close, so a channel seen closed here has its status, if it got one.
            closed = chan.closed
            if exited(chan) and (chan.eof_received or closed):
                _drain(chan, on_stdout, on_stderr)  # what raced with the exit status
                return chan.recv_exit_status()
            if not self.alive:
                if exited(chan):
                    return chan.recv_exit_status()
                raise ConnectionLostError(
                    self.lost_reason or f"connection to {self.endpoint.display} lost",
                    target=self.target)
            if closed:
                lost = self.channel_lost(chan)
                if lost:
                    raise ConnectionLostError(lost, target=self.target)
                # Closed on a live connection without an exit status: the command
                # was killed by a signal (sshd sends exit-signal, which paramiko drops).
                return -1
            if tick is not None:
                tick()

    def run(self, command: str, *, stdin: bytes | None = None,
            timeout: float | None = None) -> Result:
        """Run ``command`` to completion and collect its output."""
        chan = self.exec(command)
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            if stdin is not None:
                chan.sendall(stdin)
            chan.shutdown_write()
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                code = self.stream(chan, out.append, err.append, deadline=deadline)
            except TimeoutError:
                raise HilError(f"remote command timed out after {timeout:.0f} s",
                               target=self.target, command=command) from None
        except self.channel_errors as exc:
            raise ConnectionLostError(self.lost_reason or f"connection lost: {exc}",
                                      target=self.target) from exc
        finally:
            chan.close()
        return Result(command, code, b"".join(out).decode("utf-8", "replace"),
                      b"".join(err).decode("utf-8", "replace"))


def _drain(chan: Channel, on_stdout: ByteSink, on_stderr: ByteSink) -> bool:
    """Pass what ``chan`` holds on stdout and stderr to the sinks; whether there was any."""
    got = False
    for ready, recv, sink in ((chan.recv_ready, chan.recv, on_stdout),
                              (chan.recv_stderr_ready, chan.recv_stderr, on_stderr)):
        while ready():
            data = recv(1 << 16)
            if not data:
                break
            sink(data)
            got = True
    return got
