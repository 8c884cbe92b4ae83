"""rsync of the checkout to a board over the session's SSH connection (results come back as
one capped tar stream: :func:`hil.backends.jetson.backend.fetch_tree`).

rsync runs locally as usual, but its remote shell (``-e``) is a tiny helper
that hands the remote command to this process through a Unix socket; this
process runs it on a new channel of the already-open, already-verified
Fabric connection's transport and pumps the bytes.  So a sync costs no new TCP
connection, key exchange or authentication (about six round trips each on
the OpenSSH path), the host key was checked once, and there is one
connection to watch for liveness.

What is sent is exactly what git would commit: tracked files plus untracked
files that are not ignored (``git ls-files -co --exclude-standard -z``).  The
list becomes an rsync include list (each file and its parent folders) closed
by ``--exclude='*'``; with ``--delete --delete-excluded`` the remote folder
then mirrors the list: files deleted locally, or newly ignored, vanish on the
board, and rsync never deletes outside the destination folder.  Outside git,
``ssh.excludes`` patterns (plus ``.git/``) filter a plain recursive copy.
Symlinks are copied as links only when relative and inside the checkout;
others are skipped (``--safe-links`` is the second guard).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import select
import shlex
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from hil.errors import ConfigError, ConnectionLostError, SyncFailedError
from hil.ssh.connection import SshConnection, exited

#: The remote-shell helper rsync starts: it forwards its argv, stdin and stdout
#: to the controller's socket.  Standard library only, run with ``python3 -S``.
_HELPER = r'''
import json, os, select, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall((json.dumps(sys.argv[2:]) + "\n").encode())
ins = [0, s]
while ins:
    for r in select.select(ins, [], [])[0]:
        if r == 0:
            data = os.read(0, 65536)
            if data:
                s.sendall(data)
            else:
                s.shutdown(socket.SHUT_WR)
                ins.remove(0)
        else:
            data = s.recv(65536)
            if data:
                view = memoryview(data)
                while view:
                    view = view[os.write(1, view):]
            else:
                ins = []
'''

_STAT = re.compile(r"^(?P<key>[A-Za-z ]+?):\s+(?P<value>[\d,.]+)", re.MULTILINE)
_WILD = re.compile(r"[*?\[]")
#: Top-level folders that must never be a sync destination, even when allowed outside home.
_SYSTEM = {"bin", "boot", "dev", "etc", "lib", "lib64", "proc", "root", "run", "sbin", "srv",
           "sys", "tmp", "usr", "var", "home", "opt", "mnt", "media", "snap"}


def check_remote_dir(remote_dir: str, home: str, *, allow_outside_home: bool = False,
                     target: str | None = None) -> str:
    """The absolute, normalised ``remote_dir``, or :class:`ConfigError` when it is dangerous.

    Refused: empty, ``/``, ``~`` or the home itself, an ancestor of the home,
    ``~user`` forms, a system folder, and anything outside the home unless
    ``allow_outside_home`` (then at least two levels deep).  ``rsync --delete``
    empties whatever this returns, so the rules err on the side of refusing.
    """
    where = f"ssh.remote_dir {remote_dir!r}"
    hint = "use a folder of its own under the board user's home, e.g. 'hil/myproject'"
    raw = remote_dir.strip()
    home = posixpath.normpath(home)
    if not raw:
        raise ConfigError(f"{where} is empty", target=target, hint=hint)
    if raw.startswith("~") and not (raw == "~" or raw.startswith("~/")):
        raise ConfigError(f"{where}: '~user' paths are not supported", target=target, hint=hint)
    path = home + raw[1:] if raw.startswith("~") else raw
    if not path.startswith("/"):
        path = posixpath.join(home, path)
    path = posixpath.normpath(path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if path == "/":
        raise ConfigError(f"{where} is the root folder", target=target, hint=hint)
    if path == home:
        raise ConfigError(f"{where} is the home folder itself ({home}); syncing with --delete "
                          f"would erase it", target=target, hint=hint)
    if home.startswith(path.rstrip("/") + "/"):
        raise ConfigError(f"{where} ({path}) contains the home folder {home}", target=target,
                          hint=hint)
    # A home of "/" (a service account) is no home: nothing counts as inside it.
    inside = home != "/" and path.startswith(home.rstrip("/") + "/")
    if not inside:
        if not allow_outside_home:
            raise ConfigError(f"{where} ({path}) lies outside the home folder {home}",
                              target=target,
                              hint=hint + ", or set ssh.allow_outside_home = true")
        parts = [p for p in path.split("/") if p]
        if len(parts) < 2 or (parts[0] in _SYSTEM and parts[0] not in ("opt", "srv", "home",
                                                                         "mnt", "media")):
            raise ConfigError(f"{where} ({path}) is a system folder", target=target, hint=hint)
    return path


def out_dir(remote_dir: str, run_id: str) -> str:
    """The board folder of one run's results: beside the synced tree, never inside it."""
    return posixpath.join(posixpath.dirname(remote_dir.rstrip("/")), ".hil-out", run_id)


