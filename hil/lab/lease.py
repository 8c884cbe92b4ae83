"""A session's places: reserved by tags, acquired, beaten while held, released on every path.

labgrid's reservations give one place each; a request for N boards makes N
reservations at the target's priority and waits (up to ``timeouts.lease``)
until all are allocated, then acquires those places and cancels the
reservations (an acquired place is ours; a reservation left behind would
block the place for a minute after its release).

labgrid's acquired places never expire, so while we hold them a heartbeat
thread writes the place tag ``hil_lease = TOKEN_SINCE_BEAT`` every
``lab_ttl / 4`` seconds.  Our holder name is ``HOST.hil-TOKEN/USER``
(:data:`hil.lab.coordinator.HOLDER`); a place held by such a name whose beat
(or, before the first beat, whose last change) is older than ``lab_ttl`` is
stale, and :func:`release_stale` frees it with ``ReleasePlace(fromuser=that
holder)``, labgrid's release-from: the coordinator releases it only if that
same holder still has it.  A place a person or another tool holds (any other
name) is never touched.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from hil.config import LabgridSpec, TargetSpec
from hil.errors import ConfigError, DeviceBusyError, LabError
from hil.lab.coordinator import HOLDER, Coordinator, PlaceView

#: The tag holding a session's heartbeat on each place it holds.
LEASE_TAG = "hil_lease"
#: labgrid's ReservationState values (labgrid.remote.common.ReservationState).
WAITING, ALLOCATED, ACQUIRED, EXPIRED, INVALID = range(5)


@dataclass(frozen=True)
class LabMember:
    """One acquired place and how to reach its board (its ``NetworkService``)."""

    place: str
    address: str
    username: str
    port: int

    def target(self, spec: TargetSpec) -> TargetSpec:
        """The one-board target of this place: ``spec`` with the place's address, user and port."""
        return replace(spec, name=self.place, labgrid=None, ssh=replace(
            spec.ssh, host=self.address, hosts=(), user=self.username or spec.ssh.user,
            port=self.port or spec.ssh.port))


def beat_age(place: PlaceView, now: float) -> float | None:
    """Seconds since the heartbeat of the pytest-hil session holding ``place`` (None: not ours)."""
    match = HOLDER.match(place.acquired or "")
    if match is None:
        return None
    token, _, beat = _lease_tag(place)
    if token == match["token"] and beat is not None:
        return now - beat
    return now - place.changed  # acquired, no beat yet: counted from the acquisition


def _lease_tag(place: PlaceView) -> tuple[str, float | None, float | None]:
    parts = place.tags.get(LEASE_TAG, "").split("_")
    try:
        return parts[0], float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        return "", None, None


def held_since(place: PlaceView) -> float | None:
    """When the pytest-hil session holding ``place`` acquired it (None: unknown or not ours)."""
    match = HOLDER.match(place.acquired or "")
    token, since, _ = _lease_tag(place)
    return since if match is not None and token == match["token"] else None


def release_stale(lab: Coordinator, ttl: float) -> list[str]:
    """Free the places whose pytest-hil holder stopped beating ``ttl`` seconds ago; their names."""
    freed = []
    now = time.time()
    for name, place in lab.places().items():
        age = beat_age(place, now)
        if age is None or age <= ttl or place.acquired == lab.holder:
            continue
        lab.call("ReleasePlace", "ReleasePlaceRequest", f"release stale place {name}",
                 placename=name, fromuser=place.acquired)
        after = lab.places().get(name)
        if after is not None and after.acquired is None:
            lab.call("SetPlaceTags", "SetPlaceTagsRequest", f"clear {name}'s heartbeat",
                     placename=name, tags={LEASE_TAG: ""})
            freed.append(name)
    return freed


def _matches(place: PlaceView, want: LabgridSpec) -> bool:
    if want.places:
        return place.name in want.places
    return all(place.tags.get(k) == v for k, v in want.tags.items())


