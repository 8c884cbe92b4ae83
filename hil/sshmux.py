"""The connection keeper: one SSH connection per board that outlives the pytest process.

A session that opens its own SSH connection pays TCP, key exchange and
authentication (about seven round trips: 0.3 s behind a 20 ms VPN), plus
paramiko's import and the key exchange's CPU, on every ``pytest`` run.  Like
OpenSSH's ControlMaster with ControlPersist, the first session instead starts a
small local daemon, the *keeper*, which opens the connection exactly as
:class:`~hil.sshconn.SshConnection` does (ssh_config, strict host keys,
keepalives) and serves it on a Unix socket in a private folder.  Later sessions
attach to that socket, which costs no network round trip and no paramiko
import.  Commands still get a channel each: a client asks the keeper to run a
command on its own Unix connection, and the keeper pumps the channel's bytes
over it as small frames.  The keeper also keeps two session channels open
ahead of need, so a command's first output arrives one round trip after it
was asked for instead of two.

Lifetimes:

* a channel lives as long as the client's Unix connection: a client that dies,
  even by SIGKILL, has its connections closed by the kernel and the keeper
  closes the channels, so the board's lease (a remote ``cat`` holding a
  ``flock``) still goes with the session that held it;
* the keeper exits ``persist`` seconds after its last client left, at once
  when the board stops answering (after telling its clients why), and when
  asked to (:func:`stop_all`);
* a keeper serves only the configuration it was started with: its socket's
  name is a digest of the target's host, user, port, ssh_config file (path and
  content) and of this code; and once its known_hosts or key files change it
  hands its socket name over to a fresh keeper (which checks the host key
  again) and exits when its last client is done.

The socket folder is ``$HIL_SSH_CONTROL_DIR``, else ``$XDG_RUNTIME_DIR/pytest-hil``,
else ``/tmp/pytest-hil-<uid>``; it must be owned by the user and closed to
others (mode 0700), as OpenSSH demands of its control sockets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hil import errors
from hil.errors import HilError
from hil.sshbase import Channel, Connection, ConnectionLostError, SshEndpoint, exited

#: Session channels the keeper holds open ahead of need.
SPARE_CHANNELS = 2
#: Frame header: kind (1 byte) and payload length.
_HEAD = struct.Struct("!cI")
#: Largest payload a frame carries.
_CHUNK = 1 << 16
_SOURCES = ("sshmux.py", "sshconn.py", "sshbase.py")


# -- frames ------------------------------------------------------------------------------
def send_frame(sock: socket.socket, kind: bytes, payload: bytes = b"") -> None:
    """Send one frame (payloads above 64 KiB go as several frames of the same kind)."""
    view = memoryview(payload)
    while True:
        part, view = view[:_CHUNK], view[_CHUNK:]
        sock.sendall(_HEAD.pack(kind, len(part)) + part)
        if not view:
            return


class FrameReader:
    """Reassembles frames from a stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def pop(self) -> tuple[bytes, bytes] | None:
        """The next complete frame already received, if any."""
        if len(self.buf) < _HEAD.size:
            return None
        kind, size = _HEAD.unpack_from(self.buf)
        end = _HEAD.size + size
        if len(self.buf) < end:
            return None
        payload = bytes(self.buf[_HEAD.size:end])
        del self.buf[:end]
        return kind, payload

    def feed(self) -> bool:
        """Read what the socket has (blocking once); False at end of stream."""
        data = self.sock.recv(_CHUNK + _HEAD.size)
        if not data:
            return False
        self.buf += data
        return True

    def read(self) -> tuple[bytes, bytes] | None:
        """The next frame, waiting for it; None at end of stream."""
        while True:
            frame = self.pop()
            if frame is not None:
                return frame
            if not self.feed():
                return None


