"""Health: what an operator (or balena, or systemd) needs to know about a gateway that runs
alone for months.

- `/healthz` (JSON) and `/metrics` (Prometheus text format 0.0.4) on a loopback HTTP port;
  `/healthz` answers 200 when the gateway is ok or degraded and 503 when it is failing.
- A heartbeat point (`gateway_health`) goes through the outbox to the store every
  `heartbeat_s`, so the twin sees buffer depth, oldest age, drops, rejects, disk free and
  the clock state even of a gateway nobody is watching.
- systemd: READY=1 once running, WATCHDOG=1 while the pipeline loop turns (sd_notify(3)).

Status rules: failing when the pipeline thread has stopped turning; degraded when the broker
is disconnected, the store has not taken a write for `store_stale_s` while readings wait,
the disk is nearly full, or an alert (disk full, eviction) was raised in the last 10 min.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from gateway.model import Point

if TYPE_CHECKING:
    from gateway.pipeline import Gateway

log = logging.getLogger("dordt.gateway.health")

ALERT_RECENT_S = 600
CLOCK_PLAUSIBLE_S = 1_735_689_600  # 2025-01-01: a clock before this was never set


class Health:
    def __init__(self, gateway: Gateway, store_stale_s: float = 300.0,
                 disk_low_bytes: int = 100 * 1024 * 1024, clock=time.time):
        self.gateway = gateway
        self.store_stale_s = store_stale_s
        self.disk_low_bytes = disk_low_bytes
        self.clock = clock
        self.started_s = clock()
        self._server: ThreadingHTTPServer | None = None

    # -- what is reported --------------------------------------------------------------

    def snapshot(self) -> dict:
        gw, now = self.gateway, self.clock()
        counters = gw.outbox.counters()
        oldest = gw.outbox.oldest_time_s()
        depth = gw.outbox.depth()
        try:
            disk_free = shutil.disk_usage(gw.data_dir).free
        except OSError:
            disk_free = -1
        last_ok = gw.forwarder.last_success_s
        broker = gw.ingest.connected.is_set() if gw.ingest is not None else None
        alerts = {name: round(now - at, 1) for name, at in gw.alerts.items()
                  if now - at < ALERT_RECENT_S}
        problems = []
        if not gw.loop_alive(now):
            problems.append("pipeline loop stopped")
        degraded = []
        if broker is False:
            degraded.append("broker disconnected")
        if depth and (last_ok is None or now - last_ok > self.store_stale_s) \
                and now - self.started_s > self.store_stale_s:
            degraded.append("store not taking writes")
        if 0 <= disk_free < self.disk_low_bytes:
            degraded.append("disk nearly full")
        degraded += [f"alert: {name}" for name in alerts]
        status = "failing" if problems else "degraded" if degraded else "ok"
        return {
            "status": status,
            "problems": problems + degraded,
            "uptime_s": round(now - self.started_s, 1),
            "broker_connected": broker,
            "store_last_write_age_s": None if last_ok is None else round(now - last_ok, 1),
            "store_last_error": gw.forwarder.last_error,
            "buffer_depth": depth,
            "buffer_bytes": gw.outbox.used_bytes(),
            "buffer_oldest_age_s": None if oldest is None else round(now - oldest, 1),
            "disk_free_bytes": disk_free,
            "clock_synced": now > CLOCK_PLAUSIBLE_S,
            "alerts": alerts,
            "counters": counters,
            "links": [link.stats() for link in gw.links],
            # serial in use and refusals by reason (gateway/keyring_source.py)
            "keyring": gw.keyring_source.snapshot() if gw.keyring_source is not None else None,
            "ota": gw.ota.stats() if getattr(gw, "ota", None) is not None else None,
        }

    def prometheus_text(self) -> str:
        s = self.snapshot()
        lines = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]):
            lines.append(f"# HELP dordt_gateway_{name} {help_text}")
            lines.append(f"# TYPE dordt_gateway_{name} {kind}")
            for labels, value in samples:
                lines.append(f"dordt_gateway_{name}{labels} {value}")

        c = s["counters"]
        status_code = {"ok": 0, "degraded": 1, "failing": 2}[s["status"]]
        metric("status", "gauge", "0 ok, 1 degraded, 2 failing", [("", status_code)])
        metric("uptime_seconds", "gauge", "seconds since start", [("", s["uptime_s"])])
        metric("broker_connected", "gauge", "1 when connected to the MQTT broker",
               [("", int(bool(s["broker_connected"])))])
        metric("frames_received_total", "counter", "frames received",
               [("", c.get("received", 0))])
        metric("readings_accepted_total", "counter", "frames accepted as readings",
               [("", c.get("accepted", 0))])
        metric("frames_rejected_total", "counter", "frames rejected, by reason",
               [(f'{{reason="{k.removeprefix("rejected.")}"}}', v)
                for k, v in sorted(c.items()) if k.startswith("rejected.")] or [("", 0)])
        metric("readings_forwarded_total", "counter", "readings the store took",
               [("", c.get("forwarded", 0))])
        metric("readings_evicted_total", "counter", "readings evicted from the buffer",
               [(f'{{reason="{k.removeprefix("evicted.")}"}}', v)
                for k, v in sorted(c.items()) if k.startswith("evicted.")] or [("", 0)])
        metric("readings_quarantined_total", "counter", "readings the store refused for good",
               [("", c.get("quarantined", 0))])
        metric("buffer_readings", "gauge", "readings waiting in the outbox",
               [("", s["buffer_depth"])])
        metric("buffer_bytes", "gauge", "bytes used by the outbox", [("", s["buffer_bytes"])])
        metric("buffer_oldest_age_seconds", "gauge", "age of the oldest buffered reading",
               [("", s["buffer_oldest_age_s"] or 0)])
        metric("disk_free_bytes", "gauge", "free bytes on the buffer's filesystem",
               [("", s["disk_free_bytes"])])
        metric("clock_synced", "gauge", "1 when the wall clock looks set",
               [("", int(s["clock_synced"]))])
        ring = s["keyring"] or {"serial": 0, "loaded": 0, "refused": {}}
        metric("keyring_serial", "gauge", "serial of the signed keyring in use (0: plain)",
               [("", ring["serial"])])
        metric("keyring_loads_total", "counter", "keyrings taken, the one at start included",
               [("", ring["loaded"])])
        metric("keyring_refused_total", "counter", "keyring files refused, by reason",
               [(f'{{reason="{k}"}}', v) for k, v in sorted(ring["refused"].items())]
               or [("", 0)])
        ota = s["ota"] or {}
        metric("ota_chunks_total", "counter", "firmware chunks sent to nodes (gateway/ota.py)",
               [("", ota.get("chunks", 0))])
        metric("ota_chunk_bytes_total", "counter", "firmware bytes sent to nodes",
               [("", ota.get("chunk_bytes", 0))])
        metric("ota_states_total", "counter", "OTA state messages from nodes, by state",
               [(f'{{state="{k.removeprefix("state.")}"}}', v)
                for k, v in sorted(ota.items()) if k.startswith("state.")] or [("", 0)])
        return "\n".join(lines) + "\n"

    def heartbeat_point(self) -> Point:
        s = self.snapshot()
        c = s["counters"]
        fields = {
            "buffer_readings": s["buffer_depth"],
            "buffer_oldest_age_s": s["buffer_oldest_age_s"] or 0,
            "disk_free_bytes": s["disk_free_bytes"],
            "received": c.get("received", 0),
            "accepted": c.get("accepted", 0),
            "rejected": sum(v for k, v in c.items() if k.startswith("rejected.")),
            "evicted": sum(v for k, v in c.items() if k.startswith("evicted.")),
            "forwarded": c.get("forwarded", 0),
            "clock_synced": int(s["clock_synced"]),
            "status": {"ok": 0, "degraded": 1, "failing": 2}[s["status"]],
        }
        return Point("gateway_health", {"gateway": self.gateway.gateway_id},
                     {k: float(v) for k, v in fields.items()}, int(self.clock()))

    # -- the HTTP endpoint -----------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start /healthz and /metrics on host:port (loopback by default); returns the
        port."""
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/healthz":
                    snap = health.snapshot()
                    body = json.dumps(snap, indent=1).encode()
                    code, ctype = (503 if snap["status"] == "failing" else 200), "application/json"
                elif self.path == "/metrics":
                    body = health.prometheus_text().encode()
                    code, ctype = 200, "text/plain; version=0.0.4"
                else:
                    body, code, ctype = b"not found: try /healthz or /metrics\n", 404, "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="health", daemon=True).start()
        return self._server.server_address[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


# -- systemd ---------------------------------------------------------------------------------


def sd_notify(message: str) -> bool:
    """Send a notification to systemd (sd_notify(3)) when run as a Type=notify service."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)
        return False


def watchdog_interval_s() -> float | None:
    """Half the WatchdogSec systemd gave us (WATCHDOG_USEC), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
