"""Plots of a day per zone, from a recording or from a local store.

In:  a recording (frames decoded; verified too when a keyring is given) or a local SQLite
store (gateway.forward.local.LocalStore), a local date.  Out: a PNG (matplotlib) or a
self-contained HTML page (the same figure as inline SVG, and a table of the day's extremes
per zone): one column per zone, rows for crowd, sound, PM2.5 and temperature, one line
per site, local time on the x axis.

On failure: `PlotError` with what was missing (no data that day: the days that have data).
"""

from __future__ import annotations

import datetime as dt
import html
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from firmware import metrics, protocol
from fleet.keyring import Keyring
from hardware.sites import load_placements
from simulators.recording import RecordingReader
from simulators.zonemodel import local_day_and_hour, local_to_utc

# (measurement, field, row title, unit)
PANELS = (
    ("crowd", "crowd_count", "Crowd: devices heard", "devices"),
    ("noise", "laeq_db", "Sound: LAeq", "dB(A)"),
    ("air", "pm25_ugm3", "PM2.5", "µg/m³"),
    ("air", "temperature_c", "Temperature", "°C"),
)
ZONE_ORDER = ("spoorzone", "maasterras", "spuiboulevard")


class PlotError(ValueError):
    """Nothing to plot; the message says why and what is there."""


@dataclass
class DayData:
    day: dt.date
    source: str
    # (zone, measurement, field) -> site -> [(local hour, value)]
    series: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    days_seen: set = field(default_factory=set)

    def add(self, zone: str, site: str, measurement: str, name: str, t_s: int,
            value: float) -> None:
        day, hour = local_day_and_hour(t_s)
        self.days_seen.add(day)
        if day == self.day:
            self.series[(zone, measurement, name)][site].append((hour, value))

    @property
    def empty(self) -> bool:
        return not self.series

    def zones(self) -> list[str]:
        found = {z for z, _, _ in self.series}
        return [z for z in ZONE_ORDER if z in found] + sorted(found - set(ZONE_ORDER))


def _wanted() -> set[tuple[str, str]]:
    return {(m, f) for m, f, _, _ in PANELS}


def from_recording(path: str | Path, day: dt.date | None = None,
                   keyring: Keyring | None = None, zones_path: str | None = None) -> DayData:
    """The day's readings in a recording (the first day in it when `day` is None).  Sites
    come from the keyring, else from the zones file's placements, else the node id."""
    reader = RecordingReader(path)
    sites = {p.node_id: p.site for p in load_placements(zones_path)}
    if keyring is not None:
        sites.update({e.node_id: e.site for e in keyring})
    wanted = _wanted()
    data: DayData | None = None
    lo = hi = 0
    for msg in reader:
        if msg.is_control:
            continue
        if data is not None and len(msg.payload) >= protocol.MIN_FRAME:
            # skip frames of other days before paying for a decode (§2: timestamp at 12)
            ts = int.from_bytes(msg.payload[12:16], "big")
            if not lo <= ts < hi:
                data.days_seen.add(local_day_and_hour(ts)[0])
                continue
        parsed = protocol.parse_topic_up(msg.topic)
        try:
            frame = protocol.decode(msg.payload)
        except protocol.FrameError:
            continue
        if parsed is None or frame.is_status or parsed[1] != frame.node_id:
            continue
        if keyring is not None:
            entry = keyring.get(frame.node_id)
            key = entry.keys.get(frame.key_id) if entry else None
            if key is None or not protocol.verify(frame, key):
                continue
        if data is None:
            data = DayData(day or local_day_and_hour(frame.timestamp)[0], str(path))
            lo, hi = day_bounds(data.day)
            if not lo <= frame.timestamp < hi:
                data.days_seen.add(local_day_and_hour(frame.timestamp)[0])
                continue
        kind = metrics.KIND_NAMES.get(frame.kind, "?")
        site = sites.get(frame.node_id, protocol.node_name(frame.node_id))
        for metric_id, raw in frame.metrics:
            m = metrics.BY_ID.get(metric_id)
            if m is not None and (kind, m.name) in wanted:
                data.add(parsed[0], site, kind, m.name, frame.timestamp, m.to_value(raw))
    if data is None:
        raise PlotError(f"{path}: no readable frames")
    return data


def from_store(path: str | Path, day: dt.date | None = None) -> DayData:
    """The day's readings in a local store (the first day in it when `day` is None)."""
    from gateway.forward.local import LocalStore

    store = LocalStore(path, create=False)
    try:
        nodes = {(r["node"], r["measurement"]): r for r in store.latest()}
        where = {node: (r["zone"], r["site"]) for (node, _), r in nodes.items()}
        points = {(m, f): store.points(m, f) for m, f in _wanted()}
    finally:
        store.close()
    if day is None:
        times = [p.time_s for pts in points.values() for p in pts]
        if not times:
            raise PlotError(f"{path}: the store holds no crowd, sound or air readings")
        day = local_day_and_hour(min(times))[0]
    data = DayData(day, str(path))
    for (measurement, name), pts in points.items():
        for p in pts:
            zone, site = where.get(p.node, ("?", p.node))
            data.add(zone, site, measurement, name, p.time_s, p.value)
    return data


