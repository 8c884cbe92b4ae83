"""Hold on failure (``--hil-hold-on-failure TTL``) and ``hil release``.

When a test fails on a board, the session leaves behind, on that board:

* a **hold container** ``hil-hold-<run>``: the test container's image, mounts
  (the synced checkout read-only, the run's results folder), environment,
  user, runtime and network, running ``sleep TTL`` in place of the worker;
* a **lease keeper**: a detached shell that receives the session's held lock
  (the same ``flock`` as a session's, :mod:`hil.ssh.lease`; it is never let go
  in between, so no waiting session can take it), names the failed test in the
  holder file, and keeps it while the container lives (``docker wait``), at
  most TTL seconds.

It prints one command that opens a shell in that container and one that
re-runs the failed test there.  Both are released when TTL ends (the
container's ``sleep`` returns: ``--rm`` removes it, the keeper's wait
returns, the lock closes) or at once with ``hil release`` (which removes the
hold containers of this user@host, or every one with ``--all``; their keepers
follow).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from typing import TYPE_CHECKING

from hil.errors import HilError, HoldFailedError

if TYPE_CHECKING:  # the plugin imports this module for its options: Fabric stays out
    from hil.backends.base import RunPlan

HELP_HOLD = ("when a test fails, keep a container like its own and the board's lease for TTL "
             "seconds, and print how to open a shell in it and re-run the test there "
             "(released after TTL or by `hil release`)")
#: Label of hold containers (value: the run id); the run script never removes these.
HOLD_LABEL = "io.pytest-hil.hold"
#: Label of hold containers naming their holder (``user@host``): `hil release` frees yours.
OWNER_LABEL = "io.pytest-hil.hold.owner"


def parse_ttl(value: str) -> float:
    """``--hil-hold-on-failure`` seconds: a positive number."""
    try:
        ttl = float(value)
    except ValueError:
        ttl = 0.0
    if ttl <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return ttl


def hold_script(cli: list[str], name: str) -> str:
    """The board-side command (``scripts/hold.sh``) that starts the hold container."""
    from hil.backends.jetson.shell import board_command

    return board_command("hold", *cli, NAME=name)


def hold_request_cli(request: object, name: str, ttl: float, run_id: str,
                     owner: str = "") -> list[str]:
    """``docker run -d`` of the hold container, from the failed test's run request."""
    from hil.backends.base import RunRequest

    assert isinstance(request, RunRequest)
    req = dataclasses.replace(request, name=name, command=("sleep", f"{ttl:.0f}"), remove=True,
                              labels={HOLD_LABEL: run_id, OWNER_LABEL: owner})
    cli = req.docker_cli()
    cli[cli.index("-i")] = "-d"  # detached, nothing attached
    # The image's entrypoint (if any) must not run the suite: sleep is the process.
    image_at = cli.index(req.image)
    return [*cli[:image_at], "--entrypoint", "sleep", req.image, f"{ttl:.0f}"]


@dataclasses.dataclass(frozen=True)
class Hold:
    """What was left on a board for a failed test, and the commands to use it."""

    board: str
    container: str
    nodeid: str
    ttl: float
    ssh: str
    workdir: str

    @property
    def _remote_workdir(self) -> str:
        # Quoted for both shells: the local one, then the board's login shell that ssh's
        # remote words are joined for.
        return shlex.quote(shlex.quote(self.workdir))

    def shell_command(self) -> str:
        """Opens a shell in the hold container."""
        return f"{self.ssh} -t docker exec -it -w {self._remote_workdir} {self.container} sh"

    def rerun_command(self) -> str:
        """Re-runs the failed test in the hold container."""
        inner = shlex.join(["python3", "-m", "pytest", "-p", "no:cacheprovider", self.nodeid])
        return (f"{self.ssh} -t docker exec -it -w {self._remote_workdir} {self.container} "
                f"{shlex.quote(inner)}")


def ssh_prefix(host: str, config: str) -> str:
    """The ``ssh`` command line that reaches ``host`` as the target does."""
    return "ssh " + (f"-F {shlex.quote(config)} " if config else "") + shlex.quote(host)


def hold_failed(backend: object, plan: RunPlan, image: str, nodeid: str, ttl: float) -> Hold:
    """Leave a hold container on ``backend``'s board for ``nodeid`` and hand the session's
    lease to its keeper."""
    from hil.backends.jetson.backend import SshBackend
    from hil.ssh.lease import Holder

    assert isinstance(backend, SshBackend)
    spec = backend.spec
    lease = backend.lease
    if lease is None or not lease.held:
        raise HoldFailedError(f"the board's lease is no longer held: {nodeid} is not kept",
                              target=spec.name)
    name = f"hil-hold-{plan.run_id}"[:120]
    holder = dataclasses.replace(Holder.me(spec.name), hold=nodeid)
    cli = hold_request_cli(backend.request(plan, image), name, ttl, plan.run_id, holder.owner)
    conn = backend.connect()
    res = conn.run(hold_script(cli, name), timeout=120)
    if not res.ok or "STARTED" not in res.stdout:
        raise HoldFailedError(f"could not keep a container for {nodeid}", target=spec.name,
                              command="docker run -d ...", exited=res.exited,
                              tail=(res.stdout + res.stderr)[-4000:])
    try:
        lease.keep(name, ttl, holder)
    except HilError:
        conn.run(f"docker rm -f {shlex.quote(name)}", timeout=60)  # no container without lease
        raise
    return Hold(board=spec.name, container=name, nodeid=nodeid, ttl=ttl,
                ssh=ssh_prefix(spec.ssh.host, spec.ssh.config),
                workdir=f"{spec.docker.workdir}/{plan.subdir}".rstrip("/"))


# -- hil release ---------------------------------------------------------------------------

def release_script(owner: str, every: bool = False) -> str:
    """Removes the hold containers of ``owner`` (``user@host``), or every one with ``every``,
    on the board (``scripts/release.sh``); their keepers then let go of the lease."""
    from hil.backends.jetson.shell import board_command

    return board_command("release", LABEL=HOLD_LABEL, OWNER_LABEL=OWNER_LABEL, OWNER=owner,
                         ALL="1" if every else "0")


__all__ = ["HELP_HOLD", "HOLD_LABEL", "OWNER_LABEL", "Hold", "hold_failed", "parse_ttl",
           "release_script"]
