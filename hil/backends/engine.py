"""Docker Engine API clients: a lean one for the calls of every run, the Docker SDK for the rest.

Every run makes the same few Engine API calls (ping, image check, create,
attach, start, remove).  Over a unix socket, which Colima, Docker Desktop and
dockerd all offer, :class:`SocketEngine` makes them with ``http.client`` and
costs a few milliseconds to load; the Docker SDK (with requests and paramiko,
about 150 ms to import) is loaded only for what is rare: image builds and
engines reached over TCP or SSH (:class:`SdkEngine`).  Both raise
:class:`EngineError`, so the backend never imports the SDK to catch its errors.
"""

from __future__ import annotations

import abc
import contextlib
import http.client
import json
import socket
import urllib.parse
from collections.abc import Iterator
from typing import IO, Any

#: The Engine API version the lean client speaks (Docker 20.10 and later).
API_VERSION = "v1.41"

#: One chunk of a container's output: (stdout, stderr), one of them None.
OutputChunk = tuple["bytes | None", "bytes | None"]


class EngineError(Exception):
    """An Engine API call failed (the engine answered with an error, or did not answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class EngineNotFoundError(EngineError):
    """The image or container named in the call does not exist."""


class OutputStream(abc.ABC):
    """A running container's standard output and error, chunk by chunk."""

    @abc.abstractmethod
    def __iter__(self) -> Iterator[OutputChunk]:
        """Chunks as they arrive, until the container's streams close."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop reading (the container keeps running)."""


class Engine(abc.ABC):
    """The Engine API calls pytest-hil makes, whatever carries them."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise :class:`EngineError` unless the engine answers."""

    @abc.abstractmethod
    def version(self) -> dict[str, Any]:
        """``GET /version``."""

    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """``GET /info`` (slow on some engines: only for the runtime check)."""

    @abc.abstractmethod
    def containers(self, label: str) -> list[dict[str, Any]]:
        """All containers, running or not, that carry ``label``."""

    @abc.abstractmethod
    def inspect_image(self, name: str) -> dict[str, Any]:
        """The image ``name``; :class:`EngineNotFoundError` when absent."""

    @abc.abstractmethod
    def create(self, config: dict[str, Any], name: str) -> str:
        """Create a container from an Engine API config; returns its id."""

    @abc.abstractmethod
    def attach(self, cid: str) -> OutputStream:
        """Attach to the container's output (before start, so nothing is missed)."""

    @abc.abstractmethod
    def start(self, cid: str) -> None:
        """Start a created container."""

    @abc.abstractmethod
    def wait(self, cid: str, timeout: float) -> dict[str, Any]:
        """Wait for the container to stop; returns ``{"StatusCode": ...}``."""

    @abc.abstractmethod
    def inspect_container(self, cid: str) -> dict[str, Any]:
        """The container's full description (``State.OOMKilled`` and the like)."""

    @abc.abstractmethod
    def kill(self, cid: str) -> None:
        """Send SIGKILL to the container."""

    @abc.abstractmethod
    def remove(self, cid: str) -> None:
        """Remove the container, killing it first if it runs."""

    def build(self, context: IO[bytes], *, dockerfile: str, tag: str, buildargs: dict[str, str],
              network: str, labels: dict[str, str], timeout: float) -> Iterator[dict[str, Any]]:
        """Build an image from a tar context; yields the engine's progress messages.

        Builds are rare (the image is reused until its inputs change), so they
        go through the Docker SDK on every kind of engine.
        """
        sdk = SdkEngine(self.url, self.timeout)
        try:
            yield from sdk.build(context, dockerfile=dockerfile, tag=tag, buildargs=buildargs,
                                 network=network, labels=labels, timeout=timeout)
        finally:
            sdk.close()

    def close(self) -> None:  # noqa: B027 - optional hook, nothing held by default
        """Release connections (idempotent)."""