def render(data: DayData, out: str | Path) -> Path:
    """Draw `data` to `out` (.png or .html)."""
    out = Path(out)
    if data.empty:
        seen = ", ".join(str(d) for d in sorted(data.days_seen)[:10]) or "none"
        raise PlotError(f"{data.source}: no readings on {data.day}; days with data: {seen}")
    suffix = out.suffix.lower()
    if suffix not in (".png", ".html", ".htm", ".svg"):
        raise PlotError(f"{out}: give a .png or .html file name")
    fig = _figure(data, minute_means=suffix != ".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        fig.savefig(out, dpi=100)
    elif suffix == ".svg":
        fig.savefig(out, format="svg")
    else:
        svg = io.StringIO()
        fig.savefig(svg, format="svg")
        out.write_text(_html(data, svg.getvalue()), encoding="utf-8")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out


def _minute_means(pts: list[tuple[float, float]], energetic: bool) -> list[tuple[float, float]]:
    """Per-minute means (of sound energy for dB levels: that is the minute's LAeq)."""
    buckets: dict[int, list[float]] = defaultdict(list)
    for hour, value in pts:
        buckets[int(hour * 60)].append(10 ** (value / 10) if energetic else value)
    out = []
    for minute in sorted(buckets):
        mean = sum(buckets[minute]) / len(buckets[minute])
        out.append((minute / 60, 10 * math.log10(mean) if energetic else mean))
    return out


def _figure(data: DayData, minute_means: bool = False):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zones = data.zones()
    fig, axes = plt.subplots(len(PANELS), len(zones), figsize=(5 * len(zones), 2.6 * len(PANELS)),
                             sharex=True, sharey="row", squeeze=False, layout="constrained")
    weekday = data.day.strftime("%A")
    fig.suptitle(f"{data.day} ({weekday}), local time — {Path(data.source).name}",
                 fontsize=13)
    for col, zone in enumerate(zones):
        for row, (measurement, name, title, unit) in enumerate(PANELS):
            ax = axes[row][col]
            by_site = data.series.get((zone, measurement, name), {})
            for site in sorted(by_site):
                pts = sorted(by_site[site])
                if minute_means and len(pts) > 1440:
                    pts = _minute_means(pts, energetic=unit == "dB(A)")
                ax.plot([h for h, _ in pts], [v for _, v in pts], linewidth=0.8, label=site)
            if row == 0:
                ax.set_title(zone.capitalize(), fontsize=12, fontweight="bold")
            if col == 0:
                ax.set_ylabel(f"{title}\n({unit})", fontsize=9)
            if by_site:
                ax.legend(fontsize=7, loc="upper left", frameon=False)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes,
                        color="grey")
            ax.grid(True, alpha=0.3)
            ax.set_xlim(0, 24)
            ax.set_xticks(range(0, 25, 3))
            if row == len(PANELS) - 1:
                ax.set_xlabel("hour (Europe/Amsterdam)")
    return fig


def _html(data: DayData, svg: str) -> str:
    rows = []
    for zone in data.zones():
        cells = [f"<td>{html.escape(zone)}</td>"]
        for measurement, name, _title, unit in PANELS:
            values = [v for pts in data.series.get((zone, measurement, name), {}).values()
                      for _, v in pts]
            if values:
                cells.append(f"<td>{min(values):.1f} .. {max(values):.1f} {html.escape(unit)}"
                             "</td>")
            else:
                cells.append("<td>–</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    heads = "".join(f"<th>{html.escape(t)}</th>" for _, _, t, _ in PANELS)
    svg = svg[svg.find("<svg"):]
    title = f"Dordt zones on {data.day}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}svg{{max-width:100%;height:auto}}
</style></head><body>
<h1>{html.escape(title)} ({data.day.strftime("%A")})</h1>
<p>Source: {html.escape(data.source)}. Local time (Europe/Amsterdam); one line per site;
per-minute means (sound: the minute's LAeq).</p>
<table><tr><th>zone</th>{heads}</tr>
{chr(10).join(rows)}
</table>
{svg}
</body></html>
"""


def day_bounds(day: dt.date) -> tuple[int, int]:
    """Unix times of local midnight at the start and end of `day`."""
    return local_to_utc(day, 0), local_to_utc(day, 24)
