"""Fleet health: what the store says about every node, gateway and zone.

In:  a store (`sqlite:PATH` of a local store, gateway/forward/local.py, or the
`http(s)://HOST:PORT` of VictoriaMetrics), a time window, stale thresholds and optionally a
zones file (hardware/data/zones.toml's format: the nodes a zone should have).  The points
read are those the gateways already forward: `node_status` (a node's own signed status
frames: uptime, free heap, reset cause, firmware version, error and dropped-frame
counters), `gateway_health` (gateway/health.py's heartbeat: buffer depth, status),
`provenance` (gateway/provenance.py: which gateway forwarded which batch, so which gateway
serves a node) and `ota` (docs/ota.md §3: a node's last update state).

Out: a `FleetHealth` with one row per node, gateway and zone (`to_json()`: the stable,
documented keys of docs/fleet-health.md) and the time series the HTML page charts
(fleet/health_page.py).  Nothing in it is trusted: node ids, zones and gateway names come
from the network and the store, and every presenter escapes them.

On failure: `HealthStoreError` when the store cannot be read (missing file, not a store,
no answer); `ValueError` for a store spec or a duration that is not one.  An empty window
is not a failure: the rows are empty and `FleetHealth.empty` is true.
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
import urllib.error
import urllib.parse
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from fleet.offers import OTA_STATE_NAMES
from gateway.provenance import StoredReading, read_local, read_victoriametrics

MEASUREMENTS = ("node_status", "gateway_health", "ota", "provenance")
# The fields read, of all four: a provenance record's 32 digest and signature fields are
# most of a store's health-related rows and nothing here needs them.
FIELDS = ("uptime_s", "free_heap_bytes", "reset_cause", "firmware_version", "error_count",
          "dropped_frames", "supply_mv", "batch",  # node_status (+ its signed batch)
          "buffer_readings", "buffer_oldest_age_s", "status", "rejected", "evicted",
          "serial", "state", "version",  # ota
          "seq", "first_s", "last_s")  # provenance
JSON_FORMAT = "dordt-fleet-health"
JSON_VERSION = 1

# machine.reset_cause() numbering, as firmware/hal.py documents it for every board.
RESET_CAUSES = {1: "power_on", 2: "hard", 3: "watchdog", 4: "deep_sleep", 5: "soft"}
# gateway/health.py heartbeat_point's `status` field.
GATEWAY_STATUS = {0: "ok", 1: "degraded", 2: "failing"}

DEFAULT_SINCE_S = 24 * 3600
DEFAULT_NODE_STALE_S = 30 * 60  # status every 10 windows of 60 s: three missed in a row
DEFAULT_GATEWAY_STALE_S = 5 * 60  # heartbeat every 60 s (gateway.sample.toml)

# Points up to this far after "now" are read too: a node or gateway whose clock runs
# ahead is still seen (its age shows as 0), not missing.
CLOCK_AHEAD_S = 3600

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class HealthStoreError(Exception):
    """The store could not be read; the message names it and says what to do."""


def parse_duration_s(text: str) -> int:
    """"90s", "30m", "24h", "7d", "2w" or bare seconds → seconds (> 0)."""
    m = _DURATION.match(text or "")
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration: give e.g. 90s, 30m, 24h or 7d")
    return int(float(m.group(1)) * _UNIT_S[m.group(2)])


def firmware_text(code: float | None) -> str | None:
    """A status frame's firmware_version (MMmmpp, protocol.md §8) as "M.m.p"."""
    if code is None:
        return None
    c = int(code)
    if not 0 <= c <= 999_999:  # no node sends this (metrics.py's range): show, not decode
        return f"?{c}"
    return f"{c // 10000}.{c // 100 % 100}.{c % 100}"


def reset_cause_name(code: float) -> str:
    return RESET_CAUSES.get(int(code), f"cause_{int(code)}")


def public_spec(spec: str) -> str:
    """The store spec as it may be shown: a URL without user name or password."""
    if spec.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(spec)
        if parts.username or parts.password:
            host = parts.hostname or ""
            if parts.port:
                host += f":{parts.port}"
            return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return spec


