"""Parse JetPack 6 ``tegrastats`` lines into :class:`TegrastatsSample`.

One line looks like::

    11-22-2026 10:29:36 RAM 2147/7620MB (lfb 2x4MB) SWAP 1476/3810MB (cached 1MB)
    CPU [0%@729,0%@729,off,off,0%@729,0%@729] GR3D_FREQ 0% cpu@47.687C soc2@46.718C
    gpu@48.625C tj@48.625C VDD_IN 4556mW/4556mW VDD_CPU_GPU_CV 483mW/483mW ...

(all on one line).  Engines come as ``GR3D_FREQ 26%``, ``GR3D_FREQ 26%@[306]``,
``EMC_FREQ 0%@2133``, ``APE 174`` or ``NVENC off``; a temperature of ``-256C``
is a sensor that is switched off (kept as ``None``); power rails are
``NAME current mW/average mW``.  Tokens this parser does not know are kept in
``unparsed`` so that a newer tegrastats does not break telemetry; a known
field that is malformed, or a line without ``RAM``, is a :class:`ParseError`.

The framework parses its telemetry samples with :func:`parse_line` and stores
:meth:`TegrastatsSample.to_dict`; :meth:`TegrastatsSample.from_dict` reads it back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from onboard.errors import ParseError

#: tegrastats' temperature for a sensor that is offline.
OFFLINE_TEMPERATURE_C = -256.0
#: tegrastats' timestamp format (``--timestamp`` is the JetPack 6 default in our images).
TIMESTAMP_FORMAT = "%m-%d-%Y %H:%M:%S"

_TIMESTAMP = re.compile(r"(?P<ts>\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})")
_RAM = re.compile(r"RAM (?P<used>\d+)/(?P<total>\d+)MB(?: \(lfb (?P<n>\d+)x(?P<size>\d+)MB\))?")
_SWAP = re.compile(r"SWAP (?P<used>\d+)/(?P<total>\d+)MB(?: \(cached (?P<cached>\d+)MB\))?")
_CPU = re.compile(r"CPU \[(?P<cores>[^\]]*)\]")
_CORE = re.compile(r"(?P<load>\d+)%(?:@(?P<freq>\d+))?")
_RAIL = re.compile(r"(?P<name>[A-Z][A-Z0-9_]*) (?P<cur>\d+)(?:mW)?/(?P<avg>\d+)(?:mW)?")
_ENGINE = re.compile(r"(?P<name>[A-Z][A-Z0-9_]*) (?P<load>\d+)%(?:@\[?(?P<freq>\d+(?:,\d+)*)\]?)?")
_CLOCK = re.compile(r"(?P<name>[A-Z][A-Z0-9_]*) (?P<mhz>\d+|off)")
_TEMP = re.compile(r"(?P<name>[A-Za-z][A-Za-z0-9_]*)@(?P<temp>-?\d+(?:\.\d+)?)C")
#: Fields whose keyword, when present, must parse.
_STRICT = {"RAM": _RAM, "SWAP": _SWAP, "CPU": _CPU, "GR3D_FREQ": _ENGINE}


@dataclass(frozen=True)
class CpuCore:
    """One CPU core: ``off``, or its load in percent and clock in MHz."""

    index: int
    online: bool
    load_pct: int | None = None
    freq_mhz: int | None = None


@dataclass(frozen=True)
class EngineLoad:
    """A hardware engine (GR3D = the GPU, EMC, VIC, NVENC, APE...): load and clocks.

    ``load_pct`` is ``None`` for engines that report only a clock (``APE 174``);
    ``online`` is ``False`` for ``NVENC off``.
    """

    load_pct: int | None
    freq_mhz: tuple[int, ...] = ()
    online: bool = True


@dataclass(frozen=True)
class PowerRail:
    """A power rail: instantaneous and average power in milliwatts."""

    current_mw: int
    average_mw: int


@dataclass(frozen=True)
class TegrastatsSample:
    """One parsed tegrastats line."""

    ram_used_mb: int
    ram_total_mb: int
    timestamp: datetime | None = None
    lfb_blocks: int | None = None
    lfb_block_mb: int | None = None
    swap_used_mb: int | None = None
    swap_total_mb: int | None = None
    swap_cached_mb: int | None = None
    cpus: tuple[CpuCore, ...] = ()
    engines: Mapping[str, EngineLoad] = field(default_factory=dict)
    temperatures_c: Mapping[str, float | None] = field(default_factory=dict)
    rails: Mapping[str, PowerRail] = field(default_factory=dict)
    unparsed: tuple[str, ...] = ()

    @property
    def gpu_load_pct(self) -> int | None:
        """GPU (GR3D) load in percent, or ``None`` when the line has no GR3D_FREQ."""
        gr3d = self.engines.get("GR3D_FREQ")
        return gr3d.load_pct if gr3d else None

    @property
    def gpu_freq_mhz(self) -> tuple[int, ...]:
        """GPU clocks in MHz (one per GPC on boards that report several); empty if absent."""
        gr3d = self.engines.get("GR3D_FREQ")
        return gr3d.freq_mhz if gr3d else ()

    @property
    def offline_sensors(self) -> tuple[str, ...]:
        """Names of the temperature sensors reported as ``-256C``."""
        return tuple(name for name, value in self.temperatures_c.items() if value is None)

    @property
    def online_cpus(self) -> int:
        """How many CPU cores are online."""
        return sum(1 for core in self.cpus if core.online)

    @property
    def input_power_mw(self) -> int | None:
        """Instantaneous board input power (``VDD_IN``), if reported."""
        rail = self.rails.get("VDD_IN")
        return rail.current_mw if rail else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (timestamp as ISO 8601); :meth:`from_dict` reverses it."""
        return {
            "timestamp": self.timestamp.isoformat() if self.timestamp else None,
            "ram_used_mb": self.ram_used_mb,
            "ram_total_mb": self.ram_total_mb,
            "lfb_blocks": self.lfb_blocks,
            "lfb_block_mb": self.lfb_block_mb,
            "swap_used_mb": self.swap_used_mb,
            "swap_total_mb": self.swap_total_mb,
            "swap_cached_mb": self.swap_cached_mb,
            "cpus": [
                {
                    "index": c.index,
                    "online": c.online,
                    "load_pct": c.load_pct,
                    "freq_mhz": c.freq_mhz,
                }
                for c in self.cpus
            ],
            "engines": {
                name: {"load_pct": e.load_pct, "freq_mhz": list(e.freq_mhz), "online": e.online}
                for name, e in self.engines.items()
            },
            "temperatures_c": dict(self.temperatures_c),
            "rails": {
                name: {"current_mw": r.current_mw, "average_mw": r.average_mw}
                for name, r in self.rails.items()
            },
            "unparsed": list(self.unparsed),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TegrastatsSample:
        """Rebuild a sample from :meth:`to_dict`."""
        stamp = data.get("timestamp")
        return cls(
            timestamp=datetime.fromisoformat(stamp) if stamp else None,
            ram_used_mb=data["ram_used_mb"],
            ram_total_mb=data["ram_total_mb"],
            lfb_blocks=data.get("lfb_blocks"),
            lfb_block_mb=data.get("lfb_block_mb"),
            swap_used_mb=data.get("swap_used_mb"),
            swap_total_mb=data.get("swap_total_mb"),
            swap_cached_mb=data.get("swap_cached_mb"),
            cpus=tuple(CpuCore(**core) for core in data.get("cpus", ())),
            engines={
                name: EngineLoad(e["load_pct"], tuple(e["freq_mhz"]), e["online"])
                for name, e in data.get("engines", {}).items()
            },
            temperatures_c=dict(data.get("temperatures_c", {})),
            rails={name: PowerRail(**rail) for name, rail in data.get("rails", {}).items()},
            unparsed=tuple(data.get("unparsed", ())),
        )


def _parse_cores(text: str, line: str) -> tuple[CpuCore, ...]:
    cores: list[CpuCore] = []
    for index, entry in enumerate(text.split(",")):
        entry = entry.strip()
        if entry == "off":
            cores.append(CpuCore(index=index, online=False))
            continue
        match = _CORE.fullmatch(entry)
        if match is None:
            raise ParseError("tegrastats line", line, f"bad CPU core entry {entry!r}")
        freq = match["freq"]
        cores.append(
            CpuCore(
                index=index,
                online=True,
                load_pct=int(match["load"]),
                freq_mhz=int(freq) if freq else None,
            )
        )
    return tuple(cores)


def _at_token_end(line: str, end: int) -> bool:
    return end == len(line) or line[end].isspace()


def parse_line(line: str) -> TegrastatsSample:
    """Parse one tegrastats line; raise :class:`ParseError` saying what is wrong."""
    text = line.strip()
    if not text:
        raise ParseError("tegrastats line", line, "empty line")
    values: dict[str, Any] = {}
    engines: dict[str, EngineLoad] = {}
    temperatures: dict[str, float | None] = {}
    rails: dict[str, PowerRail] = {}
    unparsed: list[str] = []
    pos = 0
    stamp = _TIMESTAMP.match(text)
    if stamp is not None:
        try:
            values["timestamp"] = datetime.strptime(stamp["ts"], TIMESTAMP_FORMAT)
        except ValueError as exc:
            raise ParseError("tegrastats line", line, f"bad timestamp {stamp['ts']!r}") from exc
        pos = stamp.end()
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        match = _RAM.match(text, pos)
        if match and _at_token_end(text, match.end()):
            values["ram_used_mb"], values["ram_total_mb"] = int(match["used"]), int(match["total"])
            if match["n"]:
                values["lfb_blocks"], values["lfb_block_mb"] = int(match["n"]), int(match["size"])
            pos = match.end()
            continue
        match = _SWAP.match(text, pos)
        if match and _at_token_end(text, match.end()):
            values["swap_used_mb"], values["swap_total_mb"] = (
                int(match["used"]),
                int(match["total"]),
            )
            if match["cached"]:
                values["swap_cached_mb"] = int(match["cached"])
            pos = match.end()
            continue
        match = _CPU.match(text, pos)
        if match and _at_token_end(text, match.end()):
            values["cpus"] = _parse_cores(match["cores"], line)
            pos = match.end()
            continue
        match = _RAIL.match(text, pos)
        if match and _at_token_end(text, match.end()):
            rails[match["name"]] = PowerRail(int(match["cur"]), int(match["avg"]))
            pos = match.end()
            continue
        match = _ENGINE.match(text, pos)
        if match and _at_token_end(text, match.end()):
            freqs = tuple(int(f) for f in match["freq"].split(",")) if match["freq"] else ()
            engines[match["name"]] = EngineLoad(int(match["load"]), freqs)
            pos = match.end()
            continue
        match = _TEMP.match(text, pos)
        if match and _at_token_end(text, match.end()):
            celsius = float(match["temp"])
            temperatures[match["name"]] = None if celsius <= OFFLINE_TEMPERATURE_C else celsius
            pos = match.end()
            continue
        match = _CLOCK.match(text, pos)
        if (
            match
            and _at_token_end(text, match.end())
            and match["name"] not in _STRICT
            and match["name"] != "IRAM"
        ):
            off = match["mhz"] == "off"
            engines[match["name"]] = EngineLoad(None, () if off else (int(match["mhz"]),), online=not off)
            pos = match.end()
            continue
        end = pos
        while end < len(text) and not text[end].isspace():
            end += 1
        token = text[pos:end]
        if token in _STRICT:
            rest = text[pos : pos + 40]
            raise ParseError("tegrastats line", line, f"malformed {token} field at {rest!r}")
        unparsed.append(token)
        pos = end
    if "ram_used_mb" not in values:
        raise ParseError("tegrastats line", line, "no 'RAM used/totalMB' field")
    return TegrastatsSample(
        engines=engines,
        temperatures_c=temperatures,
        rails=rails,
        unparsed=tuple(unparsed),
        **values,
    )


def parse_lines(lines: Iterable[str]) -> Iterator[TegrastatsSample]:
    """Parse each non-empty line; a malformed line raises with its text."""
    for line in lines:
        if line.strip():
            yield parse_line(line)
