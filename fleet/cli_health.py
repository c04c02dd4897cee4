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
        except ZonesError as exc:  # it names the file
            raise UserError(f"--zones: {exc}", EXIT_CONFIG) from None
        except OSError as exc:
            raise UserError(f"--zones {args.zones}: {exc.strerror or exc}", EXIT_CONFIG) \
                from None
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

    def show(title: str, columns: list[tuple[str, str]], rows: list[tuple[list, bool]]):
        """One table: `columns` (name, "num" | "id" | "text"), `rows` (values, stale).
        Numbers and ids are never folded or cut (their column is as wide as its widest
        value); text columns (names, lists) fold to keep the table within the console."""
        t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False,
                  padding=(0, 1))
        cells = [[_safe(v) for v in values] for values, _stale in rows]
        for i, (name, kind) in enumerate(columns):
            whole = kind != "text"
            widest = max((len(r[i]) for r in cells), default=1)
            t.add_column(name, justify="right" if kind == "num" else "left",
                         overflow="fold", no_wrap=whole, min_width=widest if whole else None)
        for values, (_v, stale) in zip(cells, rows, strict=True):
            t.add_row(*(Text(v, style="red" if stale else "") for v in values))
        console.print(t)

    show("Zones", [("zone", "text"), ("seen", "num"), ("stale", "num"), ("never", "num"),
                   ("firmware (nodes)", "text"), ("gateways", "text")],
         [([z["zone"], z["nodes_seen"], z["nodes_stale"], z["nodes_never_seen"],
            ", ".join(f"{v} ({n})" for v, n in z["firmware"].items()),
            ", ".join(z["gateways"])], False) for z in report.zones])
    if report.gateways:
        show("Gateways", [("gateway", "text"), ("seen", "num"), ("status", "id"),
                          ("buffered", "num"), ("max", "num"), ("nodes", "num")],
             [([g["gateway"], age_text(g["age_s"]), g["status"], g["buffer_readings"],
                g["buffer_readings_max"], g["nodes"]], g["stale"]) for g in report.gateways])
    # one node table per zone: no zone column, so a row fits 80 columns
    for zone in report.zones:
        rows = []
        for node in report.nodes:
            if (node["zone"] or "-") != zone["zone"]:
                continue
            heap, low = node["free_heap_bytes"], node["free_heap_min_bytes"]
            resets = ", ".join(f"{_SHORT_CAUSE.get(k, k)} {v}"
                               for k, v in node["reset_causes"].items())
            rows.append(([node["node"], node["gateway"], age_text(node["age_s"]),
                          node["firmware"], None if heap is None else round(heap / 1000),
                          None if low is None else round(low / 1000), resets,
                          node["dropped_frames"], node["error_count"]], node["stale"]))
        show(f"Nodes in {_safe(zone['zone'])}",
             [("node", "id"), ("gateway", "text"), ("seen", "num"), ("fw", "id"),
              ("heap kB", "num"), ("min", "num"), ("resets", "text"), ("drop", "num"),
              ("err", "num")], rows)
    ota = [node for node in report.nodes if node["ota"]]
    if ota:
        show("Updates (last OTA state)", [("node", "id"), ("state", "text"),
                                          ("version", "id"), ("serial", "num"),
                                          ("seen", "num")],
             [([n["node"], n["ota"]["state"], n["ota"]["version"], n["ota"]["serial"],
                age_text(report.generated_s - n["ota"]["time_s"])], False) for n in ota])


# short names for the terminal's narrow resets column; --json and the page spell them out
_SHORT_CAUSE = {"power_on": "pwr", "hard": "hard", "watchdog": "wdt", "deep_sleep": "sleep",
                "soft": "soft"}
