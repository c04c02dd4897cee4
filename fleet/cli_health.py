"""`dordt fleet health`: the fleet at a glance, from the store the gateways forward to.

Terminal tables (rich, readable on 80 columns), `--json` for scripts (keys in
docs/fleet-health.md), `--html OUT` for a self-contained page with charts.  Exit codes:
0 shown (an empty window too: one line says so), 1 the store cannot be read or the page
cannot be written, 2 bad arguments or zones file.
"""

from __future__ import annotations

import argparse
import json

from dordt.errors import EXIT_CONFIG, EXIT_FAILED, UserError


def register(sub) -> None:
    """Adds `health` to `dordt fleet`'s sub-commands."""
    h = sub.add_parser(
        "health", help="nodes, gateways and zones at a glance (from the store)",
        description="Reads the node_status, gateway_health, provenance and ota points the "
        "gateways forward to the store and shows, per node, its zone, gateway, last seen, "
        "firmware, free heap, reset causes, dropped frames and errors; per gateway its "
        "buffer depth and status; per zone the nodes seen and stale and the firmware "
        "versions.")
    h.add_argument("--store", required=True, metavar="SPEC",
                   help="sqlite:PATH (a local store) or http://HOST:PORT (VictoriaMetrics)")
    h.add_argument("--since", default="24h", metavar="DURATION",
                   help="how far back to read, e.g. 30m, 24h, 7d (default 24h)")
    h.add_argument("--node-stale", default="30m", metavar="DURATION",
                   help="a node with no status for this long is stale (default 30m)")
    h.add_argument("--gateway-stale", default="5m", metavar="DURATION",
                   help="a gateway with no heartbeat for this long is stale (default 5m)")
    h.add_argument("--zones", metavar="TOML",
                   help="zones file: its nodes that never reported are listed too")
    h.add_argument("--json", action="store_true", help="print JSON instead of tables")
    h.add_argument("--html", metavar="OUT", help="also write a self-contained HTML page")
    h.set_defaults(handler=command_health)


def _duration(option: str, text: str) -> int:
    from fleet.fleet_health import parse_duration_s

    try:
        return parse_duration_s(text)
    except ValueError as exc:
        raise UserError(f"{option}: {exc}", EXIT_CONFIG) from None


def command_health(args: argparse.Namespace) -> int:
    from fleet.fleet_health import HealthStoreError, fleet_health

    since_s = _duration("--since", args.since)
    node_stale_s = _duration("--node-stale", args.node_stale)
    gateway_stale_s = _duration("--gateway-stale", args.gateway_stale)
    expected = None
    if args.zones:
        from hardware.sites import ZonesError, load_placements

        try:
            expected = load_placements(args.zones)
        except (ZonesError, OSError) as exc:
            raise UserError(f"--zones {args.zones}: {exc}", EXIT_CONFIG) from None
    try:
        report = fleet_health(args.store, since_s, node_stale_s=node_stale_s,
                              gateway_stale_s=gateway_stale_s, expected=expected)
    except ValueError as exc:
        raise UserError(f"--store: {exc}", EXIT_CONFIG) from None
    except HealthStoreError as exc:
        raise UserError(str(exc), EXIT_FAILED) from None
    if args.html:
        from pathlib import Path

        from fleet.health_page import to_html

        try:
            Path(args.html).write_text(to_html(report), encoding="utf-8")
        except OSError as exc:
            raise UserError(f"--html {args.html}: cannot write it ({exc.strerror or exc})",
                            EXIT_FAILED) from None
    if args.json:
        print(json.dumps(report.to_json(), indent=1, sort_keys=True))
    else:
        print_tables(report)
    if args.html and not args.json:
        print(f"wrote {args.html}")
    return 0


def _safe(value) -> str:
    """Store values as inert text: control characters (a terminal escape sequence in a
    node name) become U+FFFD; rich markup is not parsed (callers wrap this in Text)."""
    text = "-" if value is None or value == "" else str(value)
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


def print_tables(report, console=None) -> None:
    """Zones, gateways and nodes as rich tables on `console` (stdout by default)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from fleet.health_page import age_text

    console = console or Console(highlight=False)
    if report.empty:
        console.print(Text(
            f"no node_status or gateway_health points in {_safe(report.store)} in the last "
            f"{age_text(report.generated_s - report.since_s)}: nothing to show yet; check "
            "that the gateways forward to this store, or widen --since"), soft_wrap=True)
        if not report.nodes:
            return

    def table(title: str, columns: list[tuple[str, bool]]) -> Table:
        t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False,
                  padding=(0, 1))
        for name, numeric in columns:
            # ids and counts whole; a long gateway name or reset list folds instead
            t.add_column(name, justify="right" if numeric else "left", overflow="fold",
                         no_wrap=name in ("node", "seen"), min_width=_MIN_WIDTH.get(name))
        return t

    def row(t: Table, values: list, stale: bool = False) -> None:
        t.add_row(*(Text(_safe(v), style="red" if stale else "") for v in values))

    z = table("Zones", [("zone", False), ("seen", True), ("stale", True), ("never", True),
                        ("firmware (nodes)", False), ("gateways", False)])
    for zone in report.zones:
        row(z, [zone["zone"], zone["nodes_seen"], zone["nodes_stale"],
                zone["nodes_never_seen"],
                ", ".join(f"{v} ({n})" for v, n in zone["firmware"].items()),
                ", ".join(zone["gateways"])])
    console.print(z)
    if report.gateways:
        g = table("Gateways", [("gateway", False), ("seen", True), ("status", False),
                               ("buffered", True), ("max", True), ("nodes", True)])
        for gw in report.gateways:
            row(g, [gw["gateway"], age_text(gw["age_s"]), gw["status"], gw["buffer_readings"],
                    gw["buffer_readings_max"], gw["nodes"]], gw["stale"])
        console.print(g)
    # one node table per zone: no zone column, so a row fits 80 columns
    for zone in report.zones:
        n = table(f"Nodes in {_safe(zone['zone'])}", [
            ("node", False), ("gateway", False), ("seen", True), ("fw", False),
            ("heap kB", True), ("min", True), ("resets", False), ("drop", True),
            ("err", True)])
        for node in report.nodes:
            if (node["zone"] or "-") != zone["zone"]:
                continue
            heap, low = node["free_heap_bytes"], node["free_heap_min_bytes"]
            resets = ", ".join(f"{_SHORT_CAUSE.get(k, k)} {v}"
                               for k, v in node["reset_causes"].items())
            row(n, [node["node"], node["gateway"], age_text(node["age_s"]), node["firmware"],
                    None if heap is None else f"{heap / 1000:.1f}",
                    None if low is None else f"{low / 1000:.1f}", resets,
                    node["dropped_frames"], node["error_count"]], node["stale"])
        console.print(n)
    ota = [node for node in report.nodes if node["ota"]]
    if ota:
        o = table("Updates (last OTA state)", [("node", False), ("state", False),
                                               ("version", False), ("serial", True),
                                               ("seen", True)])
        for node in ota:
            s = node["ota"]
            row(o, [node["node"], s["state"], s["version"], s["serial"],
                    age_text(report.generated_s - s["time_s"])])
        console.print(o)


_MIN_WIDTH = {"node": 8, "resets": 12}
# short names for the terminal's narrow resets column; --json and the page spell them out
_SHORT_CAUSE = {"power_on": "pwr", "hard": "hard", "watchdog": "wdt", "deep_sleep": "sleep",
                "soft": "soft"}
