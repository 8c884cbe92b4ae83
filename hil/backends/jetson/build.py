"""The dependencies image, built on the board: ``scripts/build.sh`` over the session's connection.

The script builds from the synced tree (only the recipe's files form the
context), within ``timeouts.build``, and prints the new image's id on a
marker line (:data:`ID_MARKER`); every other line of the build's output goes
to the caller as it comes (the backend's build log).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable

from hil.backends.base import CONTAINER_LABEL
from hil.backends.images import ImageRecipe
from hil.backends.jetson.shell import board_command
from hil.config import TargetSpec
from hil.errors import BuildFailedError, ConfigError, ConnectionLostError
from hil.ssh.connection import SshConnection

#: Marker of the image id after a build.
ID_MARKER = "\x1ehil-id "
#: Seconds the connection waits past ``timeouts.build`` (the script's own limit fires first).
DEADLINE_MARGIN = 30.0


def docker_build_args(spec: TargetSpec, rec: ImageRecipe) -> list[str]:
    """The ``docker build`` command line of ``rec`` (the context is the script's)."""
    args = ["docker", "build", "-t", rec.tag, "-f", rec.dockerfile,
            "--label", f"{CONTAINER_LABEL}=image"]
    for key, value in rec.build_args:
        args += ["--build-arg", f"{key}={value}"]
    if spec.docker.build_network:
        args += ["--network", spec.docker.build_network]
    return args


class BuildOutput:
    """The build's output as lines: the id marker kept, every other non-blank line passed on."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self.on_line = on_line
        self.image_id = ""
        self._buf = b""

    def feed(self, data: bytes) -> None:
        """A chunk of standard output or error."""
        self._buf += data
        while b"\n" in self._buf:
            raw, _, self._buf = self._buf.partition(b"\n")
            self._line(raw.decode("utf-8", "replace").rstrip("\r"))

    def flush(self) -> None:
        """The last line, when the output did not end with a newline."""
        if self._buf.strip():
            self.feed(b"\n")

    def _line(self, line: str) -> None:
        if line.startswith(ID_MARKER):
            self.image_id = line[len(ID_MARKER):].strip()
        elif line.strip():
            self.on_line(line)


def build_on_board(conn: SshConnection, spec: TargetSpec, rec: ImageRecipe, folder: str,
                   on_line: Callable[[str], None], log: list[str]) -> str:
    """Build ``rec`` in the board's ``folder``; returns the image id.

    ``log`` is where ``on_line`` keeps the lines: its tail goes with a
    :class:`~hil.errors.BuildFailedError` (also on a timeout) or a lost link.
    """
    files = sorted({rec.dockerfile, *rec.inputs})
    if any("\n" in name for name in files):
        raise ConfigError("a build input's name holds a newline", target=spec.name)
    args = docker_build_args(spec, rec)
    limit = int(spec.timeouts.build)
    command = board_command("build", *args[2:], DIR=folder, FILES="\n".join(files),
                            LIMIT=str(limit), TAG=rec.tag, ID_MARKER=ID_MARKER)
    out = BuildOutput(on_line)
    chan = conn.exec(command)
    try:
        code = conn.stream(chan, out.feed, out.feed,
                           deadline=time.monotonic() + spec.timeouts.build + DEADLINE_MARGIN)
    except ConnectionLostError as err:
        raise ConnectionLostError(f"connection lost while building {rec.tag}",
                                  target=spec.name, tail="\n".join(log[-30:])) from err
    except TimeoutError:
        code = 124
    finally:
        chan.close()
    out.flush()
    if code != 0:
        last = next((ln for ln in reversed(log) if ln.strip()), "")
        why = f"timed out after {limit} s" if code == 124 else last[:200]
        raise BuildFailedError(f"building {rec.tag} on the board failed: {why}",
                               target=spec.name, command=shlex.join(args), exited=code,
                               tail="\n".join(log[-30:]))
    return out.image_id
