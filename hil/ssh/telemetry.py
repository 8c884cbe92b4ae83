"""Board telemetry sampled while the suite runs: ``tegrastats`` or ``nvidia-smi``.

The sampler runs on its own channel of the session's SSH connection and each
sample is appended to ``telemetry.jsonl`` as it arrives (one JSON object per
line, ``{"t": epoch_seconds, ...}``), so a run that dies keeps what was
sampled.  tegrastats lines are parsed by :func:`parse_tegrastats` into the
fields the report's chart draws (RAM, swap, GPU load, temperatures, power
rails); a line without ``RAM`` is kept under ``"raw"``.  The framework reads
tegrastats itself: it does not import the product under test (``onboard``).
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import shlex
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from hil.evidence.samples import FEED
from hil.ssh.connection import SshConnection

#: The default sampling interval; a session's ``--hil-gpu-interval`` sets ``FEED.interval_ms``.
INTERVAL_MS = 500
NVIDIA_SMI_FIELDS = ("timestamp", "utilization.gpu", "memory.used", "temperature.gpu",
                     "power.draw")
_SMI_KEYS = ("timestamp", "gpu_util_pct", "mem_used_mb", "temp_c", "power_w")


_TS = re.compile(r"^(\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})\s")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?(\d+(?:,\d+)*)\]?)?")
_TEMP = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C(?=\s|$)")
_RAIL = re.compile(r"(?:^|\s)([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
#: tegrastats' temperature of a sensor that is switched off.
_OFFLINE_C = -256.0


def sampler_command(tool: str, interval_ms: int = INTERVAL_MS) -> str:
    """The remote command for ``tool`` ("tegrastats" or "nvidia-smi")."""
    if tool == "tegrastats":
        argv = ["tegrastats", "--interval", str(interval_ms)]
    elif tool == "nvidia-smi":
        argv = ["nvidia-smi", f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}",
                "--format=csv,noheader,nounits", "-lms", str(interval_ms)]
    else:
        raise ValueError(f"unknown telemetry tool {tool!r}")
    return "exec " + shlex.join(argv)


def parse_tegrastats(line: str) -> dict[str, Any]:
    """The charted fields of one JetPack tegrastats line; ``{"raw": line}`` without ``RAM``.

    ``{"timestamp", "ram_used_mb", "ram_total_mb", "swap_used_mb", "swap_total_mb",
    "engines": {"GR3D_FREQ": {"load_pct", "freq_mhz"}}, "temperatures_c": {name: C or
    None (sensor off)}, "rails": {name: {"current_mw", "average_mw"}}}``; absent
    fields are left out.
    """
    ram = _RAM.search(line)
    if ram is None:
        return {"raw": line}
    out: dict[str, Any] = {}
    ts = _TS.match(line.strip())
    if ts:
        with contextlib.suppress(ValueError):
            out["timestamp"] = datetime.strptime(ts[1], "%m-%d-%Y %H:%M:%S").isoformat()
    out["ram_used_mb"], out["ram_total_mb"] = int(ram[1]), int(ram[2])
    swap = _SWAP.search(line)
    if swap:
        out["swap_used_mb"], out["swap_total_mb"] = int(swap[1]), int(swap[2])
    gr3d = _GR3D.search(line)
    if gr3d:
        freqs = [int(f) for f in gr3d[2].split(",")] if gr3d[2] else []
        out["engines"] = {"GR3D_FREQ": {"load_pct": int(gr3d[1]), "freq_mhz": freqs}}
    temps = {m[1]: (None if float(m[2]) <= _OFFLINE_C else float(m[2]))
             for m in _TEMP.finditer(line)}
    if temps:
        out["temperatures_c"] = temps
    rails = {m[1]: {"current_mw": int(m[2]), "average_mw": int(m[3])}
             for m in _RAIL.finditer(line)}
    if rails:
        out["rails"] = rails
    return out


def _number(text: str) -> float | str | None:
    text = text.strip()
    if text in ("", "[N/A]", "N/A", "[Not Supported]"):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def parse_sample(tool: str, line: str) -> dict[str, Any]:
    """One sample line -> its fields (``{"raw": line}`` when it does not parse)."""
    if tool == "nvidia-smi":
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(_SMI_KEYS):
            return {"raw": line}
        return {key: (cells[0] if key == "timestamp" else _number(cell))
                for key, cell in zip(_SMI_KEYS, cells, strict=True)}
    if tool == "tegrastats":
        return parse_tegrastats(line)
    return {"raw": line}


class Telemetry:
    """Samples the board on its own channel and writes ``telemetry.jsonl``.

    Each sample is also published to :data:`hil.evidence.samples.FEED` under the
    connection's target name, for the GPU evidence of the tests as they end.
    """

    def __init__(self, conn: SshConnection, tool: str, path: Path,
                 interval_ms: int | None = None) -> None:
        self.conn = conn
        self.tool = tool
        self.path = path
        self.interval_ms = interval_ms or FEED.interval_ms
        self.source = str(getattr(conn, "target", None) or path.parent.name)
        self.samples = 0
        self.error = ""
        self._chan: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Telemetry:
        """Open the sampler's channel and start collecting (errors are kept, not raised)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        FEED.open(self.source)
        self._thread = threading.Thread(target=self._collect, name="hil-telemetry", daemon=True)
        self._thread.start()
        return self

    def _collect(self) -> None:
        try:
            chan = self.conn.exec(sampler_command(self.tool, self.interval_ms))
        except Exception as err:
            self.error = str(err)
            FEED.close(self.source)
            return
        self._chan = chan
        buf = b""
        fd = chan.fileno()
        with self.path.open("a", encoding="utf-8") as out:
            while not self._stop.is_set():
                with contextlib.suppress(OSError, ValueError):
                    select.select([fd], [], [], 0.2)
                ended = chan.closed or chan.eof_received or not self.conn.alive
                while chan.recv_ready():  # after reading the flags: the last lines too
                    buf += chan.recv(1 << 15)
                while b"\n" in buf:
                    raw, _, buf = buf.partition(b"\n")
                    line = raw.decode("utf-8", "replace").strip()
                    if not line:
                        continue
                    sample = {"t": round(time.time(), 3),
                              **parse_sample(self.tool, line)}
                    out.write(json.dumps(sample, separators=(",", ":"), default=str) + "\n")
                    out.flush()
                    self.samples += 1
                    FEED.publish(self.source, sample)
                if ended:
                    if chan.recv_stderr_ready():
                        self.error = chan.recv_stderr(4096).decode("utf-8", "replace").strip()
                    FEED.close(self.source)  # no sample will come: nobody waits for one
                    return

    def stop(self) -> None:
        """Close the sampler's channel (the remote tool dies on its next write)."""
        self._stop.set()
        if self._chan is not None:
            with contextlib.suppress(Exception):
                self._chan.close()
        if self._thread is not None:
            self._thread.join(5)
        FEED.close(self.source)
