"""A board reached over SSH and made ready for a run: the first half of the jetson backend.

:class:`BoardBackend` owns the session's connection to the board and what
preflight learnt about it, and prepares a run: the lease (taken in parallel
with preflight), the checkout (:mod:`hil.backends.jetson.checkout`), the
dependencies image (:mod:`hil.backends.jetson.build`) and its CUDA probe, the
compose services.  The checks themselves are read in
:mod:`hil.backends.jetson.preflight`.  Running the tests and fetching their
results is :class:`hil.backends.jetson.backend.SshBackend`'s.
"""

from __future__ import annotations

import abc
import posixpath
import time
from pathlib import Path

from hil.backends.base import Backend, PreflightReport, RunPlan, worker_digest, worker_files
from hil.backends.compose import ComposeProject
from hil.backends.images import ImageRecipe, recipe
from hil.backends.jetson.build import build_on_board
from hil.backends.jetson.checkout import sync_checkout
from hil.backends.jetson.preflight import (
    BoardState,
    CheckList,
    Findings,
    judge_gpu,
    judge_preflight,
    preflight_command,
    sections,
)
from hil.config import TargetSpec
from hil.errors import (
    ConfigError,
    ConnectionLostError,
    HilError,
    TargetUnhealthyError,
    UnreachableError,
)
from hil.progress import Progress
from hil.result import Result
from hil.ssh.connection import SshConnection as Connection
from hil.ssh.lease import LEASE_DIR, Holder, Lease
from hil.ssh.sync import Rsync, SyncStats, host_dir, out_dir


def lib_folder(files: dict[str, bytes]) -> str:
    """The worker's folder on the board, relative to the home folder (named by content)."""
    return posixpath.join(".cache", "pytest-hil", f"lib-{worker_digest(files)}")


