"""Telemetry of a run as CSV and as a PNG chart, in pure Python.

The chart is drawn on an RGB canvas and encoded with :mod:`zlib` and
:mod:`struct`: no matplotlib, no browser, no fonts.  That keeps it working on
any CI box with the standard library only, gives byte-identical output for the
same input, and costs a few milliseconds.  Text (panel titles, axis values,
series names) is drawn with a built-in 3x5 pixel font.

Panels, top to bottom: GPU load (%), RAM used (MB), temperatures (C) and power
rails (mW) over time, with test boundaries as vertical lines: grey where a
test starts, green/red/orange where it passed/failed/broke.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

RGB = tuple[int, int, int]

#: 3x5 glyphs, one string of 15 bits per character (rows top to bottom).
_FONT: dict[str, str] = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001010010", "8": "111101111101111",
    "9": "111101111001111", "A": "010101111101101", "B": "110101110101110",
    "C": "011100100100011", "D": "110101101101110", "E": "111100110100111",
    "F": "111100110100100", "G": "011100101101011", "H": "101101111101101",
    "I": "111010010010111", "J": "001001001101010", "K": "101101110101101",
    "L": "100100100100111", "M": "101111111101101", "N": "110101101101101",
    "O": "010101101101010", "P": "110101110100100", "Q": "010101101110011",
    "R": "110101110101101", "S": "011100010001110", "T": "111010010010010",
    "U": "101101101101111", "V": "101101101101010", "W": "101101111111101",
    "X": "101101010101101", "Y": "101101010010010", "Z": "111001010100111",
    ".": "000000000000010", "-": "000000111000000", "%": "101001010100101",
    ":": "000010000010000", "/": "001001010100100", "_": "000000000000111",
    " ": "000000000000000", "(": "010100100100010", ")": "010001001001010",
    "=": "000111000111000", "+": "000010111010000",
}

PALETTE: tuple[RGB, ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
OUTCOME_COLOURS: dict[str, RGB] = {
    "passed": (60, 170, 60), "failed": (220, 40, 40), "broken": (240, 150, 20),
    "skipped": (170, 170, 170),
}


class Canvas:
    """An RGB pixel buffer with the few drawing primitives a line chart needs."""

    def __init__(self, width: int, height: int, background: RGB = (255, 255, 255)) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(background) * (width * height))

    def set(self, x: int, y: int, colour: RGB) -> None:
        """Colour one pixel (ignored outside the canvas)."""
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i : i + 3] = bytes(colour)

    def get(self, x: int, y: int) -> RGB:
        """The colour of one pixel."""
        i = (y * self.width + x) * 3
        return (self.pixels[i], self.pixels[i + 1], self.pixels[i + 2])

    def rect(self, x0: int, y0: int, x1: int, y1: int, colour: RGB) -> None:
        """Fill the rectangle with corners (x0, y0) and (x1, y1), inclusive."""
        for y in range(max(0, min(y0, y1)), min(self.height, max(y0, y1) + 1)):
            for x in range(max(0, min(x0, x1)), min(self.width, max(x0, x1) + 1)):
                self.set(x, y, colour)

    def line(self, x0: int, y0: int, x1: int, y1: int, colour: RGB, width: int = 1,
             dash: int = 0) -> None:
        """Bresenham line; ``width`` 2 thickens it, ``dash`` > 0 draws dashes of that length."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err, step = dx + dy, 0
        while True:
            if not dash or (step // dash) % 2 == 0:
                self.set(x0, y0, colour)
                if width > 1:
                    self.set(x0 + 1, y0, colour)
                    self.set(x0, y0 + 1, colour)
            if x0 == x1 and y0 == y1:
                return
            step += 1
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, colour: RGB, scale: int = 2) -> int:
        """Draw ``text`` (upper-cased; unknown characters become spaces); returns the end x."""
        for ch in text.upper():
            glyph = _FONT.get(ch, _FONT[" "])
            for bit, on in enumerate(glyph):
                if on == "1":
                    gx, gy = bit % 3, bit // 3
                    self.rect(x + gx * scale, y + gy * scale,
                              x + gx * scale + scale - 1, y + gy * scale + scale - 1, colour)
            x += 4 * scale
        return x

    def png(self) -> bytes:
        """The canvas encoded as an 8-bit RGB PNG."""
        raw = bytearray()
        row = self.width * 3
        for y in range(self.height):
            raw.append(0)  # filter type None
            raw += self.pixels[y * row : (y + 1) * row]

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b""))