# -- reading ------------------------------------------------------------------------------------


def read_points(spec: str, start_s: int, end_s: int, timeout_s: float = 30) -> list[StoredReading]:
    """The health points of a store in [start_s, end_s] (gateway/provenance.py reads both
    kinds of store)."""
    text = spec.strip()
    shown = public_spec(text)
    if text.startswith(("http://", "https://")):
        try:
            return read_victoriametrics(text, start_s, end_s, timeout_s, MEASUREMENTS,
                                        FIELDS)
        except ValueError as exc:  # an answer, but not an export
            raise HealthStoreError(f"store {shown}: {exc}; is it VictoriaMetrics?") from None
        except urllib.error.HTTPError as exc:  # it answered, with a refusal
            raise HealthStoreError(
                f"store {shown} answered HTTP {exc.code} {exc.reason} to an export request; "
                "give the URL of VictoriaMetrics (its /api/v1/export)") from None
        except OSError as exc:  # URLError, timeouts, refused connections
            reason = getattr(exc, "reason", None) or exc
            raise HealthStoreError(
                f"store {shown} did not answer ({reason}); check the URL and that the "
                "store is running") from None
    if text.startswith("sqlite:"):
        path = Path(text[len("sqlite:"):].removeprefix("//"))
    elif text.lower().endswith((".sqlite", ".db")):
        path = Path(text)
    else:
        raise ValueError(f"store {shown!r}: give sqlite:PATH or http://HOST:PORT")
    if not path.is_file():
        raise HealthStoreError(f"store {shown}: no such file; give the path of a local store "
                               "(the gateway's [store] url sqlite:PATH)")
    try:
        return read_local(path, start_s, end_s, MEASUREMENTS, FIELDS)
    except sqlite3.Error as exc:
        raise HealthStoreError(f"store {shown}: not a readable local store ({exc}); check "
                               "the path") from None


# -- summarising ------------------------------------------------------------------------------


@dataclass
class FleetHealth:
    """Rows for people and scripts (`to_json`) and series for charts."""

    generated_s: int
    since_s: int
    store: str
    node_stale_s: int
    gateway_stale_s: int
    nodes: list[dict] = field(default_factory=list)
    gateways: list[dict] = field(default_factory=list)
    zones: list[dict] = field(default_factory=list)
    # gateway -> [(time_s, readings buffered)], node -> [(time_s, free heap bytes)]
    buffer_series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    heap_series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(n["last_seen_s"] is not None for n in self.nodes) and not self.gateways

    def to_json(self) -> dict:
        return {
            "format": JSON_FORMAT, "version": JSON_VERSION,
            "generated_s": self.generated_s, "since_s": self.since_s, "store": self.store,
            "node_stale_s": self.node_stale_s, "gateway_stale_s": self.gateway_stale_s,
            "nodes": self.nodes, "gateways": self.gateways, "zones": self.zones,
        }


