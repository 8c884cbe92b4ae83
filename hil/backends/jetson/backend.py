"""The Jetson target: a board's Docker engine reached over one SSH connection.

Every step travels over the same SSH connection (:mod:`hil.ssh.connection`, a Fabric
connection opened in the background from configure time on), on channels of
their own; round trips are what a remote session costs, so:

* preflight is one remote shell script (identity, L4T, tools, ``docker
  info``, free space, swap, image and worker presence, and the worker's CUDA
  probe in a container of the dependencies image started with the target's
  runtime), while the lease is requested in parallel on another channel;
* sync is rsync tunnelled through the same connection (:mod:`hil.ssh.sync`);
* a present image costs nothing more (its presence came with preflight);
* the run is one script: it installs the worker when the board lacks it, writes
  ``lastfailed.json``, removes stale containers, runs the container in its own
  process group and reports exit code and OOM state on a marker line;
* telemetry samples on its own channel; the results come back after the run's
  end marker on the same channel (a separate tar fetch when that failed).

Commands are started with exec want-reply off, saving a round trip each.  The
scripts are ``.sh`` files of this package (``scripts/``), their parameters
quoted in one place (:func:`hil.backends.jetson.shell.board_command`).

The package, one job a module: ``board`` (the connection, preflight and the
steps that make a board ready), ``preflight`` (the script's output read into
checks), ``checkout`` (the sync), ``build`` (the image build), ``facts``
(L4T/JetPack), ``shell`` (quoting), and this module: the run and its results.
"""

from __future__ import annotations

import base64
import contextlib
import os
import posixpath
import shlex
import time
from pathlib import Path
from typing import Any

from hil.backends.base import (
    CONTAINER_LABEL,
    CONTAINER_OUT,
    ByteSink,
    RunEnd,
    RunPlan,
    RunRequest,
    worker_command,
)
from hil.backends.compose import ServiceWatch
from hil.backends.jetson.board import BoardBackend
from hil.backends.jetson.preflight import gpu_probe_command
from hil.backends.jetson.shell import board_command
from hil.config import TargetSpec
from hil.errors import ConnectionLostError, HilError, RunTimedOutError
from hil.progress import Progress
from hil.ssh.connection import SshConnection as Connection
from hil.ssh.sync import host_dir, out_dir, sync_marker
from hil.ssh.telemetry import Telemetry
from hil.worker.protocol import NONCE_FILE

#: Marker that starts the run script's last line on standard error.
END_MARKER = b"\x1ehil-end "
#: How many results folders of earlier runs stay on the board.
KEEP_RUNS = 10
#: Results folders up to this size (KiB) come back on the run's own channel.
INBAND_RESULTS_KB = 65536


def fetch_cap() -> int:
    """The most bytes a run's results may bring back (``HIL_FETCH_MAX_MB``, default 1024):
    the container chooses what it writes, the host's disk is not its to fill."""
    try:
        megabytes = float(os.environ.get("HIL_FETCH_MAX_MB", "") or 1024)
    except ValueError:
        megabytes = 1024.0
    return int(max(megabytes, 1.0) * 1024 * 1024)


def extract_results(stream: Any, local: Path, skipped: list[str] | None = None) -> list[str]:
    """Extract a results tar stream into ``local``; returns the file names.

    Members that would land outside ``local`` (absolute, ``..``, links,
    devices) are skipped, and so is what passes :func:`fetch_cap` in all
    (named in ``skipped``).  An empty stream is no results folder on the board.
    """
    import tarfile

    local.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    room = fetch_cap()
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                name = posixpath.normpath(member.name)
                if name == "." or name.startswith(("/", "..")) or not (
                        member.isfile() or member.isdir()):
                    continue
                if member.isfile() and member.size > room:
                    if skipped is not None:
                        skipped.append(name)
                    continue
                room -= member.size if member.isfile() else 0
                member.name = name
                if hasattr(tarfile, "data_filter"):
                    tar.extract(member, local, filter="data")
                else:  # pragma: no cover - Python < 3.10.12 / 3.11.4
                    tar.extract(member, local)
                if member.isfile():
                    names.append(name)
    except tarfile.ReadError:
        if names:
            raise
    return names