def text_width(text: str, scale: int = 2) -> int:
    """Width in pixels of ``text`` drawn by :meth:`Canvas.text`."""
    return len(text) * 4 * scale


@dataclass(frozen=True)
class Marker:
    """A test boundary on the time axis (epoch seconds)."""

    t: float
    kind: str  # "start" or an outcome: passed, failed, broken, skipped
    label: str = ""


@dataclass
class Series:
    """One named line: (epoch seconds, value) points."""

    name: str
    points: list[tuple[float, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Panel:
    """One chart panel: a title, a unit and its series."""

    title: str
    series: tuple[Series, ...]
    floor_zero: bool = True


def flatten(sample: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested telemetry dict -> ``{"a.b": number}``; non-numbers are dropped."""
    out: dict[str, float] = {}
    for key, value in sample.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[name] = float(value)
        elif isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
    return out


def telemetry_csv(samples: Sequence[Mapping[str, Any]]) -> str:
    """Samples (each with ``t``) as CSV: ``t,elapsed_s,<every numeric field>``."""
    flat = [flatten(s) for s in samples if isinstance(s.get("t"), (int, float))]
    columns = sorted({k for f in flat for k in f if k != "t"})
    t0 = flat[0]["t"] if flat else 0.0
    lines = [",".join(["t", "elapsed_s", *columns])]
    for f in flat:
        cells = [f"{f['t']:.3f}", f"{f['t'] - t0:.3f}"]
        cells += [_num(f[c]) if c in f else "" for c in columns]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.3f}".rstrip("0")


def _classify(key: str) -> str | None:
    """Which panel a flattened telemetry key belongs to (None: not charted).

    Knows the shape of ``onboard.diag.tegrastats.TegrastatsSample.to_dict()``
    (``engines.GR3D_FREQ.load_pct``, ``ram_used_mb``, ``temperatures_c.*``,
    ``rails.*.current_mw``) and falls back to key words for other shapes.
    """
    k = key.lower()
    if k.startswith("engines."):
        return "gpu" if k.startswith("engines.gr3d") and k.endswith("load_pct") else None
    if k.startswith("temperatures_c."):
        return "temp"
    if k.startswith("rails."):
        return "power" if k.endswith(("current_mw", ".now", ".cur")) else None
    if k in ("ram_used_mb", "ram.used_mb", "ram.used"):
        return "ram"
    if "gr3d" in k or (k.startswith("gpu") and ("load" in k or "util" in k)):
        return "gpu"
    if "temp" in k:
        return "temp"
    if k.endswith("_mw") and "avg" not in k and "average" not in k:
        return "power"
    return None


def _series_name(key: str) -> str:
    parts = [p for p in key.split(".") if p.lower() not in
             ("temperatures_c", "rails", "engines", "current_mw", "load_pct")]
    return (parts[-1] if parts else key).replace("_", " ")


def panels_from_samples(samples: Sequence[Mapping[str, Any]]) -> list[Panel]:
    """Group telemetry fields into the GPU, RAM, temperature and power panels."""
    groups: dict[str, dict[str, Series]] = {"gpu": {}, "ram": {}, "temp": {}, "power": {}}
    for sample in samples:
        t = sample.get("t")
        if not isinstance(t, (int, float)):
            continue
        for key, value in flatten(sample).items():
            group = _classify(key) if key != "t" else None
            if group is None:
                continue
            series = groups[group].setdefault(key, Series(_series_name(key)))
            series.points.append((float(t), value))
    titles = {"gpu": "GPU LOAD %", "ram": "RAM USED MB", "temp": "TEMPERATURE C",
              "power": "POWER MW"}
    return [Panel(titles[g], tuple(s.values()), floor_zero=g != "temp")
            for g, s in groups.items() if s]


def render_chart(panels: Sequence[Panel], markers: Iterable[Marker] = (), *,
                 width: int = 1200, panel_height: int = 170, title: str = "") -> bytes:
    """Stacked line panels sharing one time axis, as PNG bytes."""
    markers = list(markers)
    times = [t for p in panels for s in p.series for t, _ in s.points] + [m.t for m in markers]
    t0, t1 = (min(times), max(times)) if times else (0.0, 1.0)
    if t1 - t0 < 1e-9:
        t1 = t0 + 1.0
    left, right, top, gap, bottom = 90, 20, 34 if title else 12, 34, 40
    height = top + max(1, len(panels)) * (panel_height + gap) - gap + bottom
    canvas = Canvas(width, height)
    ink, grid, frame = (30, 30, 30), (228, 228, 228), (150, 150, 150)
    if title:
        canvas.text(left, 10, title, ink, 2)
    plot_w = width - left - right

    def x_of(t: float) -> int:
        return left + round((t - t0) / (t1 - t0) * (plot_w - 1))

    for i, panel in enumerate(panels or [Panel("NO TELEMETRY", ())]):
        y_top = top + i * (panel_height + gap) + 14
        y_bot = y_top + panel_height - 14
        values = [v for s in panel.series for _, v in s.points]
        lo = min(values + ([0.0] if panel.floor_zero else [])) if values else 0.0
        hi = max(values) if values else 1.0
        if hi - lo < 1e-9:
            hi = lo + 1.0
        hi += (hi - lo) * 0.05

        def y_of(v: float, lo: float = lo, hi: float = hi, y_top: int = y_top,
                 y_bot: int = y_bot) -> int:
            return y_bot - round((v - lo) / (hi - lo) * (y_bot - y_top))

        for frac in (0.25, 0.5, 0.75):
            gy = y_bot - round(frac * (y_bot - y_top))
            canvas.line(left, gy, left + plot_w - 1, gy, grid)
        canvas.text(6, y_top - 2, _num(round(hi, 1)), frame, 2)
        canvas.text(6, y_bot - 10, _num(round(lo, 1)), frame, 2)
        canvas.text(left, y_top - 14, panel.title, ink, 2)
        for m in markers:
            colour = OUTCOME_COLOURS.get(m.kind, (200, 200, 200))
            canvas.line(x_of(m.t), y_top, x_of(m.t), y_bot, colour, dash=0 if m.kind != "start"
                        else 3)
        legend_x = left + text_width(panel.title) + 24
        for j, series in enumerate(panel.series):
            colour = PALETTE[j % len(PALETTE)]
            pts = sorted(series.points)
            for (ta, va), (tb, vb) in itertools.pairwise(pts):
                canvas.line(x_of(ta), y_of(va), x_of(tb), y_of(vb), colour, width=2)
            if len(pts) == 1:
                canvas.rect(x_of(pts[0][0]) - 1, y_of(pts[0][1]) - 1,
                            x_of(pts[0][0]) + 1, y_of(pts[0][1]) + 1, colour)
            if legend_x < width - 80:
                canvas.rect(legend_x, y_top - 12, legend_x + 7, y_top - 6, colour)
                legend_x = canvas.text(legend_x + 10, y_top - 14, series.name[:18], colour, 2) + 12
        canvas.line(left, y_top, left, y_bot, frame)
        canvas.line(left, y_bot, left + plot_w - 1, y_bot, frame)
    # Time axis: elapsed seconds at five ticks.
    axis_y = height - bottom + 8
    for k in range(5):
        t = t0 + (t1 - t0) * k / 4
        label = f"{t - t0:.0f}S"
        x = min(x_of(t), width - right - text_width(label))
        canvas.text(x, axis_y, label, frame, 2)
    canvas.text(left, axis_y + 16, "TIME SINCE FIRST SAMPLE. GREY: TEST START  GREEN/RED/ORANGE: "
                "PASSED/FAILED/BROKEN", frame, 2)
    return canvas.png()


def read_png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header (raises ValueError when not a PNG)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def decode_png_rgb(data: bytes) -> Canvas:
    """Decode a PNG written by :meth:`Canvas.png` (filter 0, RGB 8-bit) back into a canvas."""
    width, height = read_png_size(data)
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    canvas = Canvas(width, height)
    row = width * 3
    for y in range(height):
        start = y * (row + 1)
        if raw[start] != 0:
            raise ValueError("only unfiltered rows are supported")
        canvas.pixels[y * row : (y + 1) * row] = raw[start + 1 : start + 1 + row]
    return canvas
