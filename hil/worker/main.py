"""The worker's run: pytest with the event stream, its record, capture files and filters."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import sys
from pathlib import Path
from typing import IO, Any

import pytest

from .allure import parse_environment
from .events import EventStream
from .gate import TierGate
from .probe import probe
from .protocol import NONCE_FILE
from .resume import ResumeFilter, RouteFilter, ShareFilter, decode_resume
from .xdist import XdistWorkers


def _prepare_cache(out: Path) -> list[str]:
    """Point pytest's cache into ``out`` and seed it with the controller's last failures."""
    cache = out / ".pytest_cache"
    lastfailed = out / "lastfailed.json"
    if lastfailed.is_file():
        dest = cache / "v" / "cache"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "lastfailed").write_text(lastfailed.read_text(encoding="utf-8"), encoding="utf-8")
    return ["-o", f"cache_dir={cache}"]


#: The module name xdist's workers load this file as (``PYTEST_PLUGINS``); the
#: container mounts it under this name, in a folder of its own.

def keep_capture_files(folder: Path) -> bool:
    """Have pytest's fd capture write into named files in ``folder``; False if it cannot.

    pytest captures a test's output in unlinked temporary files, lost with a
    process that dies; these outlive it, so a crashed test's output so far can
    be reported.  Each is named ``<seq>-fd<N>`` (N: the captured descriptor).
    """
    try:
        import _pytest.capture as capture
    except ImportError:  # pragma: no cover - every pytest has it
        return False
    if not callable(getattr(capture, "TemporaryFile", None)):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    counter = itertools.count(1)

    def temporary_file(*args: Any, **kwargs: Any) -> IO[bytes]:
        targetfd = sys._getframe(1).f_locals.get("targetfd")  # FDCaptureBinary's descriptor
        name = f"{next(counter):04d}-fd{targetfd if isinstance(targetfd, int) else 'x'}"
        return open(folder / name, "w+b", buffering=0)

    capture.TemporaryFile = temporary_file  # type: ignore[attr-defined,assignment]
    return True


def _open_record(path: Path, resume: bool) -> IO[str]:
    """``events.jsonl``: new, or appended to after a crashed run (on a line of its own)."""
    copy = open(path, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115
    if resume and copy.tell():
        with open(path, "rb") as old:
            old.seek(-1, os.SEEK_END)
            if old.read(1) != b"\n":  # the crash cut the last line short
                copy.write("\n")
    return copy


def _run_pytest(args: list[str], plugins: list[object]) -> int:
    """``pytest.main``; an exception it lets out ends with its traceback, as the CLI's does."""
    try:
        return int(pytest.main(args, plugins=plugins))
    except Exception:  # e.g. a plugin that fails to import, on an older pytest
        import traceback

        traceback.print_exc()
        return 1  # what the interpreter exits with, under pytest's own command line


def main(argv: list[str] | None = None) -> int:
    """Run pytest with ``argv`` and stream its reports on standard output."""
    args = list(sys.argv[1:] if argv is None else argv)
    out = Path(os.environ.get("HIL_OUT", "/hil/out"))
    out.mkdir(parents=True, exist_ok=True)
    target = os.environ.get("HIL_TARGET", "container")
    tier = int(os.environ.get("HIL_TIER", "1"))
    resume = decode_resume(os.environ["HIL_RESUME"]) if os.environ.get("HIL_RESUME") else None
    nonce = take_nonce(out)

    # Standard output becomes the event channel; pytest's terminal goes to the log.
    sys.stdout.flush()
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    log = open(out / "pytest.log", "a" if resume else "w", buffering=1,  # noqa: SIM115
               encoding="utf-8")
    if resume:
        log.write(f"\nhil: {resume['after']} crashed ({resume['how']}); resumed in a fresh "
                  f"container with the {len(resume['ids'])} test(s) after it\n")
    os.dup2(log.fileno(), 1)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    copy = _open_record(out / "events.jsonl", resume is not None)

    stream = EventStream(channel, copy, compact=os.environ.get("HIL_EVENTS") == "compact",
                         allure_events=os.environ.get("HIL_ALLURE_RESULTS") == "events",
                         interval=_flush_interval(os.environ.get("HIL_EVENT_INTERVAL_MS")),
                         first_seq=int(resume["n"]) if resume else 0)
    plugins: list[object] = [stream]
    # A resumed container's list is already within its share: splitting it again would differ.
    share = None if resume else ShareFilter.from_env()
    route = None if resume else RouteFilter.from_env()
    # Registered last, called first: the route picks the tests, the share splits those.
    plugins += [f for f in (share, route) if f is not None]
    if resume:
        plugins.append(ResumeFilter(list(resume["ids"])))
    # junit.xml is written by the controller from the streamed reports (see session.py):
    # it then exists also when the container dies mid-run.
    extra = ["-p", "no:hil"]
    if "no:cacheprovider" not in args:
        extra += _prepare_cache(out)
    allure_dir: str | None = None
    if (os.environ.get("HIL_ALLURE_RESULTS") != "off"
            and importlib.util.find_spec("allure_pytest") is not None):
        allure_dir = str(out / "allure-results")
        stream.allure_dir = allure_dir
    environment = parse_environment(os.environ.get("HIL_ENVIRONMENT", ""))
    plugins.append(TierGate(target, tier, allure_dir, environment))
    plugins.append(XdistWorkers(target, tier, allure_dir))
    capture = os.environ.get("HIL_CAPTURE")
    if capture:
        keep_capture_files(Path(capture))
    try:
        code = _run_pytest(extra + args, plugins)
    finally:
        stream.flush()  # what a session that never finished queued
        sys.stdout.flush()
    stream.finish(code, nonce)
    copy.close()
    if capture:  # the run ended: nothing to keep for a crash report
        import shutil

        shutil.rmtree(capture, ignore_errors=True)
    return code


#: The default for ``HIL_EVENT_INTERVAL_MS``: how long events may wait to be batched.
EVENT_INTERVAL_MS = 20.0


def _flush_interval(value: str | None) -> float:
    """``HIL_EVENT_INTERVAL_MS`` in seconds: 0 to 10000 ms, else the default (and a warning)."""
    if not value:
        return EVENT_INTERVAL_MS / 1000
    try:
        ms = float(value)
    except ValueError:
        ms = -1.0
    if not 0 <= ms <= 10_000:  # NaN fails both
        print(f"hil worker: HIL_EVENT_INTERVAL_MS={value!r} is not a number of milliseconds "
              f"from 0 to 10000; using {EVENT_INTERVAL_MS:g}", file=sys.stderr)
        return EVENT_INTERVAL_MS / 1000
    return ms / 1000




def take_nonce(out: Path) -> str:
    """The run's nonce, read from the results folder and removed before any test runs.

    See :mod:`.protocol` for why a file.  "" when the host left none (a run of
    the worker outside pytest-hil); the host then does not accept the end.
    """
    path = out / NONCE_FILE
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return ""
    try:
        text = os.read(fd, 256).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    try:
        path.unlink()
    except OSError:
        print(f"hil worker: could not remove {path}", file=sys.stderr)
    return text


def entry() -> None:
    """``--probe`` prints :func:`.probe.probe`; anything else runs :func:`main` and exits."""
    if sys.argv[1:2] == ["--probe"]:
        print(json.dumps(probe()))
        sys.exit(0)
    code = main()
    # Everything is written and flushed: skip the interpreter's slow teardown,
    # the controller is waiting for the container to end.
    sys.stderr.flush()
    os._exit(code)