class BoardBackend(Backend):
    """A board's connection, preflight and preparation (lease, sync, image, services)."""

    #: Take the lease during preflight, in parallel (sessions); ``hil doctor`` turns it off.
    eager_lease = True
    #: The board's lease folder (tests of the lease itself use one of their own).
    lease_dir = LEASE_DIR
    #: Run the GPU probe even when the board holds a result for the same boot/engine/image.
    fresh_probe = False

    def __init__(self, spec: TargetSpec, root: Path, progress: Progress, *,
                 rebuild: bool = False, lease_timeout: float | None = None) -> None:
        super().__init__(spec, root, progress, rebuild=rebuild, lease_timeout=lease_timeout)
        self.conn: Connection | None = None
        self.lease: Lease | None = None
        self.rsync: Rsync | None = None
        self.board = BoardState()
        self.recipe: ImageRecipe | None = None
        self.report: PreflightReport | None = None
        self.last_sync: SyncStats | None = None
        self._failures: list[HilError] = []
        #: The services beside the tests (``[compose]``), once started by prepare().
        self.compose: ComposeProject | None = None

    @abc.abstractmethod
    def probe_gpu(self) -> str:
        """The output of ``scripts/gpu-probe.sh`` for the present image."""

    # -- connection -------------------------------------------------------------------------
    def connect(self) -> Connection:
        """The session's connection: the one opened at configure time, else a new one."""
        if self.conn is None or not self.conn.alive:
            if self.conn is not None:
                self.conn.close()
            from hil.ssh.connection import connect

            conn = connect(self.spec)
            self.conn = conn
            if self.rsync is not None:
                self.rsync.close()
            self.rsync = Rsync(conn, self.spec.name)
        return self.conn

    def reconnect(self, within: float) -> Connection:
        """Open a new connection, retrying for ``within`` seconds (after a lost link)."""
        deadline = time.monotonic() + within
        delay = 0.2
        while True:
            try:
                return self.connect()
            except (UnreachableError, ConnectionLostError):
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)  # back-off between connection attempts, not a readiness wait
                delay = min(delay * 2, 2.0)

    def _lost(self, what: str) -> ConnectionLostError:
        reason = self.conn.lost_reason if self.conn is not None else ""
        return ConnectionLostError("connection to the board lost" + (f" {what}" if what else ""),
                                   target=self.spec.name, tail=reason)

    # -- preflight --------------------------------------------------------------------------
    def inspect(self) -> PreflightReport:
        """Run every preflight check; connection faults raise, check failures are reported."""
        spec = self.spec
        start = time.monotonic()
        try:
            self.recipe = recipe(spec, self.root)
        except ConfigError:
            self.recipe = None
        tag = self.recipe.tag if self.recipe is not None else ""
        with self.phase("connect"):
            conn = self.connect()
        if self.eager_lease and self.lease is None:
            self.lease = Lease(conn, timeout=self.lease_timeout, target=spec.name,
                               on_wait=self._on_lease_wait, lease_dir=self.lease_dir).start()
        command = preflight_command(spec, tag, lib_folder(worker_files()), self.fresh_probe)
        res = conn.run(command, timeout=max(60.0, spec.timeouts.connect * 6))
        sec = sections(res.stdout)
        if "end" not in sec:
            raise TargetUnhealthyError("the preflight script did not finish on the board",
                                       target=spec.name, exited=res.exited,
                                       tail=res.tail(20))
        ep = conn.endpoint
        rows = judge_preflight(spec, Findings(
            sec, user=ep.user, where=f"{ep.user}@{ep.hostname}:{ep.port}", alias=ep.alias,
            host_key=conn.host_key, tag=tag), self.board)
        self._failures = rows.failures
        self.timings["preflight"] = round(time.monotonic() - start, 3)
        self.report = rows.report()
        return self.report

    def preflight(self) -> PreflightReport:
        """Inspect the board and raise the first required failure's error."""
        report = self.inspect()
        if self._failures:
            err = self._failures[0]
            if not err.tail:
                err.tail = report.table()
            raise err
        return report

    def _on_lease_wait(self, holder: Holder) -> None:
        self.progress.step(f"board '{self.spec.name}' is leased by {holder.describe()}; "
                           f"waiting up to {self.lease_timeout:.0f} s")

    # -- prepare ----------------------------------------------------------------------------
    def _prepare(self, plan: RunPlan) -> str:
        """Take the lease, sync the checkout, build the image when its tag is absent."""
        if self.report is None:
            self.preflight()
        with self.phase("lease"):
            self.acquire_lease()
        with self.phase("sync"):
            self.sync()
        if not self.spec.compose.file:
            with self.phase("image"):
                return self.image()
        self.compose = ComposeProject(
            self.spec, self._shell, engine_root=self.board.remote_dir, local_root=self.root,
            override_path=posixpath.join(host_dir(out_dir(self.board.remote_dir, plan.run_id)),
                                         "compose", "override.json"),
            local_dir=plan.local_out / "compose", progress=self.progress,
            judge_owners=False,  # under the board's lease every other project is stale
            rebuild=self.rebuild)
        with self.phase("services"):
            self.compose.read()
        # A tests' service with its own build: compose builds it, no dependencies image.
        tag = self.compose.tests_image
        if not tag:
            with self.phase("image"):
                tag = self.image()
        with self.phase("services"):
            self.compose.up(tag)
        return tag

    def _shell(self, command: str, timeout: float) -> Result:
        """One shell command on the board (compose's :data:`~hil.backends.compose.Shell`)."""
        return self.connect().run(command, timeout=timeout)

    def acquire_lease(self) -> Lease:
        """Hold the board's lease (waiting up to ``lease_timeout``); DeviceBusyError if not."""
        conn = self.connect()
        if self.lease is None or (self.lease.acquired and not self.lease.held):
            self.lease = Lease(conn, timeout=self.lease_timeout, target=self.spec.name,
                               on_wait=self._on_lease_wait, lease_dir=self.lease_dir)
        self.lease.wait()
        return self.lease

    def sync(self) -> SyncStats:
        """rsync the checkout to the board's remote_dir (nothing when the board has it)."""
        self.connect()
        assert self.rsync is not None
        self.last_sync = sync_checkout(self.rsync, self.spec, self.root, self.board, self.progress)
        return self.last_sync

    def image(self) -> str:
        """The image tag, built on the board unless already there (or ``rebuild``)."""
        spec = self.spec
        rec = self.recipe or recipe(spec, self.root)
        self.recipe = rec
        tag = rec.tag
        if self.board.image_present and not self.rebuild:
            self.image_id = self.board.image_id
            self.progress.step(f"image {tag} is up to date on the board (content hash)")
        else:
            self.build(rec)
        if not self.board.gpu_checked:
            self._late_gpu_check()
        return tag

    def build(self, rec: ImageRecipe) -> None:
        """``docker build`` on the board from the synced tree; streams the log (build.log)."""
        self.progress.step(f"building {rec.tag} on {self.spec.name} from {rec.dockerfile} "
                           f"({len(rec.inputs)} input file(s))")
        with self.phase("build"):
            image_id = build_on_board(self.connect(), self.spec, rec, self.board.remote_dir,
                                      self.build_line, self.build_log)
        self.image_id = image_id
        self.board.image_present = True
        self.board.image_id = image_id
        self.board.gpu_checked = False  # a new image: probed again

    def _late_gpu_check(self, raise_first: bool = True) -> None:
        """The CUDA probe when preflight could not run it: right after the build.

        Its row replaces preflight's in :attr:`report`; ``raise_first=False``
        (``hil doctor``) records a failure instead of raising it.
        """
        rows = CheckList(self.spec.name)
        judge_gpu(self.spec, self.recipe.tag if self.recipe is not None else "", self.board,
                  self.probe_gpu(), rows)
        if self.report is not None:  # the table shows the probe's row, not preflight's
            self.report = PreflightReport(
                self.report.target,
                tuple(c for c in self.report.checks if c.name != "gpu") + tuple(rows.checks),
                {**self.report.facts, **rows.facts})
        self._failures += rows.failures
        if rows.failures and raise_first:
            err = rows.failures[0]
            if not err.tail and self.report is not None:
                err.tail = self.report.table()
            raise err

    def worker_lib(self) -> tuple[str, dict[str, bytes]]:
        """The folder of the worker's files on the board (content-addressed) and the files."""
        files = worker_files()
        return posixpath.join(self.board.home, lib_folder(files)), files
