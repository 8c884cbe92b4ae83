"""An exclusive lease on a board, tied to the life of the session's SSH connection.

The lease is a ``flock`` on the folder ``/tmp/pytest-hil`` itself, held by a
shell on its own channel of the session's connection.  After taking the lock
the shell writes who holds it (local user, host, pid, since when) into the
folder and keeps the locked folder open until its standard input closes: when
the session ends, when the client crashes (the kernel closes the TCP
connection, sshd closes the channel) or when sshd gives up on a dead client.
No stale lock survives its holder, and nothing has to be cleaned up.

The board's other users are not trusted: the folder is this user's (made
``0700``) or provisioned root-owned with the engine's group; any other folder,
or a link in its place, is refused (:class:`~hil.errors.TargetUnhealthyError`),
and the holder file is replaced by rename, never written through
(``scripts/lease-dir.sh``).  A hold on failure receives the held lock from the
session's lease shell (:meth:`Lease.keep`): it never has to race for it.

A second session sees ``WAIT <holder>`` at once, shows whom it waits for, and
gets ``BUSY <holder>`` when ``flock -w`` times out: :class:`~hil.errors.DeviceBusyError`.
The folder is board-wide (not per user) because the GPU is.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import select
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from hil.backends.jetson.shell import board_command
from hil.errors import (
    ConnectionLostError,
    DeviceBusyError,
    HoldFailedError,
    LeaseFailedError,
    TargetUnhealthyError,
)
from hil.ssh.connection import SshConnection, exited

LEASE_DIR = "/tmp/pytest-hil"
_BUSY_EXIT = 75


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) the lease."""

    user: str = "?"
    host: str = "?"
    pid: int = 0
    since: str = ""
    target: str = ""
    #: The failed test whose container keeps the board (hold on failure), else empty.
    hold: str = ""

    @classmethod
    def me(cls, target: str = "") -> Holder:
        """This process."""
        return cls(user=getpass.getuser(), host=socket.gethostname(), pid=os.getpid(),
                   since=datetime.now(timezone.utc).isoformat(timespec="seconds"), target=target)

    @classmethod
    def parse(cls, text: str) -> Holder:
        """From the JSON line in the holder file (unknown when unreadable)."""
        try:
            data: dict[str, Any] = json.loads(text)
            return cls(user=str(data.get("user", "?")), host=str(data.get("host", "?")),
                       pid=int(data.get("pid", 0)), since=str(data.get("since", "")),
                       target=str(data.get("target", "")), hold=str(data.get("hold", "")))
        except (ValueError, TypeError, AttributeError):
            return cls()

    def describe(self) -> str:
        """``alice@laptop (pid 123) since 2026-11-22T10:21:03+00:00 (hold: t.py::test_a)``."""
        text = f"{self.user}@{self.host}"
        if self.pid:
            text += f" (pid {self.pid})"
        if self.since:
            text += f" since {self.since}"
        if self.hold:
            text += f" (hold: {self.hold})"
        return text

    @property
    def owner(self) -> str:
        """``user@host``: whose holds ``hil release`` frees by default."""
        return f"{self.user}@{self.host}"

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps({"user": self.user, "host": self.host, "pid": self.pid,
                           "since": self.since, "target": self.target, "hold": self.hold})


def lease_script(holder: Holder, timeout: float, lease_dir: str = LEASE_DIR) -> str:
    """The remote shell (``scripts/lease.sh``) that takes the lock, reports, and holds it
    until stdin closes."""
    return board_command("lease", DIR=lease_dir, HOLDER=holder.to_json(),
                         TIMEOUT=f"{max(0.0, timeout):.1f}", BUSY=str(_BUSY_EXIT))


#: The longest line the lease script sends (a holder's JSON is well under it).
_LINE_LIMIT = 64 * 1024