def summarise(points: list[StoredReading], now_s: int, since_s: int, store: str = "",
              node_stale_s: int = DEFAULT_NODE_STALE_S,
              gateway_stale_s: int = DEFAULT_GATEWAY_STALE_S,
              expected: list | None = None) -> FleetHealth:
    """Rows per node, gateway and zone from the points of a window.  `expected`:
    hardware.sites NodePlacements that should report (a zones file): those never seen in
    the window get a row with `last_seen_s` None."""
    status: dict[str, list[StoredReading]] = defaultdict(list)
    heartbeats: dict[str, list[StoredReading]] = defaultdict(list)
    ota: dict[str, StoredReading] = {}
    batches: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
    for p in points:
        if not all(map(math.isfinite, p.fields.values())):  # a store anyone could write to
            p = StoredReading(p.measurement, p.tags, p.time_s,
                              {k: v for k, v in p.fields.items() if math.isfinite(v)})
        if p.measurement == "node_status" and "node" in p.tags:
            status[p.tags["node"]].append(p)
        elif p.measurement == "gateway_health":
            # VictoriaMetrics keeps the tag; the local store keys the point by it (node)
            gw = p.tags.get("gateway") or p.tags.get("node")
            if gw:
                heartbeats[gw].append(p)
        elif p.measurement == "ota" and "node" in p.tags:
            if p.tags["node"] not in ota or p.time_s >= ota[p.tags["node"]].time_s:
                ota[p.tags["node"]] = p
        elif p.measurement == "provenance" and "gateway" in p.tags:
            f = p.fields
            if {"seq", "first_s", "last_s"} <= f.keys():
                batches[int(f["seq"])].append((p.tags["gateway"], int(f["first_s"]),
                                               int(f["last_s"])))

    def gateway_of(rows: list[StoredReading]) -> str | None:
        # The gateway whose signed batch records cover the node's newest status readings.
        # Batch numbers are per gateway, so two gateways may each have a batch N around
        # the same time: older readings (other batch numbers) settle which one it was.
        candidates: set[str] | None = None
        for p in reversed(rows[-12:]):
            seq = p.fields.get("batch")
            found = {gw for gw, first, last in batches.get(int(seq), ())
                     if first <= p.time_s <= last} if seq is not None else set()
            if found:
                candidates = found if candidates is None else (candidates & found) or candidates
            if candidates is not None and len(candidates) == 1:
                return next(iter(candidates))
        return None

    report = FleetHealth(now_s, since_s, store, node_stale_s, gateway_stale_s)
    places = {f"{p.node_id:08x}": p for p in expected or ()}
    for node in sorted(set(status) | set(places) | set(ota)):
        rows = sorted(status.get(node, ()), key=lambda p: p.time_s)
        place = places.get(node)
        report.nodes.append(_node_row(node, rows, place, ota.get(node), gateway_of(rows),
                                      now_s, node_stale_s))
        heap = [(p.time_s, p.fields["free_heap_bytes"]) for p in rows
                if "free_heap_bytes" in p.fields]
        if heap:
            report.heap_series[node] = heap
    served = Counter(n["gateway"] for n in report.nodes if n["gateway"])
    # a gateway that forwarded readings but no heartbeat in the window still gets a row
    for gw in sorted(set(heartbeats) | set(served)):
        rows = sorted(heartbeats.get(gw, ()), key=lambda p: p.time_s)
        report.gateways.append(_gateway_row(gw, rows, served.get(gw, 0), now_s,
                                            gateway_stale_s))
        report.buffer_series[gw] = [(p.time_s, p.fields["buffer_readings"]) for p in rows
                                    if "buffer_readings" in p.fields]
    report.zones = _zone_rows(report.nodes, expected)
    return report


def _node_row(node: str, rows: list[StoredReading], place, ota_point: StoredReading | None,
              gateway: str | None, now_s: int, stale_s: int) -> dict:
    last = rows[-1] if rows else None
    f = last.fields if last else {}
    tags = last.tags if last else {}
    if place is not None and not tags:
        tags = {"zone": place.zone, "site": place.site, "kind": place.kind}
    if gateway is None and ota_point is not None:
        gateway = ota_point.tags.get("gateway")
    # A boot starts at the first status of the window and wherever uptime went back: each
    # boot reports its reset cause in every status frame, so count boots, not frames.
    causes: Counter = Counter()
    uptime_before = None
    for p in rows:
        uptime = p.fields.get("uptime_s")
        if "reset_cause" in p.fields and (uptime_before is None or uptime is None
                                          or uptime < uptime_before):
            causes[reset_cause_name(p.fields["reset_cause"])] += 1
        uptime_before = uptime
    heaps = [p.fields["free_heap_bytes"] for p in rows if "free_heap_bytes" in p.fields]
    age = None if last is None else max(0, now_s - last.time_s)

    def num(name: str) -> int | None:
        return int(f[name]) if name in f else None

    return {
        "node": node,
        "zone": tags.get("zone"),
        "site": tags.get("site"),
        "kind": tags.get("kind"),
        "gateway": gateway,
        "last_seen_s": None if last is None else last.time_s,
        "age_s": age,
        "stale": age is None or age > stale_s,
        "firmware": firmware_text(f.get("firmware_version")),
        "uptime_s": num("uptime_s"),
        "free_heap_bytes": num("free_heap_bytes"),
        "free_heap_min_bytes": int(min(heaps)) if heaps else None,
        "reset_causes": dict(sorted(causes.items())),
        "dropped_frames": num("dropped_frames"),
        "error_count": num("error_count"),
        "supply_mv": num("supply_mv"),
        "status_points": len(rows),
        "ota": None if ota_point is None else _ota_state(ota_point),
    }