def ask(path: Path, request: dict[str, Any],
        timeout: float) -> tuple[socket.socket, FrameReader, tuple[bytes, bytes] | None]:
    """Connect to the keeper at ``path``, send ``request``, read its first answer frame.

    Returns the socket (the caller closes it), its reader and the frame (None
    when the keeper closed); raises OSError when no keeper answers there.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        send_frame(sock, b"R", json.dumps(request).encode())
        reader = FrameReader(sock)
        return sock, reader, reader.read()
    except OSError:
        sock.close()
        raise


# -- where keepers live ------------------------------------------------------------------
def control_dir() -> Path:
    """The private folder of the keepers' sockets (created 0700; refused if not private)."""
    env = os.environ.get("HIL_SSH_CONTROL_DIR")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if env:
        path = Path(env)
    elif runtime and os.path.isdir(runtime):
        path = Path(runtime) / "pytest-hil"
    else:
        path = Path(f"/tmp/pytest-hil-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise HilError(f"the SSH control folder {path} must belong to you and be closed to "
                       f"others (mode 0700), not mode {info.st_mode & 0o777:o}",
                       hint=f"chmod 700 {path}, or set HIL_SSH_CONTROL_DIR to a private folder")
    return path


def _digest_file(name: str) -> str:
    try:
        return hashlib.sha256(Path(os.path.expanduser(name)).read_bytes()).hexdigest()
    except OSError:
        return "-"


def socket_path(request: dict[str, Any]) -> Path:
    """The keeper socket for a connection request (a digest of all that defines it)."""
    here = Path(__file__).parent
    parts = [json.dumps(request, sort_keys=True),
             _digest_file(request["config_file"] or "~/.ssh/config")]
    parts += [_digest_file(str(here / name)) for name in _SOURCES]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
    return control_dir() / f"{key}.sock"


def _error_to_json(err: BaseException) -> dict[str, Any]:
    if isinstance(err, HilError):
        return {"class": type(err).__name__, "message": err.message, "target": err.target,
                "command": err.command, "exited": err.exited, "tail": err.tail, "hint": err.hint}
    return {"class": "HilError", "message": f"{type(err).__name__}: {err}"}


def _error_from_json(data: dict[str, Any]) -> HilError:
    cls = getattr(errors, str(data.get("class")), None)
    if data.get("class") == "ConnectionLostError":
        cls = ConnectionLostError
    if not (isinstance(cls, type) and issubclass(cls, HilError)):
        cls = HilError
    return cls(str(data.get("message", "?")), target=data.get("target"),
               command=data.get("command"), exited=data.get("exited"),
               tail=str(data.get("tail") or ""), hint=str(data.get("hint") or ""))