def host_dir(out: str) -> str:
    """The board folder of a run's own files (compose's override and output), beside its
    results folder ``out``: the container writes in ``out``, never here, so nothing the board
    writes for the run can follow a link the container made."""
    return out.rstrip("/") + ".host"


@dataclass(frozen=True)
class SyncStats:
    """What one rsync did, from its ``--stats``."""

    files: int = 0
    transferred: int = 0
    deleted: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    skipped_links: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, seconds: float = 0.0,
              skipped_links: tuple[str, ...] = ()) -> SyncStats:
        """Read rsync's ``--stats`` block (LC_ALL=C)."""
        values: dict[str, int] = {}
        for m in _STAT.finditer(text):
            with contextlib.suppress(ValueError):
                values[m["key"].strip().lower()] = int(float(m["value"].replace(",", "")))
        return cls(
            files=values.get("number of files", 0),
            transferred=values.get("number of regular files transferred", 0),
            deleted=values.get("number of deleted files", 0),
            bytes_sent=values.get("total bytes sent", 0),
            bytes_received=values.get("total bytes received", 0),
            seconds=seconds,
            skipped_links=skipped_links,
        )


@dataclass
class FileList:
    """What of the checkout is synced."""

    #: Paths relative to the root (posix), or None outside git.
    paths: list[str] | None
    skipped_links: list[str] = field(default_factory=list)


def _escape(rel: str) -> str:
    """An rsync filter pattern matching the literal path ``rel``."""
    if _WILD.search(rel):
        return re.sub(r"([*?\[\\])", r"\\\1", rel)
    return rel


def _link_inside(root: Path, rel: str) -> bool:
    """Whether the symlink at ``rel`` is relative and resolves inside ``root``."""
    target = os.readlink(root / rel)
    if os.path.isabs(target):
        return False
    resolved = os.path.normpath(os.path.join(os.path.dirname(rel), target))
    return not (resolved == ".." or resolved.startswith("../") or os.path.isabs(resolved))


def list_files(root: Path, include: Sequence[str] = ()) -> FileList:
    """The files git would commit under ``root``, submodules' included (None outside git).

    ``git ls-files -co`` lists a submodule as one entry (its gitlink), and
    ``--recurse-submodules`` works only without ``-o``; so each checked-out
    submodule is listed by the same rule, recursively, under its path.  A
    submodule that is not checked out (no ``.git`` inside) contributes nothing.
    ``include`` names git-ignored paths (globs under ``root``) that travel too.
    """
    listed = _git_files(root)
    if listed is None:
        return FileList(None)
    listed += included_files(root, include)
    paths: list[str] = []
    skipped: list[str] = []
    for rel in listed:
        rel = rel.rstrip("/")  # an untracked nested repository is listed as "name/"
        full = root / rel
        if full.is_symlink():
            if _link_inside(root, rel):
                paths.append(rel)
            else:
                skipped.append(rel)
            continue
        if full.is_dir():
            if (full / ".git").exists():
                inner = list_files(full)
                paths += [f"{rel}/{p}" for p in inner.paths or ()]
                skipped += [f"{rel}/{p}" for p in inner.skipped_links]
            continue
        paths.append(rel)
    return FileList(sorted(set(paths)), skipped)


def _first_cause(text: str) -> str:
    """The first line that says why (``mkdir: cannot create directory ...: Permission
    denied``), not rsync's summary lines, which only say that something failed."""
    generic = ("rsync error", "connection unexpectedly closed")
    for line in text.splitlines():
        line = re.sub(r"^rsync:\s*(\[\w+\]\s*)?", "", line.strip())
        if line and not any(g in line for g in generic):
            return line[:300]
    return ""


def included_files(root: Path, patterns: Sequence[str]) -> list[str]:
    """Untracked files under the git checkout ``root`` matched by ``patterns``, read as
    ``.gitignore`` lines are, by git itself: ``*.bin`` at any depth, ``/top.bin`` at the
    root only, ``models/`` a folder with every file in it."""
    if not patterns:
        return []
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--others", "--ignored",
             *(f"--exclude={pattern}" for pattern in patterns)],
            capture_output=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return sorted(os.fsdecode(raw) for raw in out.stdout.split(b"\0") if raw)