def _ota_state(p: StoredReading) -> dict:
    f = p.fields
    state = int(f["state"]) if "state" in f else None
    return {
        "state": (None if state is None
                  else OTA_STATE_NAMES.get(state, f"state_{state}")),
        "serial": int(f["serial"]) if "serial" in f else None,
        "version": firmware_text(f.get("version")),
        "time_s": p.time_s,
    }


def _gateway_row(gw: str, rows: list[StoredReading], nodes: int, now_s: int,
                 stale_s: int) -> dict:
    last = rows[-1] if rows else None
    f = last.fields if last else {}
    depths = [p.fields["buffer_readings"] for p in rows if "buffer_readings" in p.fields]
    age = None if last is None else max(0, now_s - last.time_s)
    code = f.get("status")
    return {
        "gateway": gw,
        "last_seen_s": None if last is None else last.time_s,
        "age_s": age,
        "stale": age is None or age > stale_s,
        "status": None if code is None else GATEWAY_STATUS.get(int(code), f"status_{int(code)}"),
        "buffer_readings": int(f["buffer_readings"]) if "buffer_readings" in f else None,
        "buffer_readings_max": int(max(depths)) if depths else None,
        "buffer_oldest_age_s": f.get("buffer_oldest_age_s"),
        "rejected": int(f["rejected"]) if "rejected" in f else None,
        "evicted": int(f["evicted"]) if "evicted" in f else None,
        "nodes": nodes,
        "heartbeats": len(rows),
    }


def _zone_rows(nodes: list[dict], expected: list | None) -> list[dict]:
    order = list(dict.fromkeys(p.zone for p in expected or ()))
    by_zone: dict[str, list[dict]] = defaultdict(list)
    for n in nodes:
        by_zone[n["zone"] or "-"].append(n)
    out = []
    for zone in order + sorted(z for z in by_zone if z not in order):
        rows = by_zone.get(zone, [])
        seen = [n for n in rows if n["last_seen_s"] is not None]
        out.append({
            "zone": zone,
            "nodes": len(rows),
            "nodes_seen": sum(not n["stale"] for n in seen),
            "nodes_stale": sum(n["stale"] for n in seen),
            "nodes_never_seen": len(rows) - len(seen),
            "firmware": dict(sorted(Counter(n["firmware"] for n in seen
                                            if n["firmware"]).items(),
                                     key=lambda item: version_key(item[0]))),
            "gateways": sorted({n["gateway"] for n in rows if n["gateway"]}),
        })
    return out


def version_key(version: str) -> tuple:
    """Sorts "M.m.p" texts by number; anything else (a "?N" firmware_text) after them."""
    parts = version.split(".")
    if len(parts) == 3 and all(x.isdigit() for x in parts):
        return (0, *map(int, parts))
    return (1, version)


def fleet_health(spec: str, since_s: int = DEFAULT_SINCE_S, now_s: int | None = None,
                 node_stale_s: int = DEFAULT_NODE_STALE_S,
                 gateway_stale_s: int = DEFAULT_GATEWAY_STALE_S,
                 expected: list | None = None) -> FleetHealth:
    """Read the store's window of `since_s` up to now and summarise it."""
    now = int(time.time()) if now_s is None else int(now_s)
    start = now - int(since_s)
    points = read_points(spec, start, now + CLOCK_AHEAD_S)
    return summarise(points, now, start, public_spec(spec.strip()), node_stale_s,
                     gateway_stale_s, expected)
