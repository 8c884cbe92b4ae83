"""The GPU fields of a telemetry sample, and the live samples of this session.

A sample is what :mod:`hil.ssh.telemetry` (a board's ``tegrastats`` or
``nvidia-smi``) or :mod:`hil.evidence.local` (this host's GPUs) writes as one
line of ``telemetry.jsonl``: a dict with ``t`` (epoch seconds).  Only three
things matter for evidence: the GPU load (``engines.GR3D_FREQ.load_pct`` on a
Jetson, ``gpu_util_pct`` on a discrete GPU), the GPU memory used
(``mem_used_mb``; a Jetson's memory is shared RAM and is not counted) and,
sampled here only, whether the session's own processes held a CUDA context.

:data:`FEED` keeps the samples of the running session by source (a target or
board name, or ``local``) so the plugin can read a test's window as soon as
the test's report arrives; the samplers publish into it as they write.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: The default sampling interval, in milliseconds (``--hil-gpu-interval``).
DEFAULT_INTERVAL_MS = 500
#: Samples kept per source: hours of a run at the default interval.
KEEP_PER_SOURCE = 50_000


@dataclass(frozen=True)
class GpuReading:
    """The GPU part of one sample."""

    t: float
    #: GPU load in percent (GR3D on a Jetson, utilization on a discrete GPU); None: not sampled.
    load_pct: float | None
    #: GPU memory used on the device, MiB; None where the GPU has no memory of its own.
    mem_mb: float | None = None
    #: Whether the session's processes held a CUDA context; None: not knowable from here.
    context: bool | None = None
    #: GPU memory held by the session's processes, MiB (local sampling only).
    process_mem_mb: float | None = None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def reading(sample: Mapping[str, Any]) -> GpuReading | None:
    """The GPU reading of one sample; None when it has no time or no GPU field."""
    t = _num(sample.get("t"))
    if t is None:
        return None
    load = _num(sample.get("gpu_util_pct"))
    engines = sample.get("engines")
    if load is None and isinstance(engines, Mapping):
        gr3d = engines.get("GR3D_FREQ")
        if isinstance(gr3d, Mapping):
            load = _num(gr3d.get("load_pct"))
    mem = _num(sample.get("mem_used_mb"))
    context = sample.get("context")
    if load is None and mem is None and not isinstance(context, bool):
        return None
    return GpuReading(t=t, load_pct=load, mem_mb=mem,
                      context=context if isinstance(context, bool) else None,
                      process_mem_mb=_num(sample.get("process_mem_mb")))


class SampleFeed:
    """The GPU readings of this session, by source, as the samplers publish them."""

    def __init__(self) -> None:
        self.interval_ms = DEFAULT_INTERVAL_MS
        self._cond = threading.Condition()
        self._readings: dict[str, deque[GpuReading]] = {}
        self._live: set[str] = set()
        self._first_mem: dict[str, float] = {}  # kept apart: the oldest readings roll off

    def open(self, source: str) -> None:
        """A sampler of ``source`` starts: its readings are awaited until :meth:`close`."""
        with self._cond:
            self._live.add(source)
            self._readings.setdefault(source, deque(maxlen=KEEP_PER_SOURCE))

    def close(self, source: str) -> None:
        """The sampler of ``source`` stopped (its readings stay)."""
        with self._cond:
            self._live.discard(source)
            self._cond.notify_all()

    def publish(self, source: str, sample: Mapping[str, Any]) -> None:
        """Take one sample of ``source`` (ignored when it carries no GPU field)."""
        found = reading(sample)
        if found is None:
            return
        with self._cond:
            self._readings.setdefault(source, deque(maxlen=KEEP_PER_SOURCE)).append(found)
            if found.mem_mb is not None:
                self._first_mem.setdefault(source, found.mem_mb)
            self._cond.notify_all()

    @property
    def sources(self) -> list[str]:
        """Every source that published or is live, sorted."""
        with self._cond:
            return sorted(self._readings)

    def live(self) -> list[str]:
        """The sources whose sampler is running."""
        with self._cond:
            return sorted(self._live)

    def _latest(self, source: str) -> float:
        found = self._readings.get(source)
        return found[-1].t if found else float("-inf")

    def wait_past(self, t: float, sources: Iterable[str], timeout: float) -> bool:
        """Wait until each live one of ``sources`` has a reading at or after ``t``.

        Bounded by ``timeout`` seconds; False when it ran out (a sampler that
        stalls must not stall the session).
        """
        wanted = list(sources)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                behind = [s for s in wanted if s in self._live and self._latest(s) < t]
                left = deadline - time.monotonic()
                if not behind:
                    return True
                if left <= 0:
                    return False
                self._cond.wait(left)

    def window(self, sources: Iterable[str], start: float, stop: float) -> list[GpuReading]:
        """The readings of ``sources`` with ``start <= t <= stop``, oldest first."""
        with self._cond:
            found = [r for s in sources for r in self._readings.get(s, ())
                     if start <= r.t <= stop]
        return sorted(found, key=lambda r: r.t)

    def first_memory(self, sources: Iterable[str]) -> float | None:
        """The device memory used in the first reading of ``sources`` that has it (the lowest)."""
        with self._cond:
            found = [self._first_mem[s] for s in sources if s in self._first_mem]
        return min(found) if found else None

    def all(self) -> list[GpuReading]:
        """Every reading kept, of every source."""
        with self._cond:
            return [r for found in self._readings.values() for r in found]

    def reset(self) -> None:
        """Forget every reading (a new session in this process)."""
        with self._cond:
            self._readings = {s: deque(maxlen=KEEP_PER_SOURCE) for s in self._live}
            self._first_mem.clear()


#: The session's feed: the samplers publish into it, the evidence plugin reads it.
FEED = SampleFeed()
