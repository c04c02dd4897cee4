"""The fleet health page: one self-contained HTML file (inline CSS, inline SVG charts drawn
here; no script, no font, nothing fetched).

In:  a `FleetHealth` (fleet/fleet_health.py).  Out: the page's text: the node, gateway and
zone tables and three charts (readings buffered per gateway over time, free heap per node
over time, firmware versions per zone).

Every value from the store is escaped (html.escape, quotes too): node ids, zones, sites and
gateway names arrive over the network and anyone who can write to the store could put
markup there.  The page also carries a Content-Security-Policy that allows no script and
no fetch at all, so an escaping mistake would still run nothing.
"""

from __future__ import annotations

import datetime as dt
import html

from fleet.fleet_health import FleetHealth, version_key

MAX_POINTS = 240  # per series in a chart: a day of minutes would be a 1.5 MB page
MAX_HEAP_SERIES = 12  # nodes drawn in the heap chart: the lowest heaps, the ones to watch
_PALETTE = ("#3a6fb0", "#e0a030", "#4c8c4a", "#b03050", "#7a6ab0", "#3a8fb0", "#a0522d",
            "#808000", "#d2691e", "#2f4f4f", "#c71585", "#556b2f")
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'"
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:80em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.2em .5em;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right}
tr[data-stale="true"] td,td.bad{color:#b00020}.note{color:#555}
figure{margin:1em 0}figcaption{font-weight:bold;margin-bottom:.3em}
"""

e = html.escape  # quote=True: safe inside attributes too


def _time(ts: int | None) -> str:
    if ts is None:
        return "never"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def age_text(age_s: float | None) -> str:
    """Seconds as people read an age: 42s, 5m, 3h, 2d; "never" for None."""
    if age_s is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if age_s >= size:
            return f"{int(age_s // size)}{unit}"
    return f"{int(age_s)}s"


def _cell(value, num: bool = False) -> str:
    text = "-" if value is None or value == "" else str(value)
    return f'<td class="num">{e(text)}</td>' if num else f"<td>{e(text)}</td>"


def _thin(points: list[tuple[int, float]], keep: str) -> list[tuple[int, float]]:
    """At most MAX_POINTS points: per bucket the min (`keep` "min") or max of its values,
    so a heap dip or a buffer peak survives the thinning."""
    if len(points) <= MAX_POINTS:
        return points
    step = -(-len(points) // MAX_POINTS)
    pick = min if keep == "min" else max
    return [pick(points[i:i + step], key=lambda p: p[1]) for i in range(0, len(points), step)]


def line_chart(chart_id: str, title: str, series: dict[str, list[tuple[int, float]]],
               unit: str, keep: str = "max", from_zero: bool = True) -> str:
    """A line chart of time series: one <polyline data-series="NAME"> per series; the y
    axis starts at 0 (`from_zero`) or at the lowest value (a heap that moves by a few
    kB out of 120)."""
    series = {k: _thin(sorted(v), keep) for k, v in series.items() if v}
    if not series:
        return (f'<figure id="{e(chart_id)}"><figcaption>{e(title)}</figcaption>'
                '<p class="note">No data for this chart.</p></figure>')
    t0 = min(p[0] for v in series.values() for p in v)
    t1 = max(p[0] for v in series.values() for p in v)
    lo = min(p[1] for v in series.values() for p in v)
    lo = min(0.0, lo) if from_zero else lo
    hi = max(p[1] for v in series.values() for p in v)
    # a flat series (or one so large that lo + 1 == lo) still gets a height to draw in
    span = (hi - lo) or max(1.0, abs(hi) / 100)
    width, height, left, top, plot_w, plot_h = 720, 300, 70, 10, 630, 220

    def x(t: int) -> float:
        return left + (t - t0) / ((t1 - t0) or 1) * plot_w

    def y(v: float) -> float:
        return top + plot_h - (v - lo) / span * plot_h

    legend_rows = -(-len(series) // 3)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height + 18 * legend_rows}" role="img" aria-label="{e(title)}">',
           f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
           'stroke="#888"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>',
           f'<text x="4" y="{top + 10}" font-size="11">{e(f"{hi:,.0f} {unit}")}</text>',
           f'<text x="4" y="{top + plot_h}" font-size="11">{e(f"{lo:,.0f}")}</text>',
           f'<text x="{left}" y="{top + plot_h + 16}" font-size="11">{e(_time(t0))} UTC</text>',
           f'<text x="{left + plot_w}" y="{top + plot_h + 16}" font-size="11" '
           f'text-anchor="end">{e(_time(t1))} UTC</text>']
    for i, (name, points) in enumerate(sorted(series.items())):
        colour = _PALETTE[i % len(_PALETTE)]
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        out.append(f'<polyline data-series="{e(name)}" points="{coords}" fill="none" '
                   f'stroke="{colour}" stroke-width="1.5"><title>{e(name)}</title></polyline>')
        lx, ly = left + (i % 3) * 210, top + plot_h + 34 + (i // 3) * 18
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{lx + 14}" y="{ly}" font-size="11">{e(name[:30])}</text>')
    out.append("</svg>")
    return (f'<figure id="{e(chart_id)}"><figcaption>{e(title)}</figcaption>{"".join(out)}'
            "</figure>")


def firmware_chart(zones: list[dict]) -> str:
    """One horizontal bar per zone, a segment per firmware version (<rect data-series=
    "VERSION" data-zone="ZONE">)."""
    bars = [z for z in zones if z["firmware"]]
    title = "Firmware versions per zone (nodes seen in the window)"
    if not bars:
        return (f'<figure id="chart-firmware"><figcaption>{e(title)}</figcaption>'
                '<p class="note">No data for this chart.</p></figure>')
    versions = sorted({v for z in bars for v in z["firmware"]}, key=version_key)
    colour = {v: _PALETTE[i % len(_PALETTE)] for i, v in enumerate(versions)}
    top_count = max(sum(z["firmware"].values()) for z in bars)
    left, bar_h, plot_w = 130, 22, 520
    height = 10 + len(bars) * (bar_h + 8) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + plot_w + 60}" '
           f'height="{height}" role="img" aria-label="{e(title)}">']
    for i, z in enumerate(bars):
        y = 10 + i * (bar_h + 8)
        out.append(f'<text x="4" y="{y + 15}" font-size="12">{e(z["zone"][:18])}</text>')
        x = float(left)
        for v in versions:
            n = z["firmware"].get(v, 0)
            if not n:
                continue
            w = n / top_count * plot_w
            out.append(f'<rect data-series="{e(v)}" data-zone="{e(z["zone"])}" x="{x:.1f}" '
                       f'y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour[v]}"><title>'
                       f'{e(z["zone"])}: {n} node(s) on {e(v)}</title></rect>')
            x += w
        out.append(f'<text x="{x + 4:.1f}" y="{y + 15}" font-size="11">'
                   f'{sum(z["firmware"].values())}</text>')
    ly = height - 12
    for j, v in enumerate(versions):
        out.append(f'<rect x="{left + j * 90}" y="{ly - 9}" width="10" height="10" '
                   f'fill="{colour[v]}"/><text x="{left + j * 90 + 14}" y="{ly}" '
                   f'font-size="11">{e(v)}</text>')
    out.append("</svg>")
    return (f'<figure id="chart-firmware"><figcaption>{e(title)}</figcaption>{"".join(out)}'
            "</figure>")


def _resets(causes: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in causes.items()) or "-"


def _ota(ota: dict | None) -> str:
    if not ota:
        return "-"
    return " ".join(str(x) for x in (ota["state"], ota["version"],
                                     f"serial {ota['serial']}" if ota["serial"] else None)
                    if x)


def to_html(report: FleetHealth) -> str:
    nodes = []
    for n in report.nodes:
        heap = n["free_heap_bytes"]
        nodes.append(
            f'<tr data-node="{e(n["node"])}" data-stale="{str(n["stale"]).lower()}">'
            + _cell(n["node"]) + _cell(n["zone"]) + _cell(n["site"]) + _cell(n["kind"])
            + _cell(n["gateway"]) + _cell(age_text(n["age_s"]))
            + _cell(n["firmware"])
            + _cell(None if heap is None else f"{heap:,}", True)
            + _cell(None if n["free_heap_min_bytes"] is None
                    else f"{n['free_heap_min_bytes']:,}", True)
            + _cell(_resets(n["reset_causes"])) + _cell(n["dropped_frames"], True)
            + _cell(n["error_count"], True) + _cell(_ota(n["ota"])) + "</tr>")
    gateways = [
        f'<tr data-gateway="{e(g["gateway"])}" data-stale="{str(g["stale"]).lower()}">'
        + _cell(g["gateway"]) + _cell(age_text(g["age_s"]))
        + (f'<td class="bad">{e(g["status"])}</td>' if g["status"] not in ("ok", None)
           else _cell(g["status"]))
        + _cell(g["buffer_readings"], True) + _cell(g["buffer_readings_max"], True)
        + _cell(g["nodes"], True) + "</tr>"
        for g in report.gateways]
    zones = [
        f'<tr data-zone="{e(z["zone"])}">' + _cell(z["zone"]) + _cell(z["nodes_seen"], True)
        + _cell(z["nodes_stale"], True) + _cell(z["nodes_never_seen"], True)
        + _cell(", ".join(f"{v} ({n})" for v, n in z["firmware"].items()) or "-")
        + _cell(", ".join(z["gateways"]) or "-") + "</tr>"
        for z in report.zones]
    lowest = sorted(report.heap_series, key=lambda k: min(v for _t, v in
                                                          report.heap_series[k]))
    heap_nodes = lowest[:MAX_HEAP_SERIES]
    heap_title = "Free heap per node over time" + (
        f" (the {len(heap_nodes)} lowest of {len(lowest)} nodes)"
        if len(lowest) > len(heap_nodes) else "")
    charts = (line_chart("chart-buffer", "Readings buffered per gateway over time",
                         report.buffer_series, "readings", keep="max")
              + line_chart("chart-heap", heap_title,
                           {k: report.heap_series[k] for k in heap_nodes}, "bytes",
                           keep="min", from_zero=False)
              + firmware_chart(report.zones))
    empty = ('<p class="note" id="empty">No node_status or gateway_health points in the '
             "store in this window.</p>" if report.empty else "")
    stale_nodes = sum(n["stale"] for n in report.nodes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Dordt fleet health</title><style>{_CSS}</style></head>
<body><h1>Dordt sensor fleet: health</h1>
<p id="summary">{len(report.nodes)} node(s), {stale_nodes} stale or never seen (no status
for {e(age_text(report.node_stale_s))}); {len(report.gateways)} gateway(s).  From
<code>{e(report.store)}</code>, {e(_time(report.since_s))} to {e(_time(report.generated_s))}
UTC.</p>{empty}
<h2>Zones</h2>
<table id="zones"><thead><tr><th>Zone</th><th>Seen</th><th>Stale</th><th>Never seen</th>
<th>Firmware (nodes)</th><th>Gateways</th></tr></thead><tbody>{"".join(zones)}</tbody></table>
<h2>Gateways</h2>
<table id="gateways"><thead><tr><th>Gateway</th><th>Last seen</th><th>Status</th>
<th>Buffered</th><th>Buffered max</th><th>Nodes</th></tr></thead>
<tbody>{"".join(gateways)}</tbody></table>
<h2>Nodes</h2>
<table id="nodes"><thead><tr><th>Node</th><th>Zone</th><th>Site</th><th>Kind</th>
<th>Gateway</th><th>Last seen</th><th>Firmware</th><th>Free heap</th><th>Heap min</th>
<th>Resets (boots by cause)</th><th>Dropped</th><th>Errors</th><th>OTA</th></tr></thead>
<tbody>{"".join(nodes)}</tbody></table>
<h2>Charts</h2>{charts}
</body></html>
"""
