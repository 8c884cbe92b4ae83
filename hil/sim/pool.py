"""The pool of simulated boards (``hil sim up --boards N``): ``hil-sim-jetson-1`` ... ``-N``.

Each pool board is a whole board of its own, beside the rig's single board
(which stays as it is): a network namespace and veth pair (10.213.I.2), a
dockerd with the ``nvidia`` runtime on its own loop-mounted disk, its own host
key and sshd, and its own hostname, home and ``/tmp``.  They share the user,
the client key, the rig's ssh_config and the image cache.

Images are made once: board 0's engine holds the current base and l4t images,
``docker save`` writes both to one cached tarball (keyed by their digest) and
each pool engine ``docker load``s it, which costs a read of that file and no
debootstrap or commit.  A board whose engine already holds them is left alone.
"""

from __future__ import annotations

import pwd
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from hil.errors import ExitCode, HilError
from hil.sim.board import Board
from hil.sim.engine import DockerEngine, own_identity_config
from hil.sim.faults import BoardFaults
from hil.sim.images import DIGEST_LABEL, ImageCache
from hil.sim.layout import MAX_POOL_BOARDS, RigLayout

_T = TypeVar("_T")


class PoolSizeError(HilError):
    """``--boards N`` outside 0..MAX_POOL_BOARDS."""

    exit_code = ExitCode.USAGE_ERROR
    kind = "sim-pool-size"


class PoolImages:
    """Puts the rig's base and l4t images into pool engines from one saved tarball."""

    def __init__(self, cache: ImageCache, source: DockerEngine) -> None:
        self.cache = cache
        #: The engine the images are saved from (board 0's, made current by ``up``).
        self.source = source
        self._lock = threading.Lock()

    @property
    def bundle(self) -> Path:
        """The saved images, keyed by the l4t image's digest (which covers the base's)."""
        return self.cache.cache_dir / f"pool-images-{self.cache.l4t_digest()}.tar"

    def needed(self, engine: DockerEngine) -> bool:
        """True when ``engine`` lacks a current base or l4t image."""
        return self.cache.ensure_images_needed(engine, l4t=True)

    def _ensure_bundle(self) -> Path | None:
        """The saved tarball, saved from the source engine if missing (None: source can't)."""
        with self._lock:
            bundle = self.bundle
            if bundle.exists():
                return bundle
            if not self.source.is_up() or self.needed(self.source):
                return None
            partial = bundle.with_suffix(".tar.partial")
            started = time.monotonic()
            self.source.docker(
                ["save", "-o", str(partial), self.cache.base_image, self.cache.l4t_image], timeout=600
            )
            partial.replace(bundle)
            for stale in bundle.parent.glob("pool-images-*.tar"):
                if stale != bundle:
                    stale.unlink(missing_ok=True)
            print(f"hil sim: saved the images for the pool ({time.monotonic() - started:.1f} s)",
                  file=sys.stderr, flush=True)
            return bundle

    def load_into(self, engine: DockerEngine) -> list[str]:
        """Put the current images into ``engine``; returns those made."""
        bundle = self._ensure_bundle()
        if bundle is None:  # no current source: make them from the rootfs tarball
            self.cache.ensure_tarball()
            return self.cache.ensure_images(engine, l4t=True)
        engine.docker(["load", "-q", "-i", str(bundle)], timeout=900)
        engine.docker(["image", "prune", "-f", "--filter", f"label={DIGEST_LABEL}"], check=False)
        return [self.cache.base_image, self.cache.l4t_image]


def engine_binds(layout: RigLayout) -> tuple[tuple[Path, Path], ...]:
    """The board's own home and /tmp, bound for its engine as for its sshd.

    A session syncs the checkout into the board's home and hands the engine
    paths there (the source mount, the worker, the results folder): the
    engine must see the home the session's SSH login sees.
    """
    if layout.home_dir is None or layout.tmp_dir is None:
        return ()
    home = Path(pwd.getpwnam(layout.user).pw_dir)
    return ((layout.home_dir, home), (layout.tmp_dir, Path("/tmp")))