def _git_files(root: Path) -> list[str] | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "-z"],
            capture_output=True, check=False, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [os.fsdecode(raw) for raw in out.stdout.split(b"\0") if raw]


def tree_digest(root: Path, files: FileList) -> str:
    """A digest of the synced file list with each file's size, mtime and mode ("" outside git).

    Equal digests mean rsync would find nothing to do; the backend stores the
    digest on the board after a sync and skips the next sync when it matches.
    """
    if files.paths is None:
        return ""
    h = hashlib.sha256()
    for rel in files.paths:
        try:
            st = os.lstat(root / rel)
        except FileNotFoundError:
            h.update(b"-" + os.fsencode(rel) + b"\0")
            continue
        link = os.fsencode(os.readlink(root / rel)) if stat.S_ISLNK(st.st_mode) else b""
        h.update(os.fsencode(rel) + f"\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}\0"
                 .encode() + link + b"\0")
    return h.hexdigest()[:32]


def sync_marker(remote_dir: str) -> str:
    """Board file holding the digest of the last completed sync into ``remote_dir``."""
    parent, name = posixpath.split(remote_dir.rstrip("/"))
    return posixpath.join(parent, f".hil-sync-{name}")


def include_rules(paths: Sequence[str]) -> bytes:
    """NUL-separated rsync include rules: every file and each of its parent folders."""
    dirs: set[str] = set()
    for rel in paths:
        parent = posixpath.dirname(rel)
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = posixpath.dirname(parent)
    rules = [f"/{_escape(d)}/" for d in sorted(dirs)] + [f"/{_escape(p)}" for p in paths]
    return b"".join(os.fsencode(r) + b"\0" for r in rules)


