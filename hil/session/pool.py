"""A pool of boards (``[ssh] hosts``): its layout and its policies on the controller's members.

A pool is one :class:`hil.session.controller.Controller` session whose members
are its boards, each an ordinary one-board ssh target (:func:`board_spec`):
its own connection, lease, preflight, sync, image and containers.  What a pool
adds are policies, not a session of its own:

* **share**: each healthy board runs its part of the tests (``HIL_SHARE``,
  balanced by recorded durations, computed in its container over the tests
  collected there), so no test runs twice or not at all;
* **quarantine**: a board that fails preflight, lease, sync or build is out for
  the session and the others share its tests; none healthy is the first
  board's fault (:func:`none_healthy`);
* **move lost**: a board lost mid-run has its unfinished tests run on a healthy
  one (:func:`move_lost`);
* ``--hil-confirm-failures`` (:mod:`hil.session.attribution`) and
  ``--hil-hold-on-failure`` (:mod:`hil.session.hold`) after the suite.
"""

from __future__ import annotations

import copy
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from hil.config import TargetSpec
from hil.errors import HilError
from hil.progress import terminal_line
from hil.session.attribution import FLAKY, Attribution, Rerun, label, mark_allure, outcomes_of
from hil.session.hold import Hold
from hil.session.member import Member
from hil.session.shards import shard_levels, share_env
from hil.worker import encode_share

if TYPE_CHECKING:
    from hil.session.controller import Controller, Layout


def board_spec(spec: TargetSpec, host: str) -> TargetSpec:
    """The one-board target of ``host`` in ``spec``'s pool: named after the board."""
    return dataclasses.replace(spec, name=host,
                               ssh=dataclasses.replace(spec.ssh, host=host, hosts=()))


def connect_boards_in_background(spec: TargetSpec) -> None:
    """Start opening every board's connection (see :func:`hil.ssh.connection.connect_in_background`)."""
    from hil.ssh.connection import connect_in_background

    for host in spec.ssh.boards:
        connect_in_background(board_spec(spec, host))


def pool_layout(spec: TargetSpec, tier: int) -> Layout:
    """The pool's boards as members; each container is told its board and its share."""
    from hil.session.controller import Layout

    def env(config: pytest.Config, member: TargetSpec, index: int, count: int) -> dict[str, str]:
        return {**spec.env, "HIL_TARGET": spec.name, "HIL_TIER": str(tier),
                "HIL_BOARD": member.name, "HIL_POOL": ",".join(spec.ssh.boards),
                **share_env(config, [*shard_levels(config), [index, count]])}

    return Layout(name=spec.name, specs=tuple(board_spec(spec, h) for h in spec.ssh.boards),
                  env=env, word="board", pool=True)


def install(controller: Controller) -> None:
    """The pool's policies after the suite, in order: move lost, confirm, hold."""
    config = controller.config
    controller.confirm = bool(config.getoption("hil_confirm_failures", False))
    controller.after_run.append(move_lost)
    if controller.confirm:
        controller.after_run.append(confirm)
    if config.getoption("hil_hold_on_failure", None):
        controller.after_run.append(hold)
    controller.summary_lines.append(summary_lines)


def none_healthy(name: str, members: list[Member]) -> HilError:
    """The first board's fault (its kind and exit code), restated for the whole pool."""
    first = members[0].quarantined
    assert first is not None
    err = copy.copy(first)
    err.message = f"no healthy board in pool '{name}': " + "; ".join(
        f"{m.name}: [{m.quarantined.kind}] {m.quarantined.message}"
        for m in members if m.quarantined is not None)
    err.target, err.command, err.exited = name, None, None
    err.args = (err.message,)
    return err


def move_lost(ctl: Controller, healthy: list[Member]) -> None:
    """A board lost mid-run: the tests it did not finish run on a healthy board now."""
    session = ctl.session
    spare = [m for m in healthy if m.error is None and m.code is not None]
    lost = [m for m in healthy if m.error is not None and m.feeder is not None
            and m.feeder.collected and not ctl.stopping]
    if not spare or not lost or session.shouldfail or session.shouldstop:
        return
    movers: list[Member] = []
    for place, board in enumerate(lost):
        assert board.feeder is not None and board.error is not None
        left = board.feeder.unfinished()
        err, board.error = board.error, None
        board.lost = f"[{err.kind}] {err.message}"
        if not left:
            continue
        target = spare[place % len(spare)]
        mover = Member(name=target.name, spec=target.spec, backend=target.backend,
                       out=target.out / f"moved-from-{board.name}", progress=target.progress,
                       image=target.image)
        plan = ctl.plan(mover)
        mover.plan = dataclasses.replace(plan, run_id=f"{plan.run_id}-from-{board.name}",
                                         env={**plan.env, "HIL_SHARE": encode_share([], {}, left)})
        mover.feeder = ctl.feeder(mover, session, resumed=True)  # counted with the lost run
        board.lost += f"; its {len(left)} unfinished test(s) moved to {target.name}"
        terminal_line(ctl.config, f"hil: board '{board.name}' lost mid-run ({err.kind}); "
                      f"its {len(left)} unfinished test(s) run on '{target.name}'",
                      yellow=True, bold=True)
        movers.append(mover)
    ctl.movers += movers
    for mover in movers:
        mover.start(ctl.events)
    if movers:
        ctl.pump(session, movers, ctl.events, ctl.run_start)