class PoolBoard(BoardFaults):
    """One pool board: its engine, disk, namespace and link, sshd; up, down, status, faults.

    The fault methods and ``with`` blocks are those of :class:`hil.sim.Rig` for
    the single board (:class:`~hil.sim.faults.BoardFaults`), under this board's own fault lock.
    """

    def __init__(self, layout: RigLayout) -> None:
        super().__init__(layout)
        self.engine = DockerEngine(
            layout.jetson,
            group=layout.docker_group,
            runtimes=("nvidia",),
            config=own_identity_config(layout.board_dir / "key.json"),
            binds=engine_binds(layout),
        )

    @property
    def board_engine(self) -> DockerEngine:
        """The board's engine (:attr:`engine`)."""
        return self.engine

    @property
    def index(self) -> int:
        """The board's number in the pool (1..N)."""
        return self.layout.index

    # -- up / down ----------------------------------------------------------

    def traces(self) -> bool:
        """True when any part of the board runs or exists (so ``down`` has work)."""
        return bool(
            self.engine.pid() or self.board.sshd_pid() or self.disk.mounted()
            or self.network.namespace_exists() or self.network.link_exists()
        )

    def up(self, images: PoolImages) -> list[str]:
        """Start every part that is not running (idempotent); returns what was started.

        ``prepare`` must have run (keys, sshd config, face).
        """
        done = self.start_parts()
        if images.needed(self.engine):
            done += images.load_into(self.engine)
        self.wait_for_login()
        return done

    def down(self) -> list[str]:
        """Stop and remove every part (idempotent); returns what was stopped. Keeps the disk file."""
        stopped = self.stop_parts()
        self._forget_injected()
        return stopped

    # -- status -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The board's parts, up or down, with their details (JSON-ready)."""
        lay = self.layout
        engine_up = self.engine.is_up()
        disk_mounted = self.disk.mounted()
        link_up = self.network.link_exists() and self.network.link_up()
        parts: dict[str, dict[str, Any]] = {
            "engine": {"up": engine_up, "pid": self.engine.pid(), "host": lay.jetson.host},
            "disk": {
                "up": disk_mounted,
                "free_mb": self.disk.free_mb() if disk_mounted else None,
                "limited": disk_mounted and self.disk.limited(),
            },
            "namespace": {"up": self.network.namespace_exists(), "name": lay.netns},
            "link": {"up": link_up, "host_if": lay.host_if, "netem": self.network.netem()},
            "sshd": {"up": self.board.sshd_up(), "pid": self.board.sshd_pid(),
                     "address": f"{lay.board_address}:{lay.ssh_port}"},
            "images": {"up": engine_up and all(
                self.engine.image_exists(ref) for ref in (lay.base_image, lay.l4t_image))},
        }
        faults = self.active_faults()
        return {
            "up": parts["namespace"]["up"] and disk_mounted,
            "healthy": all(p["up"] for p in parts.values()) and not faults,
            "address": lay.board_address,
            "faults": faults,
            "parts": parts,
        }

    def active_faults(self) -> list[str]:
        """The faults in place now (a stopped sshd or engine of a running board, link, netem, disk)."""
        if not (self.network.namespace_exists() and self.disk.mounted()):
            return []
        return self.part_faults()

    # -- faults -------------------------------------------------------------

    def restore_faults(self) -> bool:
        """Undo the board's faults, whoever injected them, unless a live fault block holds them.

        Returns False when another session is inside a fault block on this board.
        """
        return self._restore_unless_held(self.traces)


def _each(boards: Sequence[PoolBoard], work: Callable[[PoolBoard], _T]) -> list[_T]:
    """``work`` on every board at once (threads: each waits on daemons); the first error raised."""
    if not boards:
        return []
    with ThreadPoolExecutor(max_workers=len(boards), thread_name_prefix="hil-sim-board") as ex:
        futures = [ex.submit(work, board) for board in boards]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]
    return [f.result() for f in futures]