class RsyncTunnel:
    """Lets a local rsync use the session's SSH connection as its remote shell."""

    def __init__(self, conn: SshConnection) -> None:
        self.conn = conn
        self._tmp = tempfile.TemporaryDirectory(prefix="hil-rsync-")
        self.socket_path = os.path.join(self._tmp.name, "s")
        helper = Path(self._tmp.name) / "rsh.py"
        helper.write_text(_HELPER, encoding="utf-8")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.socket_path)
        self._server.listen(4)
        self._stop = threading.Event()
        #: Remote standard error of every command run through the tunnel.
        self.remote_stderr: list[str] = []
        self.lost = False
        self._thread = threading.Thread(target=self._accept, name="rsync-tunnel", daemon=True)
        self._thread.start()
        self.rsh = f"{sys.executable} -S {helper} {self.socket_path}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._stop.is_set():  # the wake-up connection from close()
                client.close()
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            buf = b""
            while b"\n" not in buf:
                chunk = client.recv(4096)
                if not chunk:
                    return
                buf += chunk
            line, _, rest = buf.partition(b"\n")
            argv = json.loads(line)
            # ssh semantics: the words after the host name are joined by spaces
            # and run by the remote user's shell (rsync quoted them for that).
            words = list(argv)
            while words and words[0] in ("-l", "-p"):
                words = words[2:]
            command = " ".join(words[1:])
            chan = self.conn.exec(command)
            self._pump(client, chan, rest)
        except Exception as err:  # surfaces as rsync's own error, with this note
            self.remote_stderr.append(f"hil tunnel: {type(err).__name__}: {err}")
        finally:
            with contextlib.suppress(OSError):
                client.close()

    def _pump(self, client: socket.socket, chan: paramiko.Channel, pending: bytes) -> None:
        """Relay until the remote ends, then note its stderr and exit status in
        :attr:`remote_stderr` *before* rsync sees the end, so its failure has them."""
        if pending:
            chan.sendall(pending)
        local_open = True
        err: list[bytes] = []
        try:
            while True:
                watched: list[Any] = [client, chan] if local_open else [chan]
                ready = select.select(watched, [], [], 0.5)[0]
                if client in ready:
                    data = client.recv(1 << 16)
                    if data:
                        chan.sendall(data)
                    else:
                        chan.shutdown_write()
                        local_open = False
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(1 << 16))
                # Read the end flags before draining: output that arrives just before
                # the EOF is buffered by the time the flag shows, never after it.
                eof, closed = chan.eof_received, chan.closed
                if chan.recv_ready():
                    client.sendall(chan.recv(1 << 16))
                    continue
                if eof:
                    break  # EOF from the remote: no more output for rsync
                if closed or not self.conn.alive:
                    self.lost = not exited(chan)
                    break
            deadline = time.monotonic() + 10
            while not exited(chan) and self.conn.alive and time.monotonic() < deadline:
                time.sleep(0.01)
            while chan.recv_stderr_ready():
                err.append(chan.recv_stderr(1 << 16))
            code = chan.recv_exit_status() if exited(chan) else 255
            if err:
                self.remote_stderr.append(b"".join(err).decode("utf-8", "replace"))
                err = []
            if code != 0:
                self.remote_stderr.append(
                    f"hil tunnel: the remote command exited {code}"
                    + (" (closed without an exit status)" if code == -1 else ""))
            client.shutdown(socket.SHUT_WR)
        finally:
            if err:
                self.remote_stderr.append(b"".join(err).decode("utf-8", "replace"))
            chan.close()

    def close(self) -> None:
        """Stop accepting and remove the socket (idempotent).

        The listening socket is closed only once the accepting thread has left
        ``accept()``: closing it under a blocked ``accept()`` let that thread go
        on accepting on the descriptor's number, which the next tunnel reuses,
        and steal that tunnel's connections.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(OSError), \
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as wake:
            wake.connect(self.socket_path)
        self._thread.join(5.0)
        with contextlib.suppress(OSError):
            self._server.close()
        self._tmp.cleanup()


class Rsync:
    """Runs local rsync commands through a :class:`RsyncTunnel`."""

    def __init__(self, conn: SshConnection, target: str | None = None) -> None:
        self.conn = conn
        self.target = target
        self._tunnel: RsyncTunnel | None = None

    @property
    def tunnel(self) -> RsyncTunnel:
        """The tunnel, opened on first use."""
        if self._tunnel is None:
            self._tunnel = RsyncTunnel(self.conn)
        return self._tunnel

    def close(self) -> None:
        """Close the tunnel (idempotent)."""
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None

    @contextlib.contextmanager
    def _rules_file(self, data: bytes) -> Iterator[str]:
        fd, name = tempfile.mkstemp(prefix="hil-include-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            yield name
        finally:
            os.unlink(name)

    def _run(self, args: list[str], what: str, timeout: float,
             skipped: tuple[str, ...] = ()) -> SyncStats:
        tunnel = self.tunnel
        errors_before = len(tunnel.remote_stderr)
        cmd = ["rsync", "-e", tunnel.rsh, *args]
        start = time.monotonic()
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                 check=False, env={**os.environ, "LC_ALL": "C"})
        except FileNotFoundError as err:
            raise SyncFailedError("rsync is not installed on this host", target=self.target,
                                  hint="install rsync (apt install rsync / brew install rsync)"
                                  ) from err
        except subprocess.TimeoutExpired as err:
            raise SyncFailedError(f"{what} timed out after {timeout:.0f} s", target=self.target,
                                  command=shlex.join(cmd)) from err
        seconds = time.monotonic() - start
        remote = "".join(tunnel.remote_stderr[errors_before:])
        if out.returncode != 0:
            if not self.conn.alive or tunnel.lost:
                raise ConnectionLostError(
                    self.conn.lost_reason or f"connection lost during {what}", target=self.target)
            cause = _first_cause(remote + "\n" + out.stderr)  # the board's words first
            raise SyncFailedError(f"{what} failed" + (f": {cause}" if cause else ""),
                                  target=self.target, command=shlex.join(cmd),
                                  exited=out.returncode,
                                  tail=(out.stdout + out.stderr + remote)[-4000:])
        return SyncStats.parse(out.stdout, seconds, skipped)

    def push(self, root: Path, remote_dir: str, *, excludes: Sequence[str] = (),
             timeout: float = 600.0, files: FileList | None = None) -> SyncStats:
        """Mirror the checkout at ``root`` into ``remote_dir`` (absolute) on the board."""
        files = files or list_files(root)
        base = ["-rlpt", "--safe-links", "--delete", "--delete-excluded", "--stats",
                "--rsync-path", f"mkdir -p {shlex.quote(remote_dir)} && rsync"]
        dest = f"hil:{remote_dir.rstrip('/')}/"
        src = f"{root.resolve()}/"
        if files.paths is None:
            args = [*base, "--exclude=.git/", *(f"--exclude={p}" for p in excludes), src, dest]
            return self._run(args, "sync", timeout)
        with self._rules_file(include_rules(files.paths)) as rules:
            args = [*base, "--from0", f"--include-from={rules}", "--exclude=*", src, dest]
            return self._run(args, "sync", timeout, tuple(files.skipped_links))


def human_bytes(n: int) -> str:
    """``1.2 MB``-style size."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover
