"""A test's GPU evidence from the readings inside its window, and the verdict on it.

Pure functions over plain data: the plugin gathers the window, this module
says what it shows.  A test is *idle* when its window has at least one
reading, none with GPU load, no reading with the session's CUDA context and
no rise of the device's used memory above what it was before the first
tier2 test (:data:`MEMORY_RISE_MB`: a context alone takes hundreds of MiB,
so a short test's context shows where load sampling cannot see its
kernels).  Where the context cannot be known (a board's tegrastats or
nvidia-smi sees the device, not the container's processes) load and memory
decide; a Jetson's memory is shared RAM, so there the load alone decides.  A window
without readings proves nothing either way: the test is not judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hil.evidence.samples import GpuReading

#: The verdict modes (``--hil-gpu-evidence``): record only, warn, or fail an idle tier2 test.
MODES = ("off", "warn", "fail")
#: The failure reason of an idle tier2 test under ``fail``.
IDLE_REASON = "tier2 test left the GPU idle (peak load 0 %, no CUDA context)"
#: The Allure label of an idle tier2 test under ``warn`` and ``fail``.
IDLE_LABEL = ("gpu", "idle")
#: A rise of the device's used memory (MiB) above its level before the first tier2 test
#: that counts as GPU use: less than a CUDA context takes, more than drift.
MEMORY_RISE_MB = 64.0
#: The junit property names, in the order they are written.
PROPERTY_NAMES = ("gpu_peak_load_pct", "gpu_peak_memory_mb", "gpu_cuda_context", "gpu_samples",
                  "gpu_verdict")


@dataclass(frozen=True)
class Evidence:
    """What the readings of one test's window show."""

    nodeid: str
    #: The window, epoch seconds: the test's setup start to its call's end.
    start: float
    stop: float
    #: Where the readings came from (``local``, a target or board name).
    sources: tuple[str, ...]
    samples: int
    peak_load_pct: float | None
    peak_mem_mb: float | None
    #: True: a reading showed the session's CUDA context; False: none did; None: not knowable.
    context: bool | None
    #: Peak GPU memory held by the session's own processes, MiB (local sampling only).
    process_mem_mb: float | None
    #: The peak's rise above the device's memory before the first tier2 test, MiB.
    mem_rise_mb: float | None
    #: ``used``, ``idle`` or ``unknown`` (no reading in the window).
    state: str
    #: What was done about it: ``recorded``, ``warned`` or ``failed``.
    verdict: str = "recorded"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (one line of ``gpu-evidence.jsonl``)."""
        return asdict(self)

    def properties(self) -> list[tuple[str, str]]:
        """The junit properties of the test (``PROPERTY_NAMES``)."""
        return list(zip(PROPERTY_NAMES, (
            _fmt(self.peak_load_pct), _fmt(self.peak_mem_mb), _context(self.context),
            str(self.samples), f"{self.state}/{self.verdict}"), strict=True))

    def line(self) -> str:
        """One terminal line: peak load, memory, context and the number of samples."""
        load = "n/a" if self.peak_load_pct is None else f"{_fmt(self.peak_load_pct)} %"
        mem = "n/a" if self.peak_mem_mb is None else f"{_fmt(self.peak_mem_mb)} MiB"
        own = ("" if self.process_mem_mb is None
               else f" (this run's processes {_fmt(self.process_mem_mb)} MiB)")
        if self.mem_rise_mb is not None:
            own += f", {_fmt(self.mem_rise_mb)} MiB above idle"
        flag = {"idle": "  GPU IDLE", "unknown": "  no GPU sample in its window"}.get(
            self.state, "")
        return (f"peak load {load}, peak memory {mem}{own}, CUDA context "
                f"{_context(self.context)}, {self.samples} sample(s){flag}")


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return str(int(value)) if value == int(value) else f"{value:.1f}"


def _context(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def _peak(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def evidence(nodeid: str, start: float, stop: float, readings: Sequence[GpuReading],
             sources: Sequence[str], idle_mem_mb: float | None = None) -> Evidence:
    """The evidence of a test whose window ``[start, stop]`` holds ``readings``.

    ``idle_mem_mb``: the device's used memory before the first tier2 test.
    """
    load = _peak([r.load_pct for r in readings])
    contexts = [r.context for r in readings if r.context is not None]
    context = any(contexts) if contexts else None
    mem = _peak([r.mem_mb for r in readings])
    rise = None if mem is None or idle_mem_mb is None else max(0.0, round(mem - idle_mem_mb, 1))
    if not readings:
        state = "unknown"
    elif context or (load is not None and load > 0) or (rise or 0) >= MEMORY_RISE_MB:
        state = "used"
    else:
        state = "idle"
    return Evidence(nodeid=nodeid, start=start, stop=stop, sources=tuple(sources),
                    samples=len(readings), peak_load_pct=load, peak_mem_mb=mem, context=context,
                    process_mem_mb=_peak([r.process_mem_mb for r in readings]),
                    mem_rise_mb=rise, state=state)


def judge(found: Evidence, mode: str, passed: bool) -> str:
    """What ``mode`` does with a test's evidence: ``recorded``, ``warned`` or ``failed``.

    Only a passed test is failed for idling: a test that failed on its own
    keeps its own failure.
    """
    if found.state != "idle" or mode == "off":
        return "recorded"
    if mode == "fail" and passed:
        return "failed"
    return "warned"


def idle_throughout(readings: Sequence[GpuReading], found: Sequence[Evidence]) -> bool:
    """Whether a run whose tier2 tests were judged never saw the GPU used.

    Every judged test idle, and no reading of the run (between tests too)
    with GPU load or the session's CUDA context.
    """
    judged = [f for f in found if f.state != "unknown"]
    if not judged or not readings or any(f.state != "idle" for f in judged):
        return False
    return not any(r.context or (r.load_pct or 0) > 0 for r in readings)
