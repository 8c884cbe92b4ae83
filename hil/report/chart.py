"""Telemetry of a run as CSV and as a PNG chart drawn with matplotlib.

The CSV needs nothing beyond the standard library.  The chart needs the
``chart`` extra (``pip install 'pytest-hil[chart]'``): matplotlib is imported
only when a chart is drawn, with its Agg canvas and no pyplot, so nothing
global (backend, figure registry) is touched and importing this module stays
cheap.  Without matplotlib, :func:`render_chart` raises
:class:`ChartUnavailableError`, whose message is the one-line hint to show.

Panels, top to bottom: GPU load (%), RAM used (MB), temperatures (C) and power
rails (mW) over time, with test boundaries as vertical lines: grey dashed
where a test starts, green/red/orange where it passed/failed/broke.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

RGB = tuple[int, int, int]

#: Series colours, in order (matplotlib's ``tab10``).
PALETTE: tuple[RGB, ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
#: Colour of a test-boundary line per marker kind.
OUTCOME_COLOURS: dict[str, RGB] = {
    "start": (128, 128, 128), "passed": (60, 170, 60), "failed": (220, 40, 40),
    "broken": (240, 150, 20), "skipped": (170, 170, 170),
}
UNKNOWN_MARKER_COLOUR: RGB = (200, 200, 200)
#: What to install for the chart; shown when matplotlib is missing.
CHART_HINT = "telemetry chart not drawn: pip install 'pytest-hil[chart]' (matplotlib) to get it"
DPI = 100


class ChartUnavailableError(ImportError):
    """matplotlib is not installed; the message says how to get the chart."""


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
    titles = {"gpu": "GPU load (%)", "ram": "RAM used (MB)", "temp": "Temperature (°C)",
              "power": "Power (mW)"}
    return [Panel(titles[g], tuple(s.values()), floor_zero=g != "temp")
            for g, s in groups.items() if s]


def _rgb(colour: RGB) -> tuple[float, float, float]:
    return (colour[0] / 255, colour[1] / 255, colour[2] / 255)


def render_chart(panels: Sequence[Panel], markers: Iterable[Marker] = (), *,
                 width: int = 1200, panel_height: int = 170, title: str = "") -> bytes:
    """Stacked line panels sharing one time axis, as PNG bytes of ``width`` pixels.

    Raises :class:`ChartUnavailableError` when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ChartUnavailableError(CHART_HINT) from err
    import io

    markers = list(markers)
    panels = list(panels) or [Panel("no telemetry", ())]
    times = [t for p in panels for s in p.series for t, _ in s.points] + [m.t for m in markers]
    t0 = min(times) if times else 0.0
    height = len(panels) * panel_height + (40 if title else 0) + 60
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    if title:
        figure.suptitle(title, fontsize=10)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        for j, series in enumerate(panel.series):
            pts = sorted(series.points)
            ax.plot([t - t0 for t, _ in pts], [v for _, v in pts], marker="." if len(pts) == 1
                    else "", linewidth=1.5, color=_rgb(PALETTE[j % len(PALETTE)]),
                    label=series.name)
        for m in markers:
            # Vertical lines need no antialiasing; without it they keep their exact colour.
            ax.axvline(m.t - t0, color=_rgb(OUTCOME_COLOURS.get(m.kind, UNKNOWN_MARKER_COLOUR)),
                       linewidth=1.2, linestyle="--" if m.kind == "start" else "-", zorder=1,
                       antialiased=False)
        if panel.floor_zero:
            ax.set_ylim(bottom=0)
        ax.set_title(panel.title, loc="left", fontsize=9)
        ax.grid(axis="y", color=(0.9, 0.9, 0.9), linewidth=0.8)
        ax.tick_params(labelsize=8)
        if panel.series:
            ax.legend(loc="upper left", fontsize=7, ncol=min(6, len(panel.series)),
                      frameon=False)
    axes[-1].set_xlabel("seconds since the first sample; grey dashed: test start, "
                        "green/red/orange: passed/failed/broken", fontsize=8)
    out = io.BytesIO()
    # No "Software" entry: the file does not change with the matplotlib version alone.
    figure.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()
