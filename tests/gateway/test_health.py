"""health: /healthz and /metrics on loopback, heartbeats to the store, systemd notify."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request

import pytest

from gateway.forward.local import LocalStore
from gateway.model import Envelope
from gateway.pipeline import Gateway
from simulators.fleet import SimFleet, forged

T0 = int(time.time()) - 60


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def gateway(tmp_path):
    fleet = SimFleet(seed=2)
    gw = Gateway(fleet.keyring(), LocalStore(tmp_path / "store.sqlite"), tmp_path / "gw",
                 gateway_id="gw-health", health_port=0, heartbeat_s=0.2, housekeeping_s=0.1)
    gw.start()
    yield fleet, gw
    gw.stop(0)


def test_healthz_and_metrics_report_counts_and_status(gateway):
    fleet, gw = gateway
    frames = list(fleet.tick(T0))
    topic, last = frames[-1]
    gw.queue.put(Envelope("mqtt", topic, forged(last), T0))
    for topic, f in frames:
        gw.queue.put(Envelope("mqtt", topic, f, T0))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and gw.outbox.counters().get("forwarded", 0) < 27:
        time.sleep(0.05)
    code, body = get(gw.health_port, "/healthz")
    snap = json.loads(body)
    assert code == 200 and snap["status"] == "ok", snap
    assert snap["counters"]["accepted"] == 27 and snap["counters"]["rejected.bad_tag"] == 1
    assert snap["buffer_depth"] == 0 and snap["clock_synced"] is True
    code, text = get(gw.health_port, "/metrics")
    assert code == 200
    assert "dordt_gateway_readings_accepted_total 27" in text
    assert 'dordt_gateway_frames_rejected_total{reason="bad_tag"} 1' in text
    assert get(gw.health_port, "/other")[0] == 404


def test_heartbeats_reach_the_store(gateway, tmp_path):
    fleet, gw = gateway
    deadline = time.monotonic() + 10
    store = LocalStore(tmp_path / "store.sqlite")
    while time.monotonic() < deadline and len(store.points("gateway_health", "status")) < 2:
        time.sleep(0.1)
    beats = store.points("gateway_health", "buffer_readings")
    assert len(beats) >= 2 and beats[0].node == "gw-health"


def test_alerts_degrade_and_a_dead_loop_fails(gateway):
    fleet, gw = gateway
    gw.alerts["disk_full"] = time.time()
    code, body = get(gw.health_port, "/healthz")
    assert code == 200 and json.loads(body)["status"] == "degraded"
    assert "alert: disk_full" in json.loads(body)["problems"]
    gw._loop_tick -= 100  # the processing loop has not turned for 100 s
    code, body = get(gw.health_port, "/healthz")
    assert code == 503 and json.loads(body)["status"] == "failing"


def test_systemd_notifications(tmp_path, monkeypatch):
    sock_path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    server.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    fleet = SimFleet(seed=2)
    gw = Gateway(fleet.keyring(), LocalStore(tmp_path / "s.sqlite"), tmp_path / "gw")
    gw.start()
    got = set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not {"READY=1", "WATCHDOG=1"} <= got:
        got.add(server.recv(100).decode())
    gw.stop(0)
    got.add(server.recv(100).decode())
    while True:
        try:
            server.settimeout(0.2)
            got.add(server.recv(100).decode())
        except TimeoutError:
            break
    server.close()
    assert {"READY=1", "WATCHDOG=1", "STOPPING=1"} <= got