# -- the client side ---------------------------------------------------------------------
class _Raw(io.RawIOBase):
    """``makefile("rb")`` of a :class:`MuxChannel`."""

    def __init__(self, chan: MuxChannel) -> None:
        self.chan = chan

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.chan.recv(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class MuxChannel:
    """A channel served by the keeper, with the :class:`~hil.sshbase.Channel` interface."""

    def __init__(self, sock: socket.socket, reader: FrameReader,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self._sock = sock
        self._on_lost = on_lost
        self._out = bytearray()
        self._err = bytearray()
        self.eof_received = False
        self.closed = False
        self.exit_status = -1
        self.status_event = threading.Event()
        #: Why the keeper ended the channel early ("" if it did not).
        self.lost_reason = ""
        self._cond = threading.Condition()
        self._timeout: float | None = None
        # A pipe readable while there is something to read, for select() (as paramiko's).
        self._rfd, self._wfd = os.pipe()
        self._flagged = False
        self._closing = False
        self._receiver = threading.Thread(target=self._receive, args=(reader,),
                                          name="hil-mux-channel", daemon=True)
        self._receiver.start()

    def _receive(self, reader: FrameReader) -> None:
        ended = False
        try:
            while True:
                frame = reader.read()
                if frame is None:
                    break
                kind, data = frame
                with self._cond:
                    if kind == b"o":
                        self._out += data
                    elif kind == b"e":
                        self._err += data
                    elif kind == b"f":
                        self.eof_received = True
                    elif kind == b"x":
                        self.exit_status = int(data)
                        self.status_event.set()
                    elif kind == b"L":
                        self.lost_reason = data.decode("utf-8", "replace")
                    elif kind == b"c":
                        ended = True
                    self._signal()
        except OSError:
            pass
        finally:
            with self._cond:
                if not ended and not self._closing and not self.lost_reason:
                    self.lost_reason = "the SSH connection keeper went away"
                self.closed = True
                self.status_event.set()
                self._signal()
            if self.lost_reason and self._on_lost is not None:
                self._on_lost(self.lost_reason)

    def _signal(self) -> None:
        """Wake readers; keep the select pipe readable exactly while something is pending."""
        self._cond.notify_all()
        pending = bool(self._out or self._err or self.eof_received or self.closed)
        if self._wfd < 0:
            return  # closed: the pipe is gone
        with contextlib.suppress(OSError):
            if pending and not self._flagged:
                os.write(self._wfd, b"!")
                self._flagged = True
            elif not pending and self._flagged:
                os.read(self._rfd, 1)
                self._flagged = False

    def fileno(self) -> int:
        """Readable while output, EOF or the end of the channel is pending."""
        return self._rfd

    def settimeout(self, timeout: float | None) -> None:
        """Timeout of the blocking :meth:`recv` calls (None: wait for ever)."""
        self._timeout = timeout

    def _take(self, buf: bytearray, nbytes: int) -> bytes:
        with self._cond:
            deadline = None if self._timeout is None else time.monotonic() + self._timeout
            while not buf and not (self.eof_received or self.closed):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("no data from the board within the channel's timeout")
                self._cond.wait(left)
            data = bytes(buf[:nbytes])
            del buf[:nbytes]
            self._signal()
            return data

    def recv_ready(self) -> bool:
        """Whether standard output is waiting to be read."""
        return bool(self._out)

    def recv(self, nbytes: int) -> bytes:
        """Up to ``nbytes`` of standard output; b"" at its end."""
        return self._take(self._out, nbytes)

    def recv_stderr_ready(self) -> bool:
        """Whether standard error is waiting to be read."""
        return bool(self._err)

    def recv_stderr(self, nbytes: int) -> bytes:
        """Up to ``nbytes`` of standard error; b"" at its end."""
        return self._take(self._err, nbytes)

    def exit_status_ready(self) -> bool:
        """True once the exit status came or the channel closed (paramiko's meaning)."""
        return self.closed or self.status_event.is_set()

    def recv_exit_status(self) -> int:
        """The exit status, waiting for it (-1 when the channel closed without one)."""
        self.status_event.wait()
        return self.exit_status

    def sendall(self, data: bytes) -> None:
        """Write to the command's standard input."""
        send_frame(self._sock, b"i", data)

    def shutdown_write(self) -> None:
        """Close the command's standard input."""
        send_frame(self._sock, b"w")

    def makefile(self, mode: str) -> Any:
        """A buffered binary reader of standard output (``mode`` must be "rb")."""
        if mode != "rb":
            raise ValueError(f"only 'rb' is supported, not {mode!r}")
        return io.BufferedReader(_Raw(self))

    def close(self) -> None:
        """End the channel: the keeper closes it on the board (idempotent)."""
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._receiver.join(5.0)
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._cond:
            self.closed = True
            self.status_event.set()
            self._signal()
            self._cond.notify_all()
            for fd in (self._rfd, self._wfd):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._rfd = self._wfd = -1


class MuxConnection(Connection):
    """A board connection served by a keeper (started on first use)."""

    def __init__(self, path: Path, info: dict[str, Any], hello: socket.socket,
                 target: str | None) -> None:
        self.path = path
        self.target = target
        self.endpoint = SshEndpoint.from_json(info["endpoint"])
        self.connected_at = float(info["connected_at"])
        self.keeper_pid = int(info["pid"])
        #: True when this session started the keeper, False when it found one running.
        self.started_keeper = False
        self._host_key = str(info["host_key"])
        self._hello = hello
        self._hello_reader = FrameReader(hello)
        self.lost_reason = ""
        self._channels: weakref.WeakSet[MuxChannel] = weakref.WeakSet()

    @classmethod
    def open(cls, *, host: str, config_file: str = "", user: str = "", port: int = 0,
             connect_timeout: float = 10.0, persist: float = 300.0,
             target: str | None = None) -> MuxConnection:
        """Attach to the keeper of this connection, starting one when none runs.

        Connection faults (unreachable, auth refused, host key unknown or
        changed) come back from the keeper as the same errors an in-process
        connection raises.
        """
        request = {"host": host, "config_file": os.path.abspath(os.path.expanduser(config_file))
                   if config_file else "", "user": user, "port": port,
                   "connect_timeout": connect_timeout}
        path = socket_path(request)
        conn = cls._attach(path, target)
        if conn is not None:
            return conn
        with _locked(path.with_suffix(".lock")):
            conn = cls._attach(path, target)
            if conn is not None:
                return conn
            _spawn(path, {**request, "persist": persist, "target": target})
            conn = cls._attach(path, target)
        if conn is None:
            raise HilError(f"the SSH connection keeper for '{host}' started but does not answer "
                           f"on {path}", target=target)
        conn.started_keeper = True
        return conn

    @classmethod
    def _attach(cls, path: Path, target: str | None) -> MuxConnection | None:
        try:
            sock, _, frame = ask(path, {"op": "hello"}, 10.0)
        except (FileNotFoundError, ConnectionRefusedError):
            if path.is_socket():  # a keeper that died without cleaning up
                with contextlib.suppress(OSError):
                    path.unlink()
            return None
        except OSError:
            return None
        if frame is None or frame[0] != b"h":
            sock.close()  # a keeper on its way out (stale files, lost link)
            return None
        sock.settimeout(None)
        return cls(path, json.loads(frame[1]), sock, target)

    @property
    def alive(self) -> bool:
        """Whether the keeper and its SSH connection are still up."""
        if self.lost_reason:
            return False
        try:
            while select.select([self._hello], [], [], 0)[0]:
                if not self._hello_reader.feed():
                    self.lost_reason = "the SSH connection keeper exited"
                    return False
                frame = self._hello_reader.pop()
                if frame is not None and frame[0] == b"L":
                    self.lost_reason = frame[1].decode("utf-8", "replace")
                    return False
        except (OSError, ValueError):
            self.lost_reason = self.lost_reason or "the SSH connection keeper went away"
            return False
        return True

    def _lost(self, reason: str) -> None:
        if not self.lost_reason:
            self.lost_reason = reason

    def channel_lost(self, chan: Channel) -> str:
        """Why the keeper ended ``chan`` without its command's end ("" if it did not)."""
        return getattr(chan, "lost_reason", "") or ("" if self.alive else self.lost_reason)

    @property
    def host_key(self) -> str:
        """The board's host key as the keeper verified it."""
        return self._host_key

    def exec(self, command: str, *, timeout: float | None = None) -> Channel:
        """Run ``command`` on a new channel of the kept connection."""
        try:
            sock, reader, frame = ask(self.path, {"op": "exec", "command": command},
                                      timeout or self.endpoint.connect_timeout + 5)
        except OSError as err:
            raise ConnectionLostError(self.lost_reason or f"the SSH connection keeper does not "
                                      f"answer: {err}", target=self.target) from err
        if frame is None or frame[0] != b"k":
            sock.close()
            why = frame[1].decode("utf-8", "replace") if frame else "the keeper closed"
            raise ConnectionLostError(self.lost_reason or f"cannot open a channel to "
                                      f"{self.endpoint.display}: {why}", target=self.target)
        sock.settimeout(None)
        chan = MuxChannel(sock, reader, on_lost=self._lost)
        self._channels.add(chan)
        return chan

    def close(self) -> None:
        """Detach from the keeper (it keeps the connection for the next session)."""
        with contextlib.suppress(OSError):
            self._hello.close()
        if not self.lost_reason:
            self.lost_reason = "closed"

    def kill_socket(self) -> None:
        """Drop every channel of this session at once, as a crashed client would."""
        for chan in list(self._channels):
            chan.close()
        self.close()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock, so that concurrent sessions start one keeper, not several."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _spawn(path: Path, request: dict[str, Any]) -> None:
    """Start a keeper for ``request`` on ``path``; raises its connection error, if any."""
    read_end, write_end = os.pipe()
    log = path.with_suffix(".log")
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hil.sshmux", str(path), str(write_end)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, pass_fds=(write_end,),
            start_new_session=True, cwd="/")
    os.close(write_end)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(request).encode())
    proc.stdin.close()
    proc.wait()  # the keeper forks at once; its first process exits
    limit = float(request["connect_timeout"]) * 3 + 30
    status = b""
    with os.fdopen(read_end, "rb") as pipe:
        deadline = time.monotonic() + limit
        while b"\n" not in status:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([pipe], [], [], left)[0]:
                raise HilError(f"the SSH connection keeper did not connect within {limit:.0f} s",
                               target=request.get("target"), tail=_tail(log))
            chunk = os.read(pipe.fileno(), 4096)
            if not chunk:
                break
            status += chunk
    try:
        result = json.loads(status.decode("utf-8", "replace").strip() or "null")
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise HilError("the SSH connection keeper failed to start", target=request.get("target"),
                       tail=_tail(log))
    if "error" in result:
        raise _error_from_json(result["error"])


