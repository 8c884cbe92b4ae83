"""Board telemetry sampled while the suite runs: ``tegrastats`` or ``nvidia-smi``.

The sampler runs on its own channel of the session's SSH connection and each
sample is appended to ``telemetry.jsonl`` as it arrives (one JSON object per
line, ``{"t": epoch_seconds, ...}``), so a run that dies keeps what was
sampled.  tegrastats lines are parsed with :func:`onboard.diag.tegrastats.parse_line`
when that module is importable (host side only); otherwise, or when a line
does not parse, the line is kept under ``"raw"``.
"""

from __future__ import annotations

import contextlib
import json
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hil.ssh.connection import SshConnection

INTERVAL_MS = 500
NVIDIA_SMI_FIELDS = ("timestamp", "utilization.gpu", "memory.used", "temperature.gpu",
                     "power.draw")
_SMI_KEYS = ("timestamp", "gpu_util_pct", "mem_used_mb", "temp_c", "power_w")


def sampler_command(tool: str, interval_ms: int = INTERVAL_MS) -> str:
    """The remote command for ``tool`` ("tegrastats" or "nvidia-smi")."""
    if tool == "tegrastats":
        return f"exec tegrastats --interval {interval_ms}"
    if tool == "nvidia-smi":
        return (f"exec nvidia-smi --query-gpu={','.join(NVIDIA_SMI_FIELDS)} "
                f"--format=csv,noheader,nounits -lms {interval_ms}")
    raise ValueError(f"unknown telemetry tool {tool!r}")


def _tegrastats_parser() -> Callable[[str], dict[str, Any]] | None:
    try:
        from onboard.diag.tegrastats import parse_line
    except ImportError:
        return None

    def parse(line: str) -> dict[str, Any]:
        return dict(parse_line(line).to_dict())

    return parse


def _number(text: str) -> float | str | None:
    text = text.strip()
    if text in ("", "[N/A]", "N/A", "[Not Supported]"):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def parse_sample(tool: str, line: str,
                 tegra: Callable[[str], dict[str, Any]] | None = None) -> dict[str, Any]:
    """One sample line -> its fields (``{"raw": line}`` when it does not parse)."""
    if tool == "nvidia-smi":
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(_SMI_KEYS):
            return {"raw": line}
        return {key: (cells[0] if key == "timestamp" else _number(cell))
                for key, cell in zip(_SMI_KEYS, cells, strict=True)}
    if tegra is not None:
        try:
            return tegra(line)
        except Exception:  # a line this parser does not know is still kept
            return {"raw": line}
    return {"raw": line}


class Telemetry:
    """Samples the board on its own channel and writes ``telemetry.jsonl``."""

    def __init__(self, conn: SshConnection, tool: str, path: Path,
                 interval_ms: int = INTERVAL_MS) -> None:
        self.conn = conn
        self.tool = tool
        self.path = path
        self.interval_ms = interval_ms
        self.samples = 0
        self.error = ""
        self._chan: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tegra = _tegrastats_parser() if tool == "tegrastats" else None

    def start(self) -> Telemetry:
        """Open the sampler's channel and start collecting (errors are kept, not raised)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._collect, name="hil-telemetry", daemon=True)
        self._thread.start()
        return self

    def _collect(self) -> None:
        try:
            chan = self.conn.exec(sampler_command(self.tool, self.interval_ms))
        except Exception as err:
            self.error = str(err)
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
                              **parse_sample(self.tool, line, self._tegra)}
                    out.write(json.dumps(sample, separators=(",", ":"), default=str) + "\n")
                    out.flush()
                    self.samples += 1
                if ended:
                    if chan.recv_stderr_ready():
                        self.error = chan.recv_stderr(4096).decode("utf-8", "replace").strip()
                    return

    def stop(self) -> None:
        """Close the sampler's channel (the remote tool dies on its next write)."""
        self._stop.set()
        if self._chan is not None:
            with contextlib.suppress(Exception):
                self._chan.close()
        if self._thread is not None:
            self._thread.join(5)
