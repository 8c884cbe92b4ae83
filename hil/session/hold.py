"""Hold on failure (``--hil-hold-on-failure TTL``) and ``hil release``.

When a test fails on a board, the session leaves behind, on that board:

* a **hold container** ``hil-hold-<run>``: the test container's image, mounts
  (the synced checkout read-only, the run's results folder), environment,
  user, runtime and network, running ``sleep TTL`` in place of the worker;
* a **lease holder**: a detached shell that takes the board's lease (the same
  ``flock`` as a session's, :mod:`hil.ssh.lease`) as soon as the session lets go
  of it, names itself as the holder, and keeps it while the container lives
  (``docker wait``), at most TTL seconds.

It prints one command that opens a shell in that container and one that
re-runs the failed test there.  Both are released when TTL ends (the
container's ``sleep`` returns: ``--rm`` removes it, the holder's wait
returns, the lock closes) or at once with ``hil release`` (which removes the
hold containers; their holders follow).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from typing import TYPE_CHECKING

from hil.errors import HoldFailedError

if TYPE_CHECKING:  # the plugin imports this module for its options: Fabric stays out
    from hil.backends.base import RunPlan
    from hil.ssh.lease import Holder

HELP_HOLD = ("when a test fails, keep a container like its own and the board's lease for TTL "
             "seconds, and print how to open a shell in it and re-run the test there "
             "(released after TTL or by `hil release`)")
#: Label of hold containers (value: the run id); the run script never removes these.
HOLD_LABEL = "io.pytest-hil.hold"


def parse_ttl(value: str) -> float:
    """``--hil-hold-on-failure`` seconds: a positive number."""
    try:
        ttl = float(value)
    except ValueError:
        ttl = 0.0
    if ttl <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return ttl


def hold_script(cli: list[str], name: str, ttl: float, holder: Holder,
                lease_dir: str | None = None) -> str:
    """The board-side command (``scripts/hold.sh``): start the hold container, then a
    detached lease holder (``scripts/hold-keeper.sh``)."""
    from hil.backends.jetson.shell import board_command, script_text
    from hil.ssh.lease import LEASE_DIR

    return board_command("hold", *cli, NAME=name, DIR=lease_dir or LEASE_DIR,
                         HOLDER=holder.to_json(), TTL=f"{ttl:.0f}",
                         KEEPER=script_text("hold-keeper"))


def hold_request_cli(request: object, name: str, ttl: float, run_id: str) -> list[str]:
    """``docker run -d`` of the hold container, from the failed test's run request."""
    from hil.backends.base import RunRequest

    assert isinstance(request, RunRequest)
    req = dataclasses.replace(request, name=name, command=("sleep", f"{ttl:.0f}"), remove=True,
                              labels={HOLD_LABEL: run_id})
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

    def shell_command(self) -> str:
        """Opens a shell in the hold container."""
        return f"{self.ssh} -t docker exec -it -w {shlex.quote(self.workdir)} {self.container} sh"

    def rerun_command(self) -> str:
        """Re-runs the failed test in the hold container."""
        inner = shlex.join(["python3", "-m", "pytest", "-p", "no:cacheprovider", self.nodeid])
        return (f"{self.ssh} -t docker exec -it -w {shlex.quote(self.workdir)} {self.container} "
                f"{shlex.quote(inner)}")


def ssh_prefix(host: str, config: str) -> str:
    """The ``ssh`` command line that reaches ``host`` as the target does."""
    return "ssh " + (f"-F {shlex.quote(config)} " if config else "") + shlex.quote(host)


def hold_failed(backend: object, plan: RunPlan, image: str, nodeid: str, ttl: float) -> Hold:
    """Leave a hold container and a lease holder on ``backend``'s board for ``nodeid``."""
    from hil.backends.jetson.backend import SshBackend
    from hil.ssh.lease import Holder

    assert isinstance(backend, SshBackend)
    spec = backend.spec
    name = f"hil-hold-{plan.run_id}"[:120]
    cli = hold_request_cli(backend.request(plan, image), name, ttl, plan.run_id)
    holder = dataclasses.replace(Holder.me(spec.name), target=f"{spec.name} (hold: {nodeid})")
    res = backend.connect().run(hold_script(cli, name, ttl, holder), timeout=120)
    if not res.ok or "HELD" not in res.stdout:
        raise HoldFailedError(f"could not keep a container for {nodeid}", target=spec.name,
                              command="docker run -d ...", exited=res.exited,
                              tail=(res.stdout + res.stderr)[-4000:])
    return Hold(board=spec.name, container=name, nodeid=nodeid, ttl=ttl,
                ssh=ssh_prefix(spec.ssh.host, spec.ssh.config),
                workdir=f"{spec.docker.workdir}/{plan.subdir}".rstrip("/"))


# -- hil release ---------------------------------------------------------------------------

def release_script() -> str:
    """Removes every hold container on the board (``scripts/release.sh``); their lease
    holders then let go."""
    from hil.backends.jetson.shell import board_command

    return board_command("release", LABEL=HOLD_LABEL)


__all__ = ["HELP_HOLD", "HOLD_LABEL", "Hold", "hold_failed", "parse_ttl", "release_script"]
