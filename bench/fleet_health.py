"""Fleet health: how long `dordt fleet health` takes over a day of a few hundred nodes, in
the local store and in VictoriaMetrics.

Steps, all on this machine, into a temporary directory deleted afterwards:

1. write: NODES nodes (scaled placements over the three zones, GATEWAYS gateways) x one day
   of status points every STATUS_S (default 300 nodes, 5 min: 86,400 node_status points),
   a gateway_health heartbeat per gateway per minute, and one signed provenance record per
   gateway per minute whose batch the status readings carry (so the gateway column is
   worked out as in service).  Written through the stores' own writers (LocalStore.write,
   InfluxStore.write: what a gateway's forwarder calls) into a local store file and into a
   VictoriaMetrics this script starts on 127.0.0.1.
2. read: `fleet_health()` (read + summarise), the HTML page and the terminal tables, each
   timed, on both stores.  Baseline of the same run: reading the same points' rows with a
   bare SQL query / a bare export request whose lines are JSON-decoded (what any tool must
   pay), so the ratio says what the summary adds.

Printed: figures per step; last line one JSON object.  No gate.  Bounded: at most 2,000
nodes and 7 days.

    .venv/bin/python bench/fleet_health.py [--nodes 300] [--hours 24]
"""

from __future__ import annotations

import argparse
import io
import json
import sqlite3
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.fleet_health import FIELDS, MEASUREMENTS, fleet_health  # noqa: E402
from fleet.health_page import to_html  # noqa: E402
from gateway.forward.influx import InfluxStore  # noqa: E402
from gateway.forward.local import LocalStore  # noqa: E402
from gateway.model import Point, Reading  # noqa: E402
from gateway.provenance import GatewayIdentity, ProvenanceRecord  # noqa: E402
from simulators.framegen import scaled_placements  # noqa: E402

STATUS_S = 300
HEARTBEAT_S = 60
CHUNK = 5000


