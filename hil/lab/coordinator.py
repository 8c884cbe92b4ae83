"""One connection to a labgrid coordinator, driven through labgrid's own Python client.

Why the Python API rather than the ``labgrid-client`` command line: a session
holds its places for minutes and beats a heartbeat on them; one gRPC stream
kept open costs nothing per call, where each ``labgrid-client`` call would
start a Python interpreter and import grpc (about a second on a 2-core CI
machine) and print text meant for people (``reserve`` prints a token inside
prose, ``show`` a ``pformat`` of a dict) that we would have to parse.  The
coordinator's gRPC calls (``CreateReservation``, ``AcquirePlace``,
``ReleasePlace`` with ``fromuser``...) are labgrid's stable protocol, and
:class:`labgrid.remote.client.ClientSession` keeps the places and resources
current from the coordinator's stream.

labgrid's client is asyncio; it runs here on a private event loop in a daemon
thread, and every call from our (synchronous) code waits on it with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import re
import secrets
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from hil.errors import HilError, LabError, LabUnavailableError

_T = TypeVar("_T")

#: The coordinator's default port (labgrid's own).
DEFAULT_PORT = 20408
#: Our sessions' holder names: ``HOST.hil-TOKEN/USER`` (a person's are ``HOST/USER``).
HOLDER = re.compile(r"^[^/]*\.hil-(?P<token>[0-9a-f]+)/[^/]+$")


@dataclass(frozen=True)
class PlaceView:
    """A place as the coordinator last told us (plain data)."""

    name: str
    tags: dict[str, str]
    acquired: str | None
    reservation: str | None
    changed: float
    comment: str
    #: The resources the place holds while acquired: (exporter, group, class, name).
    acquired_resources: tuple[tuple[str, str, str, str], ...]


def coordinator_address(given: str) -> str:
    """The address to dial: ``given``, else ``$LG_COORDINATOR``; a missing port is 20408."""
    address = given or os.environ.get("LG_COORDINATOR", "")
    if not address:
        raise LabError("no coordinator: set [labgrid] coordinator or $LG_COORDINATOR")
    return address if ":" in address.rsplit("]", 1)[-1] else f"{address}:{DEFAULT_PORT}"


def _import_labgrid() -> Any:
    try:
        from labgrid.remote import client  # labgrid is an optional extra
    except ImportError as err:
        raise LabUnavailableError(
            f"labgrid is not installed ({err}): pip install 'pytest-hil[lab]'") from err
    return client


class Coordinator:
    """A live connection to one coordinator, as a holder named ``HOST.hil-TOKEN/USER``.

    ``with Coordinator(address) as lab:`` connects (within ``timeout``) and
    closes.  :attr:`holder` is what the coordinator records as the acquirer of
    the places this connection acquires.
    """

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        self.address = coordinator_address(address)
        self.timeout = timeout
        self.token = secrets.token_hex(6)
        self.holder = f"{socket.gethostname()}.hil-{self.token}/{getpass.getuser()}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hil-lab", daemon=True)
        self._session: Any = None
        self._pb2: Any = None

    def __enter__(self) -> Coordinator:
        client = _import_labgrid()
        from labgrid.remote.generated import labgrid_coordinator_pb2

        self._pb2 = labgrid_coordinator_pb2
        host, user = self.holder.split("/")

        class HilClient(client.ClientSession):  # type: ignore[misc,name-defined]
            """labgrid's client under our holder name (it reads LG_HOSTNAME otherwise)."""

            def gethostname(self) -> str:
                return host

            def getuser(self) -> str:
                return user

        self._thread.start()

        async def start() -> Any:
            session = HilClient(address=self.address, loop=self._loop)
            await session.start()
            return session

        try:
            self._session = self.run(start, what="connect")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the stream and stop the loop (idempotent)."""
        if self._session is not None:
            session, self._session = self._session, None

            async def stop() -> None:
                await session.stop()
                await session.close()

            # closing a dead connection: nothing is left to close
            with contextlib.suppress(LabError, RuntimeError):
                self.run(stop, what="close")
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    # -- calls ---------------------------------------------------------------------------

    def run(self, make: Callable[[], Awaitable[_T]], *, what: str, timeout: float | None = None) -> _T:
        """Run ``make()`` on the client's loop and wait for it (at most ``timeout`` s)."""
        limit = self.timeout if timeout is None else timeout
        if not self._thread.is_alive():
            raise LabError(f"coordinator {self.address}: {what}: not connected")
        async def bounded() -> _T:
            return await asyncio.wait_for(make(), limit)

        future = asyncio.run_coroutine_threadsafe(bounded(), self._loop)
        try:
            return future.result(limit + 1)
        except (TimeoutError, asyncio.TimeoutError) as err:
            future.cancel()
            raise LabError(f"coordinator {self.address}: {what} got no answer within {limit:.0f} s") from err
        except HilError:
            raise
        except Exception as err:  # grpc.aio.AioRpcError and labgrid's ServerError
            details = getattr(err, "details", None)
            text = details() if callable(details) else str(err)
            raise LabError(f"coordinator {self.address}: {what} failed: {text}") from err

    def call(self, method: str, request: str, what: str, **fields: Any) -> Any:
        """One unary call on the coordinator's stub (``CreateReservation`` ...), then a sync.

        The sync makes the place updates the call caused arrive before it returns.
        """
        session = self._session
        message = getattr(self._pb2, request)(**fields)

        async def go() -> Any:
            response = await getattr(session.stub, method)(message)
            await session.sync_with_coordinator()
            return response

        return self.run(go, what=what)

    @property
    def pb2(self) -> Any:
        """labgrid's generated protobuf module (requests and filters are built from it)."""
        return self._pb2

    def places(self) -> dict[str, PlaceView]:
        """Every place, by name, as the stream last told us."""
        def view(place: Any) -> PlaceView:
            return PlaceView(name=place.name, tags=dict(place.tags), acquired=place.acquired or None,
                             reservation=place.reservation or None, changed=float(place.changed),
                             comment=place.comment or "",
                             acquired_resources=tuple(tuple(p) for p in place.acquired_resources))

        async def snapshot() -> dict[str, PlaceView]:
            return {name: view(p) for name, p in self._session.places.items()}

        return self.run(snapshot, what="read the places")

    def resource(self, path: tuple[str, str, str, str]) -> dict[str, Any] | None:
        """The parameters of the resource at ``path`` (exporter, group, class, name), if published."""
        exporter, group, cls, name = path

        async def read() -> dict[str, Any] | None:
            entry = self._session.resources.get(exporter, {}).get(group, {}).get(name)
            if entry is None or entry.cls != cls:
                return None
            return dict(entry.params)

        return self.run(read, what="read a resource")

    def resources(self) -> list[tuple[tuple[str, str, str, str], dict[str, Any]]]:
        """Every published resource: its path and parameters."""
        async def read() -> list[tuple[tuple[str, str, str, str], dict[str, Any]]]:
            return [((exp, grp, entry.cls, name), dict(entry.params))
                    for exp, groups in self._session.resources.items()
                    for grp, group in groups.items()
                    for name, entry in group.items() if "cls" in entry.data]

        return self.run(read, what="read the resources")

    def reservations(self) -> list[dict[str, Any]]:
        """Every reservation (token, owner, prio, state, filters, allocations, created)."""
        client = _import_labgrid()
        response = self.call("GetReservations", "GetReservationsRequest", "list the reservations")
        return [client.Reservation.from_pb2(r).asdict() | {"token": r.token}
                for r in response.reservations]
