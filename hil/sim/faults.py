"""Faults of one simulated board: the plain methods, their ``with`` blocks and the lock they hold.

A board (the rig's single board, or one of the pool) injects each fault on
one of its parts (``stop_sshd``/``start_sshd``, ``cut_link``/``restore_link``,
``set_netem``/``clear_netem``, ``stop_jetson_engine``/``start_jetson_engine``,
``limit_engine_disk``/``restore_engine_disk``); each pair is also a ``with``
block that holds the board's fault lock, so two test sessions sharing the rig
inject faults on one board one at a time.  A block's lock also tells
``restore`` and a repairing ``up`` that a live session owns the fault: a
crashed holder's lock is gone with it.

A fault injected with a plain method holds the lock too, from the injection
until the last such fault of the object is restored, so no other process's
``up`` or ``restore`` undoes it half-way either.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from hil.locking import open_lock_file, try_lock
from hil.sim._proc import wait_until
from hil.sim.layout import RigLayout
from hil.sim.parts import BoardParts

_B = TypeVar("_B", bound="BoardFaults")

#: Every fault a board has, in the order ``restore_injected`` undoes them.
FAULTS = ("link", "netem", "disk", "engine", "sshd")


class BoardFaults(BoardParts):
    """A board's faults: plain inject/restore methods and ``with`` blocks, under its fault lock."""

    _fault_depth: int = 0
    _fault_fd: int | None = None
    #: True while plain injections (not a ``with`` block) hold one level of the lock.
    _fault_hold: bool = False

    def __init__(self, layout: RigLayout) -> None:
        super().__init__(layout)
        #: The faults this object injected and has not restored.
        self._injected: set[str] = set()

    @property
    def fault_lock_path(self) -> Path:
        """The host-wide lock this board's fault blocks hold (board 0's: ``/run/hil-sim.faults.lock``)."""
        return self.layout.fault_lock_file

    # -- the plain methods ----------------------------------------------------

    def stop_sshd(self) -> None:
        """Stop the board's sshd (open sessions survive, new connections are refused)."""
        self._inject("sshd")
        self.board.stop_sshd()

    def start_sshd(self) -> None:
        """Start the board's sshd again and wait until it listens."""
        self.board.start_sshd()
        self._restored("sshd")

    def cut_link(self) -> None:
        """Cut the board's link: packets to the board vanish (connects time out)."""
        self._inject("link")
        self.network.cut()

    def restore_link(self) -> None:
        """Restore the board's link."""
        self.network.restore()
        self._restored("link")

    def set_netem(self, delay_ms: float = 0, loss_pct: float = 0) -> str:
        """Delay packets ``delay_ms`` each way and drop ``loss_pct`` %; returns the mechanism.

        ``tc netem`` on both veth ends where the kernel has it, else an
        iptables NFQUEUE served by :mod:`hil.sim.nfqueue` (same effect).
        """
        self._inject("netem")
        return self.network.set_netem(delay_ms, loss_pct)

    def clear_netem(self) -> None:
        """Remove delay and loss from the board's link."""
        self.network.clear_netem()
        self._restored("netem")

    def stop_jetson_engine(self) -> None:
        """Stop the board's engine (its dockerd)."""
        self._inject("engine")
        self.board_engine.stop()

    def start_jetson_engine(self) -> None:
        """Start the board's engine again and wait until it answers."""
        self.board_engine.start()
        self._restored("engine")

    def limit_engine_disk(self, free_mb: int) -> int:
        """Leave the board engine's data root only ``free_mb`` MiB free; returns df's figure."""
        self._inject("disk")
        return self.disk.limit(free_mb)

    def restore_engine_disk(self) -> None:
        """Give the board's engine its whole disk back."""
        self.disk.restore()
        self._restored("disk")

    def restore_injected(self) -> None:
        """Undo every fault this object injected and has not restored."""
        restorers = {
            "sshd": self.start_sshd,
            "link": self.restore_link,
            "netem": self.clear_netem,
            "engine": self.start_jetson_engine,
            "disk": self.restore_engine_disk,
        }
        for name in FAULTS:
            if name in self._injected:
                restorers[name]()

    def _restore_unless_held(self, present: Callable[[], bool] = lambda: True) -> bool:
        """Undo the board's faults, whoever injected them, unless a live fault block holds them.

        Only when ``present()`` says the board has parts to repair.  Returns
        False when another session is inside a fault block on this board.
        """
        with self.fault_lock_if_free() as free:
            if free and present():
                self._injected.update(FAULTS)
                if not self.network.link_exists():
                    self._injected.discard("link")
                if not self.disk.mounted():
                    self._injected.discard("disk")
                self.restore_injected()
            return free

    # -- the lock -------------------------------------------------------------

    def _acquire(self, timeout: float) -> None:
        if self._fault_depth == 0:
            fd = open_lock_file(self.fault_lock_path)
            try:
                wait_until(lambda: try_lock(fd), timeout,
                           f"the rig's fault lock {self.fault_lock_path}", interval=0.2)
            except BaseException:
                os.close(fd)
                raise
            self._fault_fd = fd
        self._fault_depth += 1

    def _release(self) -> None:
        self._fault_depth -= 1
        if self._fault_depth == 0 and self._fault_fd is not None:
            os.close(self._fault_fd)  # releases the flock
            self._fault_fd = None

    @contextlib.contextmanager
    def fault_lock(self, timeout: float = 600.0) -> Iterator[None]:
        """Hold the board's fault lock for the block (waits up to ``timeout``); re-entrant."""
        self._acquire(timeout)
        try:
            yield
        finally:
            self._release()

    def _inject(self, fault: str) -> None:
        """Record ``fault`` as injected by this object; the first one takes the lock."""
        if not self._fault_hold:
            self._acquire(600.0)
            self._fault_hold = True
        self._injected.add(fault)

    def _restored(self, fault: str) -> None:
        """``fault`` is undone; when none is left, the injections' hold on the lock goes."""
        self._injected.discard(fault)
        if not self._injected and self._fault_hold:
            self._fault_hold = False
            self._release()

    def _forget_injected(self) -> None:
        """The board is gone (``down``): nothing is left to restore, the hold goes."""
        self._injected.clear()
        if self._fault_hold:
            self._fault_hold = False
            self._release()

    @contextlib.contextmanager
    def fault_lock_if_free(self) -> Iterator[bool]:
        """Hold the fault lock for the block if nobody does; yields whether it is held.

        False means a live session is inside a fault block on this board: leave
        its fault alone, the block undoes it.
        """
        if self._fault_depth:
            yield True
            return
        fd = open_lock_file(self.fault_lock_path)
        try:
            if not try_lock(fd):
                yield False
                return
            self._fault_fd, self._fault_depth = fd, 1
            try:
                yield True
            finally:
                self._fault_fd, self._fault_depth = None, 0
        finally:
            os.close(fd)

    # -- the blocks -----------------------------------------------------------

    @contextlib.contextmanager
    def sshd_stopped(self: _B) -> Iterator[_B]:
        """Within the block the board's sshd is stopped."""
        with self.fault_lock():
            self.stop_sshd()
            try:
                yield self
            finally:
                self.start_sshd()

    @contextlib.contextmanager
    def link_cut(self: _B) -> Iterator[_B]:
        """Within the block the board's link is cut."""
        with self.fault_lock():
            self.cut_link()
            try:
                yield self
            finally:
                self.restore_link()

    @contextlib.contextmanager
    def netem(self, delay_ms: float = 0, loss_pct: float = 0) -> Iterator[str]:
        """Within the block the link has delay and loss; yields the mechanism used."""
        with self.fault_lock():
            via = self.set_netem(delay_ms, loss_pct)
            try:
                yield via
            finally:
                self.clear_netem()

    @contextlib.contextmanager
    def jetson_engine_stopped(self: _B) -> Iterator[_B]:
        """Within the block the board's engine is stopped."""
        with self.fault_lock():
            self.stop_jetson_engine()
            try:
                yield self
            finally:
                self.start_jetson_engine()

    @contextlib.contextmanager
    def engine_disk_limited(self, free_mb: int) -> Iterator[int]:
        """Within the block the engine sees ``free_mb`` MiB free; yields df's figure."""
        with self.fault_lock():
            free = self.limit_engine_disk(free_mb)
            try:
                yield free
            finally:
                self.restore_engine_disk()