def open_engine(url: str, timeout: float) -> Engine:
    """The client for ``url``: :class:`SocketEngine` for ``unix://``, the Docker SDK otherwise."""
    if url.startswith("unix://"):
        return SocketEngine(url, timeout)
    return SdkEngine(url, timeout)


# -- the lean client: http.client over a unix socket ------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    """An HTTP connection whose transport is a unix socket."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("docker", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _MultiplexedStream(OutputStream):
    """The attach stream of a container without a TTY: 8-byte frame headers, then payloads."""

    def __init__(self, conn: _UnixConnection, reader: IO[bytes]) -> None:
        self.conn = conn
        self.reader = reader

    def __iter__(self) -> Iterator[OutputChunk]:
        while True:
            try:
                header = self.reader.read(8)
                if len(header) < 8:
                    return
                size = int.from_bytes(header[4:8], "big")
                payload = self.reader.read(size)
            except (OSError, ValueError) as err:  # ValueError: read after close()
                raise EngineError(f"the container's output stream broke: {err}") from err
            if not payload:
                return
            yield (None, payload) if header[0] == 2 else (payload, None)

    def close(self) -> None:
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()  # closes the response, and with it the reader


class SocketEngine(Engine):
    """The Engine API over a unix socket with ``http.client``: one short connection per call."""

    def __init__(self, url: str, timeout: float) -> None:
        super().__init__(url, timeout)
        self.path = url.removeprefix("unix://")

    def _send(self, method: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None,
              timeout: float | None = None) -> tuple[_UnixConnection, http.client.HTTPResponse]:
        conn = _UnixConnection(self.path, self.timeout if timeout is None else timeout)
        payload = None if body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json"} if payload is not None else {}
        all_headers.update(headers or {})
        try:
            conn.request(method, f"/{API_VERSION}{path}", body=payload, headers=all_headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            raise EngineError(f"{method} {path} on {self.url}: {type(err).__name__}: {err}") from err

    def _call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        conn, resp = self._send(method, path, body, timeout=timeout)
        try:
            data = resp.read()
        except (OSError, http.client.HTTPException) as err:
            raise EngineError(f"{method} {path} on {self.url}: {type(err).__name__}: {err}") from err
        finally:
            conn.close()
        _raise_for_status(method, path, resp.status, data)
        if data and "json" in (resp.getheader("Content-Type") or ""):
            return json.loads(data)
        return data.decode("utf-8", "replace")

    def ping(self) -> None:
        self._call("GET", "/_ping")

    def version(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/version")
        return result

    def info(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/info")
        return result

    def containers(self, label: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"all": "1", "filters": json.dumps({"label": [label]})})
        result: list[dict[str, Any]] = self._call("GET", f"/containers/json?{query}")
        return result

    def inspect_image(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/images/{urllib.parse.quote(name)}/json")
        return result

    def create(self, config: dict[str, Any], name: str) -> str:
        query = urllib.parse.urlencode({"name": name})
        return str(self._call("POST", f"/containers/create?{query}", body=config)["Id"])

    def attach(self, cid: str) -> OutputStream:
        path = f"/containers/{cid}/attach?stream=1&stdout=1&stderr=1"
        conn, resp = self._send("POST", path, headers={"Connection": "Upgrade", "Upgrade": "tcp"})
        if resp.status not in (101, 200):
            try:
                data = resp.read()
            finally:
                conn.close()
            _raise_for_status("POST", path, resp.status, data)
        assert conn.sock is not None
        conn.sock.settimeout(None)  # the stream lasts as long as the run
        # The frames follow the response head on the same socket; resp.fp holds what is buffered.
        return _MultiplexedStream(conn, resp.fp)

    def start(self, cid: str) -> None:
        self._call("POST", f"/containers/{cid}/start")

    def wait(self, cid: str, timeout: float) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/containers/{cid}/wait", timeout=timeout)
        return result

    def inspect_container(self, cid: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/containers/{cid}/json")
        return result

    def kill(self, cid: str) -> None:
        self._call("POST", f"/containers/{cid}/kill")

    def remove(self, cid: str) -> None:
        self._call("DELETE", f"/containers/{cid}?force=1")


def _raise_for_status(method: str, path: str, status: int, data: bytes) -> None:
    if status < 400:
        return
    try:
        message = str(json.loads(data).get("message", ""))
    except (ValueError, AttributeError):
        message = data.decode("utf-8", "replace").strip()
    error = EngineNotFoundError if status == 404 else EngineError
    raise error(f"{status} {method} {path.split('?')[0]}: {message}", status)


# -- the Docker SDK, for TCP/SSH engines and builds ---------------------------------------


class _SdkStream(OutputStream):
    def __init__(self, stream: Any, errors: tuple[type[BaseException], ...]) -> None:
        self.stream = stream
        self.errors = errors

    def __iter__(self) -> Iterator[OutputChunk]:
        try:
            yield from self.stream
        except self.errors as err:
            raise EngineError(f"the container's output stream broke: {err}") from err

    def close(self) -> None:
        self.stream.close()


class SdkEngine(Engine):
    """The Engine API through the Docker SDK's low-level client (TCP, TLS, SSH engines)."""

    def __init__(self, url: str, timeout: float) -> None:
        super().__init__(url, timeout)
        import docker
        import docker.errors
        import requests.exceptions

        self._not_found = (docker.errors.NotFound,)
        self._errors = (docker.errors.DockerException, requests.exceptions.RequestException,
                        OSError)
        with self._translated():
            self.api = docker.APIClient(base_url=url, timeout=max(int(timeout), 1))

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except self._not_found as err:
            raise EngineNotFoundError(str(err), 404) from err
        except self._errors as err:
            status = getattr(getattr(err, "response", None), "status_code", None)
            first = str(err).splitlines()[0] if str(err) else ""
            raise EngineError(f"{type(err).__name__}: {first}", status) from err

    def ping(self) -> None:
        with self._translated():
            self.api.ping()

    def version(self) -> dict[str, Any]:
        with self._translated():
            return dict(self.api.version())

    def info(self) -> dict[str, Any]:
        with self._translated():
            return dict(self.api.info())

    def containers(self, label: str) -> list[dict[str, Any]]:
        with self._translated():
            return list(self.api.containers(all=True, filters={"label": label}))

    def inspect_image(self, name: str) -> dict[str, Any]:
        with self._translated():
            return dict(self.api.inspect_image(name))

    def create(self, config: dict[str, Any], name: str) -> str:
        with self._translated():
            return str(self.api.create_container_from_config(config, name=name)["Id"])

    def attach(self, cid: str) -> OutputStream:
        with self._translated():
            stream = self.api.attach(cid, stdout=True, stderr=True, stream=True, logs=False,
                                     demux=True)
        return _SdkStream(stream, self._errors)

    def start(self, cid: str) -> None:
        with self._translated():
            self.api.start(cid)

    def wait(self, cid: str, timeout: float) -> dict[str, Any]:
        with self._translated():
            return dict(self.api.wait(cid, timeout=timeout))

    def inspect_container(self, cid: str) -> dict[str, Any]:
        with self._translated():
            return dict(self.api.inspect_container(cid))

    def kill(self, cid: str) -> None:
        with self._translated():
            self.api.kill(cid)

    def remove(self, cid: str) -> None:
        with self._translated():
            self.api.remove_container(cid, force=True)

    def build(self, context: IO[bytes], *, dockerfile: str, tag: str, buildargs: dict[str, str],
              network: str, labels: dict[str, str], timeout: float) -> Iterator[dict[str, Any]]:
        with self._translated():
            stream = self.api.build(
                fileobj=context, custom_context=True, dockerfile=dockerfile, tag=tag,
                buildargs=buildargs, network_mode=network or None, rm=True, forcerm=True,
                decode=True, timeout=int(timeout), nocache=False, labels=labels)
            yield from stream

    def close(self) -> None:
        self.api.close()


__all__ = ["Engine", "EngineError", "EngineNotFoundError", "OutputStream", "SdkEngine",
           "SocketEngine", "open_engine"]