def _tail(log: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    return ""


def stop_all(folder: Path | None = None) -> int:
    """Ask every keeper in ``folder`` (default: :func:`control_dir`) to exit; returns how many."""
    stopped = 0
    for path in sorted((folder or control_dir()).glob("*.sock")):
        try:
            sock, _, frame = ask(path, {"op": "stop"}, 5.0)
        except OSError:
            if path.is_socket():  # a keeper that died without cleaning up
                with contextlib.suppress(OSError):
                    path.unlink()
            continue
        sock.close()
        stopped += frame is not None and frame[0] == b"k"
    return stopped


# -- hil disconnect ----------------------------------------------------------------------
def configure_parser(parser: Any) -> None:
    """``hil disconnect``: no options."""
    parser.description = ("Close every SSH connection that pytest-hil keeps open between "
                          "sessions (ssh.persist); the next session connects afresh.")


def run(args: Any) -> int:
    """Stop the keepers; says how many there were."""
    count = stop_all()
    print(f"hil: closed {count} kept SSH connection(s)" if count else
          "hil: no kept SSH connections")
    return 0


# -- the keeper --------------------------------------------------------------------------
class Keeper:
    """Serves one SSH connection on a Unix socket until idle, lost or stopped."""

    def __init__(self, conn: Any, path: Path, persist: float) -> None:
        self.conn = conn
        self.path = path
        self.persist = persist
        ep = conn.endpoint
        self._watched = (*ep.known_hosts, *ep.identity_files)
        self._files = self._fingerprint()
        self._clients = 0
        self._idle_since = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._hellos: set[socket.socket] = set()
        self._spares: list[Any] = []
        self._want_spares = threading.Event()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._inode = 0

    def _fingerprint(self) -> list[str]:
        return [_digest_file(name) for name in self._watched]

    def bind(self) -> None:
        """Listen on the socket path (replacing a dead keeper's file)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self._server.listen(16)
        self._inode = self.path.stat().st_ino

    def _release_path(self) -> None:
        """Remove the socket file if it is still ours (a fresh keeper may own the name)."""
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()

    def serve(self) -> None:
        """Accept clients until idle for ``persist`` seconds, the link is lost, or stopped."""
        threading.Thread(target=self._fill_spares, name="spares", daemon=True).start()
        self._want_spares.set()
        self._server.settimeout(0.5)
        try:
            while not self._stop.is_set():
                try:
                    client, _ = self._server.accept()
                except TimeoutError:
                    pass
                else:
                    with self._lock:
                        self._clients += 1
                    threading.Thread(target=self._client, args=(client,), daemon=True).start()
                if not self.conn.alive:
                    self._announce_lost()
                    self._wait_clients(5.0)  # let each pump tell its client why
                    break
                with self._lock:
                    idle = self._clients == 0 and \
                        time.monotonic() - self._idle_since >= self.persist
                if idle:
                    break
        finally:
            self._release_path()
            self._server.close()
            self.conn.close()

    def _wait_clients(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self._lock:
                if self._clients <= len(self._hellos):
                    return
            time.sleep(0.05)  # polling the pumps' count, bounded by the deadline

    def _announce_lost(self) -> None:
        reason = (self.conn.lost_reason or "connection lost").encode()
        with self._lock:
            hellos = list(self._hellos)
        for sock in hellos:
            with contextlib.suppress(OSError):
                send_frame(sock, b"L", reason)
                sock.close()

    def _client(self, sock: socket.socket) -> None:
        try:
            reader = FrameReader(sock)
            sock.settimeout(10.0)
            frame = reader.read()
            sock.settimeout(None)
            if frame is None or frame[0] != b"R":
                return
            request = json.loads(frame[1])
            op = request.get("op")
            if op == "hello":
                self._hello(sock)
            elif op == "exec":
                self._exec(sock, reader, str(request["command"]))
            elif op == "stop":
                self._stop.set()
                send_frame(sock, b"k")
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with self._lock:
                self._clients -= 1
                if self._clients == 0:
                    self._idle_since = time.monotonic()

    def _hello(self, sock: socket.socket) -> None:
        if self._fingerprint() != self._files:
            # known_hosts or a key changed: a fresh keeper must check again.
            self._release_path()
            self._stop.set()
            send_frame(sock, b"E", b"known_hosts or identity files changed")
            return
        if not self.conn.alive:
            send_frame(sock, b"E", (self.conn.lost_reason or "connection lost").encode())
            return
        info = {"pid": os.getpid(), "endpoint": dataclasses.asdict(self.conn.endpoint),
                "host_key": self.conn.host_key, "connected_at": self.conn.connected_at}
        with self._lock:
            self._hellos.add(sock)
        try:
            send_frame(sock, b"h", json.dumps(info).encode())
            while sock.recv(4096):  # held until the session detaches
                pass
        finally:
            with self._lock:
                self._hellos.discard(sock)

    # -- channels ----------------------------------------------------------------------
    def _fill_spares(self) -> None:
        while not self._stop.is_set():
            self._want_spares.wait(1.0)
            self._want_spares.clear()
            while len(self._spares) < SPARE_CHANNELS and self.conn.alive:
                try:
                    chan = self.conn.open_channel()
                except HilError:
                    break  # e.g. the server's MaxSessions: commands open their own
                with self._lock:
                    self._spares.append(chan)

    def _channel(self) -> Any:
        """A spare channel while one is still open, else a new one."""
        with self._lock:
            spares, self._spares = self._spares, []
        usable = [c for c in spares if not c.closed and c.active]
        chan = usable.pop(0) if usable else None
        with self._lock:
            self._spares.extend(usable)
        if chan is None:
            try:
                chan = self.conn.open_channel()
            except HilError:
                # The spares may hold the server's last sessions (sshd's MaxSessions).
                with self._lock:
                    spares, self._spares = self._spares, []
                for spare in spares:
                    spare.close()
                chan = self.conn.open_channel()
        self._want_spares.set()
        return chan

    def _exec(self, sock: socket.socket, reader: FrameReader, command: str) -> None:
        try:
            chan = self.conn.start(self._channel(), command)
        except HilError as err:
            send_frame(sock, b"E", err.message.encode())
            return
        try:
            send_frame(sock, b"k")
            self._pump(sock, reader, chan)
        finally:
            chan.close()

    def _pump(self, sock: socket.socket, reader: FrameReader, chan: Any) -> None:
        """Carry one command's bytes between its client and its channel until either ends.

        Input for the board waits in ``pending`` while the channel's window is
        full, and the client is not read meanwhile, so a command that stops
        reading its input while it writes output (rsync does) never deadlocks
        the keeper: its output keeps flowing to the client.
        """
        fd = chan.fileno()
        pending = bytearray()
        shut_asked = shut_done = sent_eof = False

        def drain() -> None:
            while chan.recv_ready():
                data = chan.recv(_CHUNK)
                if not data:
                    break
                send_frame(sock, b"o", data)
            while chan.recv_stderr_ready():
                data = chan.recv_stderr(_CHUNK)
                if not data:
                    break
                send_frame(sock, b"e", data)

        def lost() -> None:
            drain()
            send_frame(sock, b"L", (self.conn.lost_reason or "connection lost").encode())

        while True:
            watched = [fd] if pending else [sock, fd]
            ready = select.select(watched, [], [], 0.02 if pending else 0.5)[0]
            if sock in ready:
                if not reader.feed():
                    return  # the client went away: the channel closes with it
                while (frame := reader.pop()) is not None:
                    if frame[0] == b"i":
                        pending += frame[1]
                    elif frame[0] == b"w":
                        shut_asked = True
            while pending and chan.send_ready():
                sent = chan.send(bytes(pending[:_CHUNK]))
                if sent <= 0:
                    break
                del pending[:sent]
            if shut_asked and not pending and not shut_done:
                chan.shutdown_write()
                shut_done = True
            eof = chan.eof_received  # read before the drain: no output may follow "f"
            drain()
            if eof and not sent_eof:
                send_frame(sock, b"f")
                sent_eof = True
            if chan.closed:
                drain()
                if exited(chan):
                    send_frame(sock, b"x", str(chan.exit_status).encode())
                elif not self.conn.alive:
                    lost()
                    return
                send_frame(sock, b"c")
                return
            if not self.conn.alive:
                lost()
                return


def _keeper_main(path: str, status_fd: int) -> None:
    """The keeper process: read the request, fork into the background, connect, serve."""
    request = json.loads(sys.stdin.read())
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.environ.get("HIL_SSH_DEBUG"):
        import logging

        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                            format="%(asctime)s %(threadName)s %(name)s %(message)s")
    status = os.fdopen(status_fd, "w")
    try:
        from hil.sshconn import SshConnection, resolve_endpoint

        ep = resolve_endpoint(request["host"], config_file=request["config_file"],
                              user=request["user"], port=int(request["port"]),
                              connect_timeout=float(request["connect_timeout"]))
        conn = SshConnection(ep, request.get("target")).open()
        keeper = Keeper(conn, Path(path), float(request["persist"]))
        keeper.bind()
    except BaseException as err:  # reported to the session that started us
        status.write(json.dumps({"error": _error_to_json(err)}) + "\n")
        status.close()
        raise SystemExit(1) from None
    status.write(json.dumps({"ok": True, "pid": os.getpid()}) + "\n")
    status.close()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} keeper {os.getpid()} serving "
          f"{ep.display} on {path}", file=sys.stderr, flush=True)
    keeper.serve()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} keeper {os.getpid()} exits"
          + (f": {conn.lost_reason}" if conn.lost_reason else ""), file=sys.stderr, flush=True)


if __name__ == "__main__":
    _keeper_main(sys.argv[1], int(sys.argv[2]))