class Lease:
    """Takes the board's lease on its own channel, in the background; :meth:`wait` joins."""

    def __init__(self, conn: SshConnection, *, timeout: float, target: str | None = None,
                 on_wait: Any = None, lease_dir: str = LEASE_DIR) -> None:
        self.conn = conn
        self.timeout = timeout
        self.target = target
        self.on_wait = on_wait
        self.lease_dir = lease_dir
        self.holder = Holder.me(target or "")
        #: Who held it while we waited (or who made us give up).
        self.blocked_by: Holder | None = None
        self.acquired = False
        self.waited = 0.0
        self._error: BaseException | None = None
        self._chan: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> Lease:
        """Ask for the lease without waiting for the answer."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._take, name="hil-lease", daemon=True)
            self._thread.start()
        return self

    def _take(self) -> None:
        start = time.monotonic()
        try:
            chan = self.conn.exec(lease_script(self.holder, self.timeout, self.lease_dir))
            self._chan = chan
            fd = chan.fileno()
            buf = b""
            deadline = start + self.timeout + max(30.0, self.conn.endpoint.connect_timeout * 3)
            while True:
                # Checked at every turn, so a script that keeps talking cannot hold us.
                if time.monotonic() > deadline:
                    raise LeaseFailedError("no answer from the board's lease",
                                           target=self.target)
                if len(buf) > _LINE_LIMIT and b"\n" not in buf:
                    raise LeaseFailedError("the board's lease script sent a line of more than "
                                           f"{_LINE_LIMIT} bytes", target=self.target)
                if b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    text = line.decode("utf-8", "replace")
                    if text == "ACQUIRED":
                        self.acquired = True
                        return
                    kind, _, rest = text.partition(" ")
                    if kind == "REFUSED":
                        self._error = _refused(rest, self.target)
                        return
                    if kind == "WAIT":
                        self.blocked_by = Holder.parse(rest)
                        if self.on_wait is not None:
                            self.on_wait(self.blocked_by)
                    elif kind == "BUSY":
                        self.blocked_by = Holder.parse(rest) if rest.strip() else self.blocked_by
                        who = self.blocked_by.describe() if self.blocked_by else "another session"
                        self._error = DeviceBusyError(
                            f"the board is leased by {who}; gave up after {self.timeout:.0f} s",
                            target=self.target,
                            hint="wait for that run to finish, or raise --hil-lease-timeout")
                        return
                    continue
                ended = chan.eof_received or chan.closed  # before the drain: nothing lost
                if chan.recv_ready():
                    buf += chan.recv(4096)
                    continue
                if ended:
                    chan.status_event.wait(2.0)
                    err = chan.recv_stderr(4096).decode("utf-8", "replace") \
                        if chan.recv_stderr_ready() else ""
                    if not self.conn.alive:
                        raise ConnectionLostError(self.conn.lost_reason or "connection lost "
                                                  "while taking the lease", target=self.target)
                    status = chan.recv_exit_status() if exited(chan) else -1
                    self._error = LeaseFailedError(f"could not take the board's lease in "
                                                   f"{self.lease_dir} (exit {status})",
                                                   target=self.target, tail=err)
                    return
                with contextlib.suppress(OSError, ValueError):
                    select.select([fd], [], [], 0.2)
        except BaseException as err:  # handed to wait(), in the caller's thread
            self._error = err
        finally:
            self.waited = time.monotonic() - start

    def wait(self) -> None:
        """Block until the lease is held; raises DeviceBusyError when it was not granted."""
        self.start()
        assert self._thread is not None
        while self._thread.is_alive():
            self._thread.join(0.2)
        if self._error is not None:
            raise self._error
        if not self.acquired:  # pragma: no cover - the thread always sets one of the two
            raise LeaseFailedError("the lease was neither granted nor refused",
                                   target=self.target)

    @property
    def held(self) -> bool:
        """Whether the lease is held right now (granted, channel open, connection up)."""
        return (self.acquired and self._chan is not None and not self._chan.closed
                and self.conn.alive)

    def keep(self, container: str, ttl: float, holder: Holder, timeout: float = 60.0) -> None:
        """Hand the held lock to a detached keeper of ``container`` on the board, named
        ``holder``: it keeps the lease (never let go in between) until the container stops,
        ``ttl`` seconds pass or ``hil release`` removes it."""
        chan = self._chan
        if not self.held or chan is None:
            raise HoldFailedError("the board's lease is no longer held: nothing to keep",
                           target=self.target)
        chan.sendall(f"KEEP {container} {ttl:.0f}\n{holder.to_json()}\n".encode())
        buf = b""
        deadline = time.monotonic() + timeout
        while b"KEPT\n" not in buf:
            if chan.recv_ready():
                buf += chan.recv(4096)
                continue
            if chan.eof_received or chan.closed or time.monotonic() > deadline:
                raise HoldFailedError("the board's lease was not handed to the hold's keeper",
                               target=self.target, tail=buf.decode("utf-8", "replace")[-2000:])
            with contextlib.suppress(OSError, ValueError):
                select.select([chan.fileno()], [], [], 0.2)
        self.release()  # the lease shell has exited: the keeper holds the lock now

    def release(self) -> None:
        """Close the channel: the remote ``cat`` sees EOF and the lock goes (idempotent)."""
        if self._chan is not None:
            with contextlib.suppress(Exception):
                self._chan.shutdown_write()
                self._chan.close()
            self._chan = None
        self.acquired = False


def _refused(why: str, target: str | None) -> TargetUnhealthyError:
    return TargetUnhealthyError(
        f"the board's lease folder is not safe to use: {why.strip()}", target=target,
        hint="make it yours (remove it; pytest-hil makes it 0700) or provision it root-owned "
             "with the engine's group, mode 2770 (docs/security.md)")


def read_holder(conn: SshConnection, lease_dir: str = LEASE_DIR) -> tuple[bool, Holder | None]:
    """Whether the lease is held now, and by whom (for ``hil doctor``); TargetUnhealthyError
    when the lease folder is not safe."""
    res = conn.run(board_command("lease-holder", DIR=lease_dir))
    lines = res.stdout.splitlines()
    if lines and lines[0].startswith("REFUSED "):
        raise _refused(lines[0].partition(" ")[2], None)
    if not lines or lines[0] != "HELD":
        return False, None
    return True, Holder.parse(lines[1] if len(lines) > 1 else "")
