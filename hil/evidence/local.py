"""This host's GPUs sampled in-process, for tier2 tests on the ``local`` target.

Through NVML (``nvidia-ml-py``'s ``pynvml``) when it is installed, else
``nvidia-smi``.  Each sample has the busiest GPU's utilization
(``gpu_util_pct``), the memory used on every GPU (``mem_used_mb``) and
whether a process of this session (this pytest, its children: xdist
workers, subprocesses a test starts) is among the GPUs' compute processes,
that is, holds a CUDA context (``context``, with the memory it holds in
``process_mem_mb``).  Samples go to ``telemetry.jsonl`` in the run folder
and to :data:`hil.evidence.samples.FEED` as source ``local``.

The plugin also samples at once at a test's start and end
(:meth:`LocalSampler.sample_now`), so a test shorter than the interval
still has readings: its context and memory tell what load sampling cannot.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from hil.evidence.samples import FEED, SampleFeed

#: The source name of this host's samples.
SOURCE = "local"
_SMI_TIMEOUT = 10.0


class GpuProbe(Protocol):
    """Reads this host's GPUs once."""

    how: str

    def read(self) -> tuple[list[dict[str, float]], dict[int, float]]:
        """Per GPU ``{"index", "util_pct", "mem_mb"}``, and compute processes ``{pid: MiB}``."""


class NvmlProbe:
    """NVML through ``pynvml`` (the ``nvidia-ml-py`` distribution)."""

    how = "nvml"

    def __init__(self) -> None:
        self.nvml: Any = importlib.import_module("pynvml")
        self.nvml.nvmlInit()
        count = self.nvml.nvmlDeviceGetCount()
        self.handles = [self.nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]

    def read(self) -> tuple[list[dict[str, float]], dict[int, float]]:
        """See :class:`GpuProbe`."""
        gpus: list[dict[str, float]] = []
        procs: dict[int, float] = {}
        for index, handle in enumerate(self.handles):
            util = self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu
            mem = self.nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
            gpus.append({"index": index, "util_pct": float(util), "mem_mb": round(mem, 1)})
            for proc in self.nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                used = proc.usedGpuMemory or 0  # None where the driver does not say
                procs[int(proc.pid)] = procs.get(int(proc.pid), 0.0) + round(used / 2**20, 1)
        return gpus, procs

    def close(self) -> None:
        """Shut NVML down (it counts its inits)."""
        with contextlib.suppress(Exception):
            self.nvml.nvmlShutdown()


class SmiProbe:
    """``nvidia-smi`` queries, where NVML's Python binding is not installed."""

    how = "nvidia-smi"

    def __init__(self, tool: str) -> None:
        self.tool = tool

    def _query(self, *args: str) -> list[list[str]]:
        out = subprocess.run([self.tool, *args, "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=_SMI_TIMEOUT, check=True)
        return [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines()
                if line.strip()]

    def read(self) -> tuple[list[dict[str, float]], dict[int, float]]:
        """See :class:`GpuProbe`."""
        gpus = [{"index": float(i), "util_pct": _float(row[1]), "mem_mb": _float(row[2])}
                for i, row in enumerate(self._query("--query-gpu=index,utilization.gpu,"
                                                    "memory.used")) if len(row) == 3]
        procs: dict[int, float] = {}
        for row in self._query("--query-compute-apps=pid,used_memory"):
            if len(row) == 2 and row[0].isdigit():
                procs[int(row[0])] = procs.get(int(row[0]), 0.0) + _float(row[1])
        return gpus, procs

    def close(self) -> None:
        """Nothing to release."""


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # [N/A], [Not Supported]
        return 0.0


def open_probe() -> GpuProbe | None:
    """NVML when ``pynvml`` imports and initializes, else ``nvidia-smi``; None without both."""
    try:
        return NvmlProbe()
    except Exception:  # not installed, or no driver: the next way
        pass
    tool = shutil.which("nvidia-smi")
    return SmiProbe(tool) if tool else None


def session_pids(root: int) -> set[int]:
    """``root`` and its descendants, from ``/proc`` (only ``root`` where /proc cannot tell)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def describe(gpus: list[dict[str, float]], procs: dict[int, float], own: set[int]) -> dict[str, Any]:
    """One sample's fields from a probe's reading and the session's process ids.

    NVML names processes by the pid of the host's pid namespace: inside a
    container none of them is visible in this ``/proc``.  Then a GPU compute
    process that is not ours cannot be told from ours, and the context is
    counted when any is listed (``context_how`` says so).
    """
    mine = {pid: mem for pid, mem in procs.items() if pid in own}
    foreign_ns = bool(procs) and not mine and not any(
        os.path.exists(f"/proc/{pid}") for pid in procs)
    context = bool(mine) or foreign_ns
    return {
        "gpu_util_pct": max((g["util_pct"] for g in gpus), default=0.0),
        "mem_used_mb": round(sum(g["mem_mb"] for g in gpus), 1),
        "context": context,
        "process_mem_mb": round(sum((procs if foreign_ns else mine).values()), 1),
        **({"context_how": "any compute process (pids of another pid namespace)"}
           if foreign_ns else {}),
        "gpus": gpus,
    }


class LocalSampler:
    """Samples this host's GPUs every ``interval_ms`` on a thread, and on demand."""

    def __init__(self, probe: GpuProbe, path: Path, interval_ms: int,
                 feed: SampleFeed = FEED) -> None:
        self.probe = probe
        self.path = path
        self.interval_ms = interval_ms
        self.feed = feed
        self.samples = 0
        self.error = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._out: Any = None

    def start(self) -> LocalSampler:
        """Open ``telemetry.jsonl`` and start the sampling thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.path.open("a", encoding="utf-8")
        self.feed.open(SOURCE)
        self._thread = threading.Thread(target=self._loop, name="hil-gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        period = self.interval_ms / 1000.0
        while not self._stop.wait(period):
            self.sample_now()

    def sample_now(self) -> None:
        """Take one sample now (errors are kept in :attr:`error`, not raised)."""
        with self._lock:  # one probe call at a time: NVML handles are shared
            if self._out is None:
                return
            try:
                gpus, procs = self.probe.read()
            except Exception as err:  # a driver hiccup must not fail the test
                self.error = f"{type(err).__name__}: {err}"[:300]
                return
            sample = {"t": round(time.time(), 3), **describe(gpus, procs,
                                                            session_pids(os.getpid()))}
            self._out.write(json.dumps(sample, separators=(",", ":")) + "\n")
            self._out.flush()
            self.samples += 1
        self.feed.publish(SOURCE, sample)

    def stop(self) -> None:
        """Stop the thread, close the file and the probe."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            if self._out is not None:
                self._out.close()
                self._out = None
        self.feed.close(SOURCE)
        close = getattr(self.probe, "close", None)
        if close is not None:
            close()