class LabLease:
    """The places of one session: :meth:`acquire` them, :meth:`release` them (idempotent)."""

    def __init__(self, spec: TargetSpec, say: Callable[[str], None],
                 lease_timeout: float | None = None) -> None:
        assert spec.labgrid is not None
        self.spec = spec
        self.want: LabgridSpec = spec.labgrid
        self.say = say
        self.timeout = lease_timeout or spec.timeouts.lease
        self.ttl = spec.timeouts.lab_ttl
        self.lab = Coordinator(self.want.coordinator, timeout=max(10.0, spec.timeouts.connect))
        self.tokens: list[str] = []
        self.held: list[str] = []
        self.since = 0.0
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        #: Seconds from the request to the places acquired.
        self.waited = 0.0

    # -- acquire -------------------------------------------------------------------------

    def acquire(self) -> list[LabMember]:
        """Reserve, wait for, acquire and read the places; the heartbeat starts. Raises on a fault."""
        started = time.monotonic()
        self.lab.__enter__()
        try:
            freed = release_stale(self.lab, self.ttl)
            if freed:
                self.say(f"lab: freed {', '.join(freed)} (their session stopped beating)")
            allocated = self._wait_allocated(self._reserve())
            for name in allocated:
                self.lab.call("AcquirePlace", "AcquirePlaceRequest", f"acquire {name}", placename=name)
                self.held.append(name)
            self.since = time.time()
            self._beat_once()
            self._cancel_reservations()
            members = [self._member(name) for name in self.held]
        except BaseException:
            self.release()
            raise
        self._beat = threading.Thread(target=self._beating, name="hil-lab-heartbeat", daemon=True)
        self._beat.start()
        self.waited = time.monotonic() - started
        self.say(f"lab: acquired {', '.join(self.held)} in {self.waited:.1f} s "
                 f"(as {self.lab.holder})")
        return members

    def _reserve(self) -> list[str]:
        want = self.want
        filters = [{"name": p} for p in want.places] if want.places else [dict(want.tags)]
        if not want.places:
            count = want.count
            if count == 0:  # "all": every matching place free now, at least one
                count = max(1, sum(1 for p in self.lab.places().values()
                                   if _matches(p, want) and p.acquired is None))
            filters = filters * count
        known = [p for p in self.lab.places().values() if _matches(p, want)]
        if len(known) < len(filters):
            raise ConfigError(f"target '{self.spec.name}': the coordinator has {len(known)} place(s) "
                              f"for {want.wants}, {len(filters)} wanted")
        pb2 = self.lab.pb2
        for fltr in filters:
            response = self.lab.call(
                "CreateReservation", "CreateReservationRequest", "create a reservation",
                filters={"main": pb2.Reservation.Filter(filter=fltr)}, prio=float(want.priority))
            self.tokens.append(response.reservation.token)
        return self.tokens

    def _wait_allocated(self, tokens: list[str]) -> list[str]:
        deadline = time.monotonic() + self.timeout
        shown = ""
        next_sweep = time.monotonic() + min(5.0, self.ttl / 2)
        while True:
            states = {}
            for token in tokens:
                res = self.lab.call("PollReservation", "PollReservationRequest", "poll a reservation",
                                    token=token).reservation
                if res.state in (EXPIRED, INVALID):
                    raise LabError(f"reservation {token} for {self.want.wants} became "
                                   f"{'expired' if res.state == EXPIRED else 'invalid'}")
                states[token] = res.allocations.get("main", "") if res.state == ALLOCATED else ""
            if all(states.values()):
                return [states[t] for t in tokens]
            line = self._queue_line(states)
            if line != shown:
                self.say(line)
                shown = line
            if time.monotonic() >= deadline:
                raise DeviceBusyError(f"{self.want.wants}: not allocated within {self.timeout:.0f} s "
                                      f"({line})", target=self.spec.name)
            if time.monotonic() >= next_sweep:  # a dead session's places come back within the TTL
                freed = release_stale(self.lab, self.ttl)
                if freed:
                    self.say(f"lab: freed {', '.join(freed)} (their session stopped beating)")
                next_sweep = time.monotonic() + min(5.0, self.ttl / 2)
            self._stop.wait(min(0.5, max(0.0, deadline - time.monotonic())))

    def _queue_line(self, states: dict[str, str]) -> str:
        mine = set(states)
        waiting = sorted((r for r in self.lab.reservations() if r["state"] == "waiting"),
                         key=lambda r: (-r["prio"], r["created"]))
        first = next((i for i, r in enumerate(waiting) if r["token"] in mine), len(waiting))
        ahead = sum(1 for r in waiting[:first] if r["token"] not in mine)
        got = sum(1 for v in states.values() if v)
        return (f"lab: waiting for {self.want.wants}: {got} of {len(states)} allocated, "
                f"{ahead} reservation(s) ahead in the queue")

    def _member(self, name: str) -> LabMember:
        place = self.lab.places()[name]
        for path in place.acquired_resources:
            if path[2] == "NetworkService":
                params = self.lab.resource(path)
                if params is not None and params.get("address"):
                    return LabMember(place=name, address=str(params["address"]),
                                     username=str(params.get("username") or ""),
                                     port=int(params.get("port") or 0))
        raise LabError(f"place {name} has no NetworkService among its resources "
                       f"({', '.join('/'.join(p) for p in place.acquired_resources) or 'none'})")

    # -- heartbeat -----------------------------------------------------------------------

    def _beat_once(self) -> None:
        value = f"{self.lab.token}_{self.since:.0f}_{time.time():.0f}"
        for name in self.held:
            self.lab.call("SetPlaceTags", "SetPlaceTagsRequest", f"beat on {name}",
                          placename=name, tags={LEASE_TAG: value})

    def _beating(self) -> None:
        interval = max(0.5, self.ttl / 4)
        while not self._stop.wait(interval):
            try:
                self._beat_once()
            except LabError as err:  # the next beat may get through; the TTL is the margin
                self.say(f"lab: heartbeat failed: {err.message}")

    # -- release -------------------------------------------------------------------------

    def _cancel_reservations(self) -> None:
        tokens, self.tokens = self.tokens, []
        for token in tokens:
            with contextlib.suppress(LabError):  # expired or already gone: nothing to cancel
                self.lab.call("CancelReservation", "CancelReservationRequest", "cancel a reservation",
                              token=token)

    def release(self) -> None:
        """Stop the heartbeat, release our places (only if still ours), cancel reservations."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=10)
        held, self.held = self.held, []
        try:
            for name in held:
                try:
                    self.lab.call("ReleasePlace", "ReleasePlaceRequest", f"release {name}",
                                  placename=name, fromuser=self.lab.holder)
                    self.lab.call("SetPlaceTags", "SetPlaceTagsRequest", f"clear {name}'s heartbeat",
                                  placename=name, tags={LEASE_TAG: ""})
                except LabError as err:  # the TTL frees it if the coordinator missed this
                    self.say(f"lab: could not release {name}: {err.message}")
            if held:
                self.say(f"lab: released {', '.join(held)}")
            self._cancel_reservations()
        finally:
            self.lab.close()
