"""Process helpers of the simulated rig: run a command, wait for a condition, pid files.

Daemons are started detached (``setsid --fork``) and tracked by their pid
files only; they are stopped by the pid read from that file, never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from hil.errors import HilError, RigError
from hil.result import Result

#: sbin directories are searched too: root's PATH under some launchers lacks them.
_EXTRA_PATH = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def which(tool: str) -> str | None:
    """The full path of ``tool`` on PATH or in the sbin directories, or None."""
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(_EXTRA_PATH)
    return shutil.which(tool, path=path)


def run(
    command: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    unset: Sequence[str] = (),
    error: type[HilError] = RigError,
    what: str = "",
    cwd: Path | None = None,
) -> Result:
    """Run ``command`` (in ``cwd``) to its end and capture its output.

    Raises ``error`` (a :class:`HilError`) carrying the command, exit code and
    output tail when ``check`` is true and the command fails or times out.
    ``env`` is added to ours; names in ``unset`` are removed.
    """
    argv = tuple(command)
    full_env = {k: v for k, v in os.environ.items() if k not in unset}
    full_env.update(env or {})
    try:
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            check=False,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as exc:
        raise error(f"{what or argv[0]} did not finish within {timeout:.0f} s", command=argv) from exc
    except FileNotFoundError as exc:
        raise error(f"{argv[0]} is not installed", command=argv) from exc
    result = Result(argv, proc.returncode, proc.stdout, proc.stderr)
    if check and not result.ok:
        raise error(f"{what or argv[0]} failed", command=argv, exited=result.exited, tail=result.tail())
    return result


def run_streaming(
    command: Sequence[str], *, prefix: str, error: type[HilError] = RigError, what: str = ""
) -> None:
    """Run ``command``, copying its output line by line to stderr as progress."""
    argv = list(command)
    lines: list[str] = []
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            print(f"{prefix}{line.rstrip()}", file=sys.stderr, flush=True)
        exited = proc.wait()
    if exited != 0:
        raise error(f"{what or argv[0]} failed", command=argv, exited=exited, tail="".join(lines[-20:]))


class NotReadyError(RigError):
    """Something the rig waited for never became ready before its deadline."""

    kind = "sim-not-ready"


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    error: type[HilError] = NotReadyError,
) -> None:
    """Poll ``predicate`` until it is true; raise ``error`` naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise error(f"{what} did not become ready within {timeout:.0f} s")
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 0.5)


def read_pid(pidfile: Path) -> int | None:
    """The pid written in ``pidfile``, or None when it is missing or garbled."""
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def pid_alive(pid: int, exe_hint: str = "") -> bool:
    """True when ``pid`` runs (not a zombie) and, if given, its cmdline mentions ``exe_hint``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    if state in ("Z", "X"):
        return False
    return exe_hint in cmdline


def pidfile_alive(pidfile: Path, exe_hint: str = "") -> int | None:
    """The live pid recorded in ``pidfile`` (checked against ``exe_hint``), else None."""
    pid = read_pid(pidfile)
    if pid is None or not pid_alive(pid, exe_hint):
        return None
    return pid


def stop_pidfile(pidfile: Path, exe_hint: str, what: str, timeout: float = 20.0) -> bool:
    """Stop the process recorded in ``pidfile`` with SIGTERM (SIGKILL after ``timeout``).

    Returns True when a process was stopped, False when none was running.
    The pid file is removed either way.
    """
    pid = pidfile_alive(pidfile, exe_hint)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not pid_alive(pid, exe_hint), timeout, f"{what} (pid {pid}) to exit")
    except NotReadyError:
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid, exe_hint), 5.0, f"{what} (pid {pid}) to die")
    pidfile.unlink(missing_ok=True)
    return True


def spawn_detached(command: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> None:
    """Start ``command`` in a new session, detached from us, output appended to ``log``.

    ``setsid --fork`` returns at once; the daemon is re-parented to init, so
    it never lingers as our zombie.  Track it by the pid file it writes.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = None if env is None else {**os.environ, **env}
    with log.open("ab") as out:
        subprocess.run(
            ["setsid", "--fork", *command],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=full_env,
            check=True,
        )


def log_tail(log: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ("" when absent)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