def make_points(n_nodes: int, n_gateways: int, hours: int, now_s: int, key_dir: Path):
    """Chunks of points (Readings and Points), oldest first; node i is served by gateway
    i % n_gateways, which forwards one signed batch a minute."""
    placements = scaled_placements(n_nodes)
    start = now_s - hours * 3600
    ids = [GatewayIdentity.load_or_create(key_dir / f"gw{g:02d}", f"gw-{g:02d}")
           for g in range(n_gateways)]
    chunk: list = []
    minute_seq = 0
    for t in range(start, now_s, HEARTBEAT_S):
        minute_seq += 1
        for g, ident in enumerate(ids):
            chunk.append(Point("gateway_health", {"gateway": ident.gateway_id},
                               {"buffer_readings": float((t // 60 + g) % 50),
                                "buffer_oldest_age_s": 3.0, "status": 0.0, "rejected": 0.0,
                                "evicted": 0.0}, t + 59))
            # batch numbers are per gateway: each started its count at another time
            rec = ProvenanceRecord(ident.gateway_id, minute_seq + 100_000 * g, 1, t, t + 59,
                                   bytes(32), 1, bytes(32)).signed_by(ident)
            chunk.append(rec.to_point())
        if (t - start) % STATUS_S == 0:
            for i, p in enumerate(placements):
                ts = t + (i % 59)
                chunk.append(Reading(
                    f"{p.node_id:08x}", p.kind, p.zone, p.site, 0, ts, 60,
                    {"uptime_s": float(ts - start + 600),
                     "free_heap_bytes": float(118_000 - (ts // 7 + i) % 2000),
                     "reset_cause": 1.0, "firmware_version": 100.0 if i % 3 else 200.0,
                     "error_count": 0.0, "dropped_frames": float(i % 4),
                     "supply_mv": 5000.0,
                     "batch": float(minute_seq + 100_000 * (i % n_gateways))}, status=True))
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=300)
    ap.add_argument("--gateways", type=int, default=15)
    ap.add_argument("--hours", type=int, default=24)
    args = ap.parse_args()
    if not (1 <= args.nodes <= 2000 and 1 <= args.hours <= 168 and 1 <= args.gateways <= 100):
        ap.error("bounded: --nodes 1..2000, --hours 1..168, --gateways 1..100")
    from tests.fixtures.services import VictoriaMetrics

    now = int(time.time())
    out: dict = {"nodes": args.nodes, "gateways": args.gateways, "hours": args.hours}
    with tempfile.TemporaryDirectory(prefix="dordt-bench-health-") as work:
        work_dir = Path(work)
        vm = VictoriaMetrics(work_dir / "vm")
        vm.start()
        try:
            local = LocalStore(work_dir / "store.sqlite")
            influx = InfluxStore(vm.url, timeout_s=60)
            t = time.perf_counter()
            n_points = 0
            for chunk in make_points(args.nodes, args.gateways, args.hours, now,
                                     work_dir / "keys"):
                local.write(chunk)
                influx.write(chunk)
                n_points += len(chunk)
            local.close()
            vm.flush()
            out["points"] = n_points
            out["write_s"] = round(time.perf_counter() - t, 2)
            print(f"wrote {n_points:,} points (status, heartbeats, provenance) to both "
                  f"stores in {out['write_s']} s")
            for name, spec in (("sqlite", f"sqlite:{work_dir / 'store.sqlite'}"),
                               ("victoriametrics", vm.url)):
                report, read_s = timed(fleet_health, spec, args.hours * 3600 + 120, now + 60)
                page, html_s = timed(to_html, report)
                from rich.console import Console

                from fleet.cli_health import print_tables

                _none, tables_s = timed(print_tables, report,
                                        Console(file=io.StringIO(), width=80))
                base_s = baseline(name, spec, vm.url, now - args.hours * 3600 - 60, now + 60,
                                  work_dir / "store.sqlite")
                attributed = sum(1 for n in report.nodes if n["gateway"])
                out[name] = {"fleet_health_s": round(read_s, 3), "html_s": round(html_s, 3),
                             "tables_s": round(tables_s, 3), "bare_read_s": round(base_s, 3),
                             "ratio_to_bare_read": round(read_s / base_s, 2),
                             "page_bytes": len(page.encode()), "nodes": len(report.nodes),
                             "nodes_with_gateway": attributed}
                print(f"{name}: fleet health {read_s:.2f} s (bare read of the same points "
                      f"{base_s:.2f} s, x{read_s / base_s:.1f}); page {html_s:.2f} s, "
                      f"{len(page.encode()) / 1e6:.2f} MB; tables {tables_s:.2f} s; "
                      f"{len(report.nodes)} nodes, {attributed} with their gateway")
        finally:
            vm.stop()
    print(json.dumps(out))


def baseline(name: str, spec: str, vm_url: str, start_s: int, end_s: int, path: Path) -> float:
    """The same points, read bare: rows from SQLite; from VM the export, each series
    JSON-decoded (what any reader of it pays)."""
    t = time.perf_counter()
    if name == "sqlite":
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        db.execute("SELECT measurement, node, time_s, field, value, zone, site, kind FROM "
                   f"points WHERE time_s BETWEEN ? AND ? AND measurement IN "
                   f"({', '.join('?' * len(MEASUREMENTS))}) AND field IN "
                   f"({', '.join('?' * len(FIELDS))})",
                   (start_s, end_s, *MEASUREMENTS, *FIELDS)).fetchall()
        db.close()
    else:
        match = ('{__name__=~"(' + "|".join(MEASUREMENTS) + ")_(" + "|".join(FIELDS)
                 + ')"}')
        query = urllib.parse.urlencode({"match[]": match, "start": start_s, "end": end_s})
        with urllib.request.urlopen(f"{vm_url}/api/v1/export?{query}", timeout=60) as resp:
            [json.loads(line) for line in resp.read().splitlines()]
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