class BoardPool:
    """Boards 1..N beside the rig's single board; N is what the last ``up --boards N`` asked."""

    def __init__(self, layout: RigLayout) -> None:
        self.layout = layout
        self._boards: dict[int, PoolBoard] = {}

    def board(self, index: int) -> PoolBoard:
        """Pool board ``index`` (1..MAX_POOL_BOARDS); the same object on every call."""
        if index not in self._boards:
            self._boards[index] = PoolBoard(self.layout.pool_board(index))
        return self._boards[index]

    def size(self) -> int:
        """How many pool boards the rig has (0 when none, or when it is down)."""
        try:
            text = self.layout.pool_size_file.read_text().strip()
        except OSError:
            return 0
        return int(text) if text.isdigit() else 0

    @property
    def boards(self) -> list[PoolBoard]:
        """The pool's boards, 1..N."""
        return [self.board(i) for i in range(1, self.size() + 1)]

    def __getitem__(self, index: int) -> PoolBoard:
        """``pool[I]`` is board ``hil-sim-jetson-I`` (1-based, as the aliases)."""
        if not 1 <= index <= self.size():
            raise IndexError(f"the pool has boards 1..{self.size()}, not {index}")
        return self.board(index)

    def __len__(self) -> int:
        return self.size()

    @staticmethod
    def check_size(boards: int) -> None:
        """Raise :class:`PoolSizeError` unless ``boards`` is 0..MAX_POOL_BOARDS."""
        if not 0 <= boards <= MAX_POOL_BOARDS:
            raise PoolSizeError(f"--boards must be 0..{MAX_POOL_BOARDS}, not {boards}")

    def prepare(self, boards: int) -> list[Board]:
        """Keys, sshd configs and faces of boards 1..``boards``; returns their :class:`Board`s."""
        self.check_size(boards)
        chosen = [self.board(i) for i in range(1, boards + 1)]
        for board in chosen:
            board.board.prepare()
        return [b.board for b in chosen]

    def up(self, boards: int, images: PoolImages) -> dict[str, str]:
        """Bring boards 1..``boards`` up at once and any beyond down; says what each did, by alias.

        A board inside another session's fault block is left as it is.
        """
        self.check_size(boards)
        self.layout.pool_size_file.parent.mkdir(parents=True, exist_ok=True)
        self.layout.pool_size_file.write_text(f"{boards}\n")
        extra = [self.board(i) for i in range(boards + 1, MAX_POOL_BOARDS + 1) if self.board(i).traces()]
        gone = {b.ssh_alias: "took it down" for b in extra}
        _each(extra, PoolBoard.down)

        def bring_up(board: PoolBoard) -> str:
            with board.fault_lock_if_free() as free:
                if not free:
                    return "left as it is (a live session's fault holds it)"
                done = board.up(images)
                return f"started {', '.join(done)}" if done else ""

        chosen = [self.board(i) for i in range(1, boards + 1)]
        said = _each(chosen, bring_up)
        return {**gone, **{b.ssh_alias: text for b, text in zip(chosen, said, strict=True) if text}}

    def down(self) -> list[str]:
        """Take every pool board down (those beyond N too); returns the boards stopped."""
        running = [self.board(i) for i in range(1, MAX_POOL_BOARDS + 1) if self.board(i).traces()]
        stopped = _each(running, PoolBoard.down)
        self.layout.pool_size_file.unlink(missing_ok=True)
        return [b.ssh_alias for b, parts in zip(running, stopped, strict=True) if parts]

    def status(self) -> dict[str, dict[str, Any]]:
        """Each pool board's status, by alias."""
        return {b.ssh_alias: b.status() for b in self.boards}

    def restore_injected(self) -> None:
        """Undo the faults injected through these objects."""
        for board in self._boards.values():
            board.restore_injected()

    def restore_faults(self) -> list[str]:
        """Undo every pool board's faults but those inside a live fault block; returns those skipped."""
        return [b.ssh_alias for b in self.boards if not b.restore_faults()]