def fetch_tree(conn: Connection, remote: str, local: Path, timeout: float = 600.0,
               skipped: list[str] | None = None) -> list[str]:
    """Copy the board folder ``remote`` into ``local`` as one tar stream; returns the names.

    One round trip, where rsync's protocol takes about eight: results folders
    are new on every run, so rsync's delta transfer has nothing to save.
    """
    import tarfile

    chan = conn.exec(board_command("fetch", remote))
    chan.settimeout(timeout)
    try:
        return extract_results(chan.makefile("rb"), local, skipped)
    except (tarfile.ReadError, OSError) as err:
        if not conn.alive:
            raise ConnectionLostError(conn.lost_reason or "connection lost while fetching",
                                      target=conn.target) from err
        raise
    finally:
        chan.close()


def _lib_b64(files: dict[str, bytes]) -> str:
    """The worker's files as a base64 tar stream, for the scripts that install them."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        folders = sorted({posixpath.dirname(name) for name in files} - {""})
        for folder in folders:  # the package's folder, made before its files
            entry = tarfile.TarInfo(folder)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(entry)
        for name, data in sorted(files.items()):
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(data), 0o644
            tar.addfile(member, io.BytesIO(data))
    return base64.b64encode(buf.getvalue()).decode()


def _create_log(req: RunRequest) -> str:
    """Where compose's output goes when it creates the tests' service (shown on failure)."""
    return posixpath.join(host_dir(req.out), "compose", "create.out")


def _pgid_file(req: RunRequest) -> str:
    """Where the run script keeps its process group id while the container runs."""
    return posixpath.join(posixpath.dirname(req.out), req.name + ".pgid")


class _Reader:
    """A read-only file over a buffer, without copying it (for tarfile's stream mode)."""

    def __init__(self, data: bytearray) -> None:
        self.view = memoryview(data)
        self.pos = 0

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative)."""
        end = len(self.view) if size < 0 else min(len(self.view), self.pos + size)
        chunk = bytes(self.view[self.pos:end])
        self.pos = end
        return chunk


class _EndFilter:
    """Passes standard error through, minus the run script's end marker line.

    What follows the marker line is the results folder as a tar stream
    (:attr:`trailer`), so that a run's results come back on its own channel.
    """

    def __init__(self, sink: ByteSink, marker: bytes = END_MARKER) -> None:
        self.sink = sink
        #: The marker with the run's nonce: a line a test forges without it passes through.
        self.marker = marker
        self.held = b""
        self.end: list[str] | None = None
        self.trailer = bytearray()

    def feed(self, data: bytes) -> None:
        if self.end is not None:
            self.trailer += data
            return
        marker = self.marker
        data = self.held + data  # held: a few bytes at most (see below)
        self.held = b""
        idx = data.find(marker)
        if idx >= 0:
            if idx:
                self.sink(data[:idx])
            rest = data[idx + len(marker):]
            line, nl, after = rest.partition(b"\n")
            if nl:
                self.end = line.decode("utf-8", "replace").split()
                self.trailer += after
            elif len(rest) < 256:  # the rest of the end line is on its way
                self.held = data[idx:]
            else:  # no end line is that long: not ours after all
                self.sink(data[idx:])
            return
        # Hold back a tail that could be the start of the marker.
        for n in range(min(len(marker) - 1, len(data)), 0, -1):
            if marker.startswith(data[-n:]):
                self.held, data = data[-n:], data[:-n]
                break
        if data:
            self.sink(data)

    def flush(self) -> None:
        if self.held and self.end is None:
            self.sink(self.held)
        self.held = b""


class SshBackend(BoardBackend):
    """Runs the suites in a container on a board's Docker engine over SSH.

    Reaching the board and making it ready (connection, preflight, lease,
    sync, image) is :class:`~hil.backends.jetson.board.BoardBackend`'s; this
    class runs the test container and brings its results back.
    """

    def __init__(self, spec: TargetSpec, root: Path, progress: Progress, *,
                 rebuild: bool = False, lease_timeout: float | None = None) -> None:
        super().__init__(spec, root, progress, rebuild=rebuild, lease_timeout=lease_timeout)
        #: Files fetched by the last fetch().
        self.fetched: list[str] = []
        #: (container name, pgid file) of a run that did not end cleanly: cleaned up in fetch.
        self._dirty: tuple[str, str] | None = None
        self._telemetry: Telemetry | None = None
        #: Run ids whose container was started (their results folder exists on the board).
        self._started: set[str] = set()
        #: (run id, segment) of the runs whose results came back on the run's channel.
        self._inband: set[tuple[str, int]] = set()


    def probe_gpu(self) -> str:
        """Run ``scripts/gpu-probe.sh`` for the present image (installing the worker if absent)."""
        assert self.recipe is not None
        lib, files = self.worker_lib()
        command = gpu_probe_command(self.spec, self.recipe.tag, lib, self.fresh_probe,
                                    None if self.board.lib_present else _lib_b64(files))
        res = self.connect().run(command, timeout=max(120.0, self.spec.timeouts.connect * 12))
        if "rc=70" not in res.stdout.splitlines():
            self.board.lib_present = True
        return str(res.stdout)

    # -- run --------------------------------------------------------------------------------
    def request(self, plan: RunPlan, image: str) -> RunRequest:
        """The test container for ``plan``, with paths on the board."""
        lib, _ = self.worker_lib()
        return RunRequest(
            name=plan.container_name,
            image=image,
            command=worker_command(plan.pytest_args),
            env={**plan.env, "HIL_OUT": CONTAINER_OUT, "HOME": "/tmp"},
            workdir=f"{self.spec.docker.workdir}/{plan.subdir}".rstrip("/"),
            src=self.board.remote_dir,
            out=out_dir(self.board.remote_dir, plan.run_id),
            labels={CONTAINER_LABEL: plan.run_id},
            runtime=self.spec.docker.runtime,
            network=self.spec.docker.network,
            memory=self.spec.docker.memory,
            src_mount=self.spec.docker.workdir,
            lib=lib,
            user=f"{self.board.uid}:{self.board.gid}" if self.board.uid else "",
            remove=False,  # the run script removes it, after reading OOMKilled
        )

    def _run_command(self, plan: RunPlan, req: RunRequest) -> str:
        """``scripts/run.sh`` for ``req``, in a session of its own (its process group is killable).

        The worker's files travel only when preflight found the board without them.
        """
        lib, files = self.worker_lib()
        marker = self.board.pending_marker  # the sync before this run completed: recorded
        return "exec setsid -w " + board_command(
            "run", *req.docker_cli(),
            OUT=req.out, HOST=host_dir(req.out), NAME=req.name, PIDF=_pgid_file(req), LIB=lib,
            LIB_B64=None if self.board.lib_present else _lib_b64(files),
            SYNC_MARKER=sync_marker(self.board.remote_dir) if marker else None,
            SYNC_DIGEST=marker or None, LASTFAILED=plan.lastfailed, LABEL=CONTAINER_LABEL,
            KEEP=str(KEEP_RUNS), INBAND_KB=str(INBAND_RESULTS_KB), END=END_MARKER.decode(),
            NONCE_FILE=NONCE_FILE,
            # [compose]: the test container is made by compose as the tests' service.
            CREATE=self.compose.tests_script(req, errors_to=_create_log(req))
            if self.compose is not None else None)

    def run(self, plan: RunPlan, image: str, on_stdout: ByteSink, on_stderr: ByteSink) -> RunEnd:
        """Run the test container on the board, streaming its output as it arrives."""
        conn = self.connect()
        req = self.request(plan, image)
        command = self._run_command(plan, req)
        self._dirty = (req.name, _pgid_file(req))
        self._started.add(plan.run_id)
        plan.local_out.mkdir(parents=True, exist_ok=True)
        if self.board.telemetry:
            self._telemetry = Telemetry(conn, self.board.telemetry,
                                        plan.local_out / "telemetry.jsonl").start()
        errs = _EndFilter(on_stderr, END_MARKER + plan.nonce.encode() + b" ")
        start = time.monotonic()
        chan: Any = None
        watch: ServiceWatch | None = None
        try:
            chan = conn.exec(command)
            chan.sendall(plan.nonce.encode() + b"\n")  # for run.sh, on stdin: see run.sh
            if self.compose is not None:  # a service that stops ends the run
                watch = self.compose.watch(lambda: conn.run(
                    f"docker kill {shlex.quote(req.name)}", timeout=30))
            code = conn.stream(chan, on_stdout, errs.feed,
                               deadline=start + self.spec.timeouts.run)
        except ConnectionLostError as err:
            raise self._lost("") from err
        except TimeoutError:
            self._kill(req, conn)
            raise RunTimedOutError(f"the run exceeded {self.spec.timeouts.run:.0f} s and was "
                                   "killed", target=self.spec.name) from None
        except KeyboardInterrupt:
            self._kill(req, conn)
            raise
        finally:
            if watch is not None:
                watch.stop()
            errs.flush()
            if chan is not None:
                chan.close()
            if self._telemetry is not None:
                self._telemetry.stop()
            self.timings["run"] = round(time.monotonic() - start, 3)
        if errs.end is not None and errs.trailer:
            import tarfile

            with contextlib.suppress(tarfile.TarError, OSError):
                # Read in place: a copy of a results folder of 10,000 tests costs megabytes.
                self.fetched = extract_results(_Reader(errs.trailer), plan.local_out)
                self._inband.add((plan.run_id, plan.segment))
            errs.trailer = bytearray()
        if errs.end is None:
            # The script died before its last line: the container may still be there.
            return RunEnd(exit_code=code, reason=f"the run script on the board exited {code} "
                          "without reporting")
        self._dirty = None
        self.board.lib_present = True
        rc_text = errs.end[0] if errs.end else str(code)
        oom = len(errs.end) > 1 and errs.end[1] == "true"
        exit_code = int(errs.end[2]) if len(errs.end) > 2 and errs.end[2].lstrip("-").isdigit() \
            else (int(rc_text) if rc_text.lstrip("-").isdigit() else code)
        reason = ""
        # As on a local engine: SIGKILL (docker kill, OOM) is a kill, the rest the worker's end.
        if oom or exit_code == 137:
            reason = "the test container was killed" + (" (OOM)" if oom else
                                                         f" (exit {exit_code})")
        if self.compose is not None:
            self.compose.check()
        return RunEnd(exit_code=exit_code, oom_killed=oom, reason=reason)

    def _kill(self, req: RunRequest, conn: Connection) -> None:
        """Kill the run's process group and remove its container (best effort, bounded)."""
        with contextlib.suppress(HilError, OSError):
            conn.run(board_command("kill", req.name, _pgid_file(req)), timeout=30)
            self._dirty = None

    def stop(self) -> None:
        """Kill the run going on the board (its process group, its container), if any; after a
        lost link, over a new connection.  Best effort and bounded."""
        dirty = self._dirty
        if dirty is None:
            return
        with contextlib.suppress(HilError, OSError):
            conn = self.conn
            if conn is None or not conn.alive:
                conn = self.reconnect(max(30.0, self.spec.timeouts.connect * 3))
            conn.run(board_command("kill", *dirty), timeout=60)
            self._dirty = None

    # -- fetch ------------------------------------------------------------------------------
    def fetch(self, plan: RunPlan) -> None:
        """Copy the run's results folder back (after a lost link, over a new connection)."""
        if self.compose is not None and self.conn is not None and self.conn.alive:
            with contextlib.suppress(HilError, OSError):
                self.compose.save_logs()
        if plan.run_id not in self._started:
            return  # nothing ran on the board
        if (plan.run_id, plan.segment) in self._inband:
            self.timings["fetch"] = 0.0
            return  # the results came back with the run
        start = time.monotonic()
        if self.conn is None or not self.conn.alive:
            self.progress.step(f"reconnecting to {self.spec.name} to fetch the results")
            self.reconnect(max(30.0, self.spec.timeouts.connect * 3))
        conn = self.connect()
        remote = out_dir(self.board.remote_dir, plan.run_id)
        try:
            skipped: list[str] = []
            self.fetched = fetch_tree(conn, remote, plan.local_out, skipped=skipped)
            if skipped:
                self.progress.step(f"{len(skipped)} result file(s) past the fetch cap "
                                   f"(HIL_FETCH_MAX_MB) left on the board: "
                                   f"{', '.join(skipped[:5])}")
        except ConnectionLostError as err:
            raise ConnectionLostError(f"connection lost while fetching results: {err.message}",
                                      target=self.spec.name) from err
        self.timings["fetch"] = round(time.monotonic() - start, 3)

    def close(self) -> None:
        """Stop a run still going, telemetry; release the lease, close the connection
        (idempotent)."""
        self.stop()
        if self._telemetry is not None:
            self._telemetry.stop()
            self._telemetry = None
        if self.compose is not None:  # before the lease goes: the next holder finds none
            with contextlib.suppress(HilError, OSError):
                self.compose.down()
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        if self.rsync is not None:
            self.rsync.close()
            self.rsync = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
