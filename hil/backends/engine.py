"""The Docker Engine API, through the Docker SDK's low-level client.

:class:`Engine` wraps ``docker.APIClient`` for the calls a run makes (ping,
image check, create, attach, start, wait, remove, build) and turns the SDK's
errors into :class:`EngineError`, so the backend catches one error family.
A lean client of our own over the unix socket was measured against this one
(``benchmarks/bench_engine_client.py``): it saved 0.15 s of the SDK's import
per run (0.68 s vs 0.82 s no-change re-run overhead on the rig, goal < 1.0 s),
which does not earn a second HTTP client; the SDK serves every kind of engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import IO, Any

#: One chunk of a container's output: (stdout, stderr), one of them None.
OutputChunk = tuple["bytes | None", "bytes | None"]


class EngineError(Exception):
    """An Engine API call failed (the engine answered with an error, or did not answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class EngineNotFoundError(EngineError):
    """The image or container named in the call does not exist."""


class OutputStream:
    """A running container's standard output and error, chunk by chunk."""

    def __init__(self, stream: Any, errors: tuple[type[BaseException], ...]) -> None:
        self.stream = stream
        self.errors = errors

    def __iter__(self) -> Iterator[OutputChunk]:
        """Chunks as they arrive, until the container's streams close."""
        try:
            yield from self.stream
        except self.errors as err:
            raise EngineError(f"the container's output stream broke: {err}") from err

    def close(self) -> None:
        """Stop reading (the container keeps running)."""
        self.stream.close()


class Engine:
    """The Engine API calls pytest-hil makes, on the Docker SDK (unix, TCP, TLS, SSH engines)."""

    def __init__(self, url: str, timeout: float) -> None:
        import docker
        import docker.errors
        import requests.exceptions

        self.url = url
        self.timeout = timeout
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
        """Raise :class:`EngineError` unless the engine answers."""
        with self._translated():
            self.api.ping()

    def version(self) -> dict[str, Any]:
        """``GET /version``."""
        with self._translated():
            return dict(self.api.version())

    def info(self) -> dict[str, Any]:
        """``GET /info`` (slow on some engines: only for the runtime check)."""
        with self._translated():
            return dict(self.api.info())

    def containers(self, label: str) -> list[dict[str, Any]]:
        """All containers, running or not, that carry ``label``."""
        with self._translated():
            return list(self.api.containers(all=True, filters={"label": label}))

    def inspect_image(self, name: str) -> dict[str, Any]:
        """The image ``name``; :class:`EngineNotFoundError` when absent."""
        with self._translated():
            return dict(self.api.inspect_image(name))

    def create(self, config: dict[str, Any], name: str) -> str:
        """Create a container from an Engine API config; returns its id."""
        with self._translated():
            return str(self.api.create_container_from_config(config, name=name)["Id"])

    def attach(self, cid: str) -> OutputStream:
        """Attach to the container's output (before start, so nothing is missed)."""
        with self._translated():
            stream = self.api.attach(cid, stdout=True, stderr=True, stream=True, logs=False,
                                     demux=True)
        return OutputStream(stream, self._errors)

    def start(self, cid: str) -> None:
        """Start a created container."""
        with self._translated():
            self.api.start(cid)

    def wait(self, cid: str, timeout: float) -> dict[str, Any]:
        """Wait for the container to stop; returns ``{"StatusCode": ...}``."""
        with self._translated():
            return dict(self.api.wait(cid, timeout=timeout))

    def inspect_container(self, cid: str) -> dict[str, Any]:
        """The container's full description (``State.OOMKilled`` and the like)."""
        with self._translated():
            return dict(self.api.inspect_container(cid))

    def kill(self, cid: str) -> None:
        """Send SIGKILL to the container."""
        with self._translated():
            self.api.kill(cid)

    def remove(self, cid: str) -> None:
        """Remove the container, killing it first if it runs."""
        with self._translated():
            self.api.remove_container(cid, force=True)

    def build(self, context: IO[bytes], *, dockerfile: str, tag: str, buildargs: dict[str, str],
              network: str, labels: dict[str, str], timeout: float) -> Iterator[dict[str, Any]]:
        """Build an image from a tar context; yields the engine's progress messages."""
        with self._translated():
            stream = self.api.build(
                fileobj=context, custom_context=True, dockerfile=dockerfile, tag=tag,
                buildargs=buildargs, network_mode=network or None, rm=True, forcerm=True,
                decode=True, timeout=int(timeout), nocache=False, labels=labels)
            yield from stream

    def close(self) -> None:
        """Release connections (idempotent)."""
        self.api.close()


def open_engine(url: str, timeout: float) -> Engine:
    """The client for the engine at ``url`` (``unix://``, ``tcp://``, ``ssh://``)."""
    return Engine(url, timeout)


__all__ = ["Engine", "EngineError", "EngineNotFoundError", "OutputStream", "open_engine"]