def confirm(ctl: Controller, healthy: list[Member]) -> None:
    """Re-run each failed test on its board and on another one; label the failures."""
    runs = [*healthy, *ctl.movers]
    try:
        _confirm(ctl, healthy)
    finally:
        for run in runs:
            if run.feeder is not None:
                run.feeder.release()


def _confirm(ctl: Controller, healthy: list[Member]) -> None:
    ready = [m for m in healthy if m.error is None]
    by_name = {m.name: m for m in ready}
    failed = {nodeid: by_name[run.name] for run in [*ready, *ctl.movers]
              if run.feeder is not None and run.name in by_name for nodeid in run.feeder.held}
    if not failed:
        return
    wanted: dict[str, list[str]] = {m.name: [] for m in ready}
    other_of: dict[str, str] = {}
    for nodeid, board in failed.items():
        wanted[board.name].append(nodeid)
        if len(ready) > 1:
            other = ready[(ready.index(board) + 1) % len(ready)]
            other_of[nodeid] = other.name
            wanted[other.name].append(nodeid)
    terminal_line(ctl.config, f"hil: confirming {len(failed)} failure(s): each re-run on its "
                  "board and on another", cyan=True)
    jobs = [(m, wanted[m.name]) for m in ready if wanted[m.name]]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        reruns = dict(zip([m.name for m, _ in jobs],
                          pool.map(lambda job: _rerun(ctl, *job), jobs), strict=True))
    for nodeid, board in failed.items():
        same = reruns[board.name]
        second = reruns.get(other_of.get(nodeid, ""))
        other_passed = (None if second is None or second.fault
                        else second.outcomes.get(nodeid) is True)
        found = Attribution(nodeid=nodeid, board=board.name, same=same, other=second,
                            label=label(same.outcomes.get(nodeid) is True, other_passed))
        ctl.attribution[nodeid] = found
        mark_allure(board.out / "allure-results", found)


def _rerun(ctl: Controller, board: Member, ids: list[str]) -> Rerun:
    """One container on ``board`` running exactly ``ids`` (attempt 2); its outcomes."""
    plan = ctl.plan(board)
    plan = dataclasses.replace(
        plan, run_id=f"{plan.run_id}-confirm", local_out=board.out / "confirm",
        env={**plan.env, "HIL_ATTEMPT": "2", "HIL_SHARE": encode_share([], {}, ids)},
        lastfailed=None)
    out = bytearray()
    rerun = Rerun(board=board.name)
    try:
        board.backend.run(plan, board.image, out.extend, lambda data: None)
        board.backend.fetch(plan)
    except HilError as err:
        rerun.fault = f"[{err.kind}] {err.message}"
    rerun.outcomes = outcomes_of(bytes(out))
    log = plan.local_out / "pytest.log"
    rerun.log = log if log.is_file() else None
    return rerun


def hold(ctl: Controller, healthy: list[Member]) -> None:
    """Keep a container like the first failed test's, and its board's lease, for TTL s."""
    from hil.session.hold import hold_failed

    failed = [(m, n) for m in healthy for n, outcome in m.outcomes.items()
              if outcome == "failed" and m.error is None and m.plan is not None]
    if not failed:
        return
    board, nodeid = failed[0]
    assert board.plan is not None
    ttl = float(ctl.config.getoption("hil_hold_on_failure"))
    try:
        ctl.hold = held = hold_failed(board.backend, board.plan, board.image, nodeid, ttl)
    except HilError as err:
        terminal_line(ctl.config, f"hil: could not hold {nodeid} on {board.name}: {err}",
                      red=True)
        return
    for line in _hold_lines(ctl.name, held):
        terminal_line(ctl.config, line, yellow=True, bold=line.startswith("hil:"))


def _hold_lines(name: str, held: Hold) -> list[str]:
    return [f"hil: holding {held.container} on {held.board} for {held.ttl:.0f} s (lease kept) "
            f"for {held.nodeid}",
            f"  shell:   {held.shell_command()}",
            f"  re-run:  {held.rerun_command()}",
            f"  release: hil release --target {name}"]


def summary_lines(ctl: Controller) -> list[tuple[str, dict[str, bool]]]:
    """The pool's part of the terminal summary: attributions, the held container."""
    lines: list[tuple[str, dict[str, bool]]] = []
    if ctl.attribution:
        lines.append(("failure attribution (--hil-confirm-failures):", {}))
        for found in ctl.attribution.values():
            lines.append((f"  {found.label.upper()}: {found.nodeid} ({found.detail()})",
                          {"yellow": found.label == FLAKY, "red": found.label != FLAKY}))
    if ctl.hold is not None:
        lines += [(line, {"yellow": True}) for line in _hold_lines(ctl.name, ctl.hold)]
    return lines


__all__ = ["board_spec", "connect_boards_in_background", "install", "none_healthy",
           "pool_layout"]
