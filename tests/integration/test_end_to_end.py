"""N simulated nodes → Mosquitto → gateway → VictoriaMetrics, all real, on loopback.

Every published reading must be found in the store with the right tags, values and
timestamps, and none twice.
"""

from __future__ import annotations

import time

import pytest

from firmware import metrics, protocol
from gateway.forward.influx import InfluxStore
from gateway.pipeline import Gateway
from simulators.fleet import SimFleet, forged, stranger, truncated
from tests.data import PASSTHROUGH
from tests.fixtures.services import publish_qos1
from tests.helpers import wait_until

pytestmark = pytest.mark.services


def test_every_published_reading_lands_once_with_tags_values_and_time(
        mosquitto, victoriametrics, tmp_path):
    fleet = SimFleet(seed=11, status_every=4)
    start = int(time.time()) - 3600  # recent: inside the store's retention
    expected = {}  # (measurement, field, node) -> {time_s: value}
    frames = []
    for round_no in range(12):
        t = start + 10 * round_no
        for node in fleet.nodes:
            frame = node.frame(t)
            frames.append((node.topic, frame))
            decoded = protocol.decode(frame)
            measurement = "node_status" if decoded.is_status else node.placement.kind
            for metric_id, raw in decoded.metrics:
                m = metrics.BY_ID[metric_id]
                key = (measurement, m.name, protocol.node_name(node.node_id))
                expected.setdefault(key, {})[t] = m.to_value(raw)
    good = len(frames)
    # hostile traffic on the same topics: none of it may reach the store
    topic, last = frames[-1]
    frames += [(topic, forged(last)), (topic, last), (topic, truncated(last)),
               stranger(11, start)]

    gateway = Gateway(fleet.keyring(), InfluxStore(victoriametrics.url), tmp_path / "gw",
                      mosquitto.url, client_id="e2e-gateway", policy_path=PASSTHROUGH)
    gateway.start()
    try:
        assert gateway.ingest.wait_connected(10)
        publish_qos1(mosquitto.host, mosquitto.port, frames, client_id="e2e-fleet")
        wait_until(lambda: gateway.stats.received == len(frames), 30, "the gateway to ingest")
        wait_until(lambda: gateway.outbox.depth() == 0, 30, "the outbox to drain")
    finally:
        gateway.stop()
    assert gateway.stats.accepted == good
    assert dict(gateway.stats.rejected) == {
        "bad_tag": 1, "replay": 1, "truncated": 1, "unknown_node": 1}

    victoriametrics.flush()
    found = {}
    # the store is shared by the tests of this worker: read only this fleet's series
    ours = "|".join(protocol.node_name(e.node_id) for e in fleet.nodes)
    for series in victoriametrics.export(
            '{__name__=~"(air|noise|crowd|node_status)_.*",node=~"(' + ours + ')"}'):
        labels = series["metric"]
        name = labels["__name__"]
        measurement = next(m for m in ("node_status", "air", "noise", "crowd")
                           if name.startswith(m + "_"))
        field = name[len(measurement) + 1:]
        if field == "batch":  # provenance: which signed batch brought the point
            continue
        node = labels["node"]
        entry = next(e for e in fleet.nodes if protocol.node_name(e.node_id) == node)
        assert labels["zone"] == entry.placement.zone
        assert labels["site"] == entry.placement.site
        assert labels["kind"] == entry.placement.kind
        times = [ts // 1000 for ts in series["timestamps"]]
        assert len(times) == len(set(times)), f"{name} {node} has a point twice"
        found[(measurement, field, node)] = dict(zip(times, series["values"]))
    assert found.keys() == expected.keys()
    for key, points in expected.items():
        assert found[key] == pytest.approx(points), key


def test_a_broker_restart_between_bursts_loses_nothing(mosquitto, tmp_path):
    from gateway.forward.local import LocalStore

    fleet = SimFleet(seed=12, status_every=0)
    t0 = int(time.time()) - 600
    bursts = [[(n.topic, n.frame(start + 10 * r)) for r in range(3) for n in fleet.nodes]
              for start in (t0, t0 + 100)]
    store_path = tmp_path / "store.sqlite"
    gateway = Gateway(fleet.keyring(), LocalStore(store_path), tmp_path / "gw", mosquitto.url,
                      client_id="restart-gateway")
    gateway.start()
    try:
        assert gateway.ingest.wait_connected(10)
        publish_qos1(mosquitto.host, mosquitto.port, bursts[0])
        mosquitto.stop()  # the gateway is cut off; its session stays on the broker's disk
        mosquitto.start()
        publish_qos1(mosquitto.host, mosquitto.port, bursts[1])  # queued for the session
        assert gateway.ingest.wait_connected(40)  # paho reconnects by itself
        total = len(bursts[0]) + len(bursts[1])
        wait_until(lambda: gateway.stats.accepted == total, 30, "both bursts")
        wait_until(lambda: gateway.outbox.depth() == 0, 30, "the outbox to drain")
    finally:
        gateway.stop()
    assert gateway.ingest.connects >= 2
    assert sum(LocalStore(store_path).count_by(("zone",)).values()) == total


def test_a_node_without_a_clock_gets_signed_time_on_its_downlink(mosquitto, tmp_path):
    import paho.mqtt.client as mqtt

    from firmware import protocol as p
    from firmware.uplink.mqtt import decode_time, topic_down
    from gateway.forward.local import LocalStore

    fleet = SimFleet(seed=13, status_every=0)
    node = fleet.nodes[0]
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="node-down")
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe(topic_down(node.placement.zone, node.node_id), qos=1)
    sub.loop_start()
    gateway = Gateway(fleet.keyring(), LocalStore(tmp_path / "s.sqlite"), tmp_path / "gw",
                      mosquitto.url, client_id="time-gateway")
    gateway.start()
    try:
        assert gateway.ingest.wait_connected(10)
        frame = node.encode(node.values(0), 42, 10, flags=p.FLAG_TIME_UNSYNCED)  # 42 s uptime
        publish_qos1(mosquitto.host, mosquitto.port, [(node.topic, frame)])
        wait_until(lambda: got, 10, "the time downlink")
    finally:
        gateway.stop()
        sub.disconnect()
        sub.loop_stop()
    counter, unix_s = decode_time(got[0], node.key, node.node_id)
    assert counter == node.counter and abs(unix_s - time.time()) < 5
    assert decode_time(got[0], bytes(32), node.node_id) is None  # signed with the node's key
