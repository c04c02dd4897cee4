"""The uplink: the offline ring buffer, MQTT publishing through outages (oldest first, drops
counted and reported), the downlink time message, and TLS with a client certificate, on an
in-memory broker, under MicroPython, and on real Mosquitto (plain, and the gateway's
shipped TLS configuration with certificates from the fleet CA)."""

import random
import time
from collections import deque
from pathlib import Path

import pytest

from firmware import metrics, protocol
from firmware.uplink import mqtt as uplink_mqtt
from firmware.uplink.mqtt import MqttUplink, decode_time, encode_time
from firmware.uplink.ring import FrameRing
from simulators import node_host
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
NODE = 0x0D0A0007
KEY = bytes(range(0x20, 0x40))
ZONE = "maasterras"
TOPIC = protocol.topic_up(ZONE, NODE)


def mp_files():
    """simulators/node_host.py for a MicroPython run (its MicroPython-safe half is used)."""
    return {"/lib/simulators/__init__.py": "",
            "/lib/simulators/node_host.py": (REPO / "simulators" / "node_host.py").read_text()}


def frame(counter, size_hint=0):
    pairs = [(0x60, counter % 1000)] + [(0x61 + i, i) for i in range(size_hint % 6)]
    return protocol.encode(KEY, metrics.KIND_CROWD, NODE, counter, 1764316800 + counter, 60,
                           pairs)


# -- the ring ------------------------------------------------------------------------------


def test_ring_keeps_the_newest_frames_in_order_and_drops_only_when_full():
    rng = random.Random(7)
    cap = 700
    ring = FrameRing(cap)
    model = deque()
    made = 0
    for _ in range(30000):
        if rng.random() < 0.55:
            data = made.to_bytes(4, "big") + bytes(rng.randint(33, 196))
            made += 1
            held = sum(len(f) + 1 for f in model)
            dropped_before = ring.dropped
            ring.put(data)
            model.append(data)
            drops = ring.dropped - dropped_before
            for _ in range(drops):
                model.popleft()
            if drops:
                # it had to: what was held plus the new record did not fit, allowing for
                # the one gap a non-wrapping record can leave at the end (< 201 bytes)
                assert held + len(data) + 1 > cap - 201
        elif model:
            assert bytes(ring.peek()) == model.popleft()
            ring.pop()
        else:
            assert ring.peek() is None
        assert len(ring) == len(model)
        assert ring.bytes_used == sum(len(f) for f in model)
        assert sum(len(f) + 1 for f in model) <= cap
    assert ring.dropped > 100 and made > 15000


def test_ring_refuses_a_frame_it_can_never_hold():
    ring = FrameRing(100)
    with pytest.raises(ValueError):
        ring.put(bytes(100))
    with pytest.raises(ValueError):
        ring.put(b"")


# -- the uplink on an in-memory broker -----------------------------------------------------


def make_uplink(clock, broker, ring_bytes=4096, **kw):
    net = node_host.HostNet(clock, broker.client)
    settings = {"host": "gw", "port": 1883, "client_id": "dordt-test", "keepalive_s": 60,
                "ring_bytes": ring_bytes}
    return MqttUplink(net, clock, settings, ZONE, NODE, KEY, rng=node_host.SeededRng(3),
                      retry_min_s=2, retry_max_s=60, **kw), net


def run_for(clock, uplink, ms, step_ms=100):
    end = clock.elapsed_ms + ms
    while clock.elapsed_ms < end:
        uplink.service(clock.ticks_ms(), 0)
        clock.advance(step_ms)


def test_frames_made_during_an_outage_are_sent_later_oldest_first():
    clock, broker = node_host.SimClock(), node_host.MemoryBroker()
    up, _ = make_uplink(clock, broker)
    broker.up = False
    frames = [frame(c) for c in range(20)]
    for f in frames[:12]:
        up.send(f)
        run_for(clock, up, 5000)
    assert broker.published == [] and len(up.ring) == 12 and up.link_errors > 0
    broker.up = True
    for f in frames[12:]:
        up.send(f)
    run_for(clock, up, 70000)
    assert broker.payloads() == frames  # in the order made, each once
    assert set(broker.topics()) == {TOPIC}
    assert {qos for _, _, qos in broker.published} == {1}
    assert len(up.ring) == 0 and up.dropped == 0 and up.connected


def test_reconnects_back_off_doubling_to_the_cap_with_bounded_jitter():
    clock, broker = node_host.SimClock(), node_host.MemoryBroker()
    attempts = []

    def factory(*args):
        attempts.append(clock.elapsed_ms)
        return broker.client(*args)

    net = node_host.HostNet(clock, factory)
    up = MqttUplink(net, clock, {"host": "gw", "port": 1883, "client_id": "c",
                                 "keepalive_s": 60, "ring_bytes": 1024}, ZONE, NODE, KEY,
                    rng=node_host.SeededRng(9), retry_min_s=2, retry_max_s=60)
    broker.up = False
    run_for(clock, up, 10 * 60 * 1000, step_ms=50)
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    nominal = [2000, 4000, 8000, 16000, 32000] + [60000] * (len(gaps) - 5)
    for gap, base in zip(gaps, nominal):
        assert base <= gap <= base * 1.25 + 100, (gaps, nominal)
    assert len(attempts) >= 12


def test_a_failed_publish_keeps_the_frame_and_a_lost_puback_repeats_it_harmlessly():
    clock, broker = node_host.SimClock(), node_host.MemoryBroker()
    up, _ = make_uplink(clock, broker)
    frames = [frame(c) for c in range(6)]
    broker.fail_publishes = 1  # the link drops as frame 0 goes out: not delivered
    for f in frames[:3]:
        up.send(f)
    run_for(clock, up, 10000)
    assert broker.payloads() == frames[:3]
    broker.lose_pubacks = 1  # frame 3 arrives but its PUBACK does not: sent again
    for f in frames[3:]:
        up.send(f)
    run_for(clock, up, 10000)
    got = broker.payloads()
    assert got == frames[:4] + frames[3:]
    window = protocol.ReplayWindow()  # what the gateway makes of the copy (§5.1)
    outcomes = []
    for payload in got:
        c = protocol.decode(payload).counter
        outcomes.append(window.check(c))
        if outcomes[-1] is None:
            window.accept(c)
    assert outcomes == [None] * 4 + [protocol.REPLAY, None, None]


def test_a_full_ring_drops_the_oldest_frames_and_counts_them():
    clock, broker = node_host.SimClock(), node_host.MemoryBroker()
    up, _ = make_uplink(clock, broker, ring_bytes=512)
    broker.up = False
    frames = [frame(c) for c in range(40)]
    for f in frames:
        up.send(f)
        run_for(clock, up, 1000)
    kept = len(up.ring)
    assert up.dropped == 40 - kept and kept * (len(frames[0]) + 1) <= 512
    broker.up = True
    run_for(clock, up, 120000)
    assert broker.payloads() == frames[40 - kept:]


def test_tls_settings_pass_through_to_the_client():
    clock, broker = node_host.SimClock(), node_host.MemoryBroker()
    tls = {"ca": "/flash/ca.pem", "cert": "/flash/node.crt", "key": "/flash/node.pem"}
    up, net = make_uplink(clock, broker, tls_paths=tls)
    up.send(frame(1))
    run_for(clock, up, 1000)
    assert net.clients[0].tls == tls and broker.payloads() == [frame(1)]


# -- the downlink time message -------------------------------------------------------------


def test_time_message_layout_and_checks():
    msg = encode_time(KEY, NODE, counter=5000, unix_s=1764331200, key_id=2)
    assert len(msg) == uplink_mqtt.TIME_MSG_LEN == 30
    assert msg[:14] == bytes.fromhex("81020d0a0007") + (5000).to_bytes(4, "big") + \
        (1764331200).to_bytes(4, "big")
    assert msg[14:] == protocol.hmac_sha256(KEY, msg[:14])[:16]
    assert decode_time(msg, KEY, NODE, key_id=2) == (5000, 1764331200)
    assert decode_time(msg, KEY, NODE, key_id=0) is None  # another key id
    assert decode_time(msg, KEY, NODE + 1, key_id=2) is None  # another node
    assert decode_time(msg, bytes(32), NODE, key_id=2) is None  # another key
    for i in range(len(msg)):
        bad = bytearray(msg)
        bad[i] ^= 0x01
        assert decode_time(bytes(bad), KEY, NODE, key_id=2) is None, i
    assert decode_time(msg[:-1], KEY, NODE, key_id=2) is None
    old = encode_time(KEY, NODE, 1, 946684800)  # year 2000: a broken gateway clock
    assert decode_time(old, KEY, NODE) is None
    with pytest.raises(protocol.FrameError):
        protocol.decode(msg + bytes(10))  # never mistaken for a frame (§2.3 check 3)


def test_the_uplink_applies_only_fresh_time_messages():
    clock, broker = node_host.SimClock(), node_host.MemoryBroker()
    got = []
    up, _ = make_uplink(clock, broker, first_counter=1000, on_time=got.append)
    up.send(frame(1000))
    run_for(clock, up, 500)
    down = uplink_mqtt.topic_down(ZONE, NODE)
    assert down == "dordt/v1/maasterras/0d0a0007/down"
    for counter, unix_s in [(999, 1764300000),  # made before this boot: ignored
                            (1000, 1764316800),  # fresh
                            (1003, 1764316900),  # fresh, later
                            (1001, 1764316850)]:  # older than the last applied: ignored
        broker.deliver(down, encode_time(KEY, NODE, counter, unix_s))
    broker.deliver(down, encode_time(bytes(32), NODE, 2000, 1764317000))  # forged
    broker.deliver("dordt/v1/maasterras/0d0a0008/down", encode_time(KEY, NODE, 2001,
                                                                     1764317000))
    run_for(clock, up, 2000)
    assert got == [1764316800, 1764316900] and up.time_messages == 2


# -- under MicroPython ---------------------------------------------------------------------

_MP = r"""
import gc, json
from firmware import protocol
from firmware.uplink.ring import FrameRing
from firmware.uplink.mqtt import MqttUplink, encode_time, topic_down
from simulators import node_host

KEY = bytes(range(0x20, 0x40))
NODE = 0x0D0A0007
out = {}

# ring: a deterministic mix of puts and pops, checked against a list
ring = FrameRing(700)
model = []
seed = 12345
made = 0
ok = True
for i in range(3000):
    seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
    if seed % 100 < 55:
        data = bytes([made & 255, (made >> 8) & 255]) + bytes(35 + seed % 160)
        made += 1
        d0 = ring.dropped
        ring.put(data)
        model.append(data)
        for _ in range(ring.dropped - d0):
            model.pop(0)
    elif model:
        ok = ok and bytes(ring.peek()) == model.pop(0)
        ring.pop()
    ok = ok and len(ring) == len(model)
out["ring_ok"] = ok
out["ring_dropped"] = ring.dropped

# put() and pop() allocate nothing
ring = FrameRing(1024)
frame = bytes(60)
ring.put(frame)
ring.pop()
gc.collect()
gc.disable()
a0 = gc.mem_alloc()
for i in range(500):
    ring.put(frame)
    if len(ring) > 5:
        ring.pop()
a1 = gc.mem_alloc()
gc.enable()
out["ring_alloc"] = a1 - a0

# an outage, then delivery oldest first
clock = node_host.SimClock(start_ticks=(1 << 30) - 3000)
broker = node_host.MemoryBroker()
net = node_host.HostNet(clock, broker.client)
got = []
up = MqttUplink(net, clock, {"host": "gw", "port": 1883, "client_id": "c", "keepalive_s": 60,
                             "ring_bytes": 2048}, "maasterras", NODE, KEY,
                rng=node_host.SeededRng(1), first_counter=0, on_time=got.append)
frames = [protocol.encode(KEY, 3, NODE, c, 1764316800 + c, 60, [(0x60, c)]) for c in range(10)]
broker.up = False
for f in frames[:6]:
    up.send(f)
    for _ in range(30):
        up.service(clock.ticks_ms(), 0)
        clock.advance(100)
out["during_outage"] = len(broker.published)
broker.up = True
for f in frames[6:]:
    up.send(f)
for _ in range(700):
    up.service(clock.ticks_ms(), 0)
    clock.advance(100)
out["in_order"] = broker.payloads() == frames
broker.deliver(topic_down("maasterras", NODE), encode_time(KEY, NODE, 3, 1764316900))
up.service(clock.ticks_ms(), 0)
out["time"] = got
print(json.dumps(out))
"""


@pytest.mark.micropython
def test_ring_and_uplink_under_micropython(micropython):
    out = micropython.run_json(_MP, files=mp_files(), timeout_s=120)
    assert out["ring_ok"] and out["ring_dropped"] > 0
    assert out["ring_alloc"] == 0
    assert out["during_outage"] == 0 and out["in_order"]
    assert out["time"] == [1764316900]


# -- a node on real Mosquitto --------------------------------------------------------------


class FakeCrowd:
    """A sampler with the contract's shape: a crowd reading every `window_s`."""

    KIND = "crowd"

    def __init__(self, hw, config):
        self.clock = hw.clock
        self.window_ms = config.get("window_s", 10) * 1000
        self.end = self.clock.ticks_add(self.clock.ticks_ms(), self.window_ms)
        self.n = 0

    def poll(self, now_ms):
        if self.clock.ticks_diff(now_ms, self.end) < 0:
            return None
        self.end = self.clock.ticks_add(self.end, self.window_ms)
        self.n += 1
        return {"crowd_count": self.n, "crowd_faults": 0}

    def wait_ms(self, now_ms):
        return max(0, self.clock.ticks_diff(self.end, now_ms))


class RecordingClient:
    """Wraps a client; records each frame whose publish returned (PUBACK received)."""

    def __init__(self, inner, log):
        self._inner = inner
        self._log = log

    def publish(self, topic, msg, retain=False, qos=0):
        self._inner.publish(topic, msg, retain=retain, qos=qos)
        self._log.append(bytes(msg))

    def __getattr__(self, name):
        return getattr(self._inner, name)


@pytest.mark.services
def test_a_node_rides_out_a_broker_outage_and_the_gateway_accepts_everything(
        mosquitto, tmp_path):
    from firmware import node
    from fleet.keyring import Keyring, NodeEntry
    from gateway.forward.local import LocalStore
    from gateway.pipeline import Gateway

    clock = node_host.SimClock(start_ticks=(1 << 30) - 60000)
    sent = []
    hw = node_host.host_hardware(
        str(tmp_path / "flash"), clock=clock,
        mqtt=lambda *a: RecordingClient(node_host.paho_client(*a), sent))
    (tmp_path / "flash").mkdir()
    node_host.enrol(hw.flash, NODE, "crowd", ZONE, "terras-3", KEY,
                    broker={"host": mosquitto.host, "port": mosquitto.port, "ring_bytes": 512},
                    time={"ntp_host": "ntp.local"}, intervals={"status_every": 3},
                    sampler={"window_s": 10})

    keyring = Keyring([NodeEntry(NODE, "crowd", ZONE, "terras-3", {0: KEY})])
    gateway = Gateway(keyring, LocalStore(tmp_path / "store.sqlite"), tmp_path / "gw",
                      mosquitto.url, client_id="uplink-test-gw")

    def outage(t0, t1):  # the broker is down from 2 to 6 minutes of simulated time
        if t0 < 120_000 <= t1:
            # Let the gateway commit and ack what it has first: a message still unacked
            # when the broker stops is redelivered after the restart and refused as a
            # (harmless) replay, which is the gateway's business, not this test's.
            wait_until(lambda: gateway.stats.received >= len(sent), 10, "the gateway")
            time.sleep(0.3)
            mosquitto.stop()
        if t0 < 360_000 <= t1:
            mosquitto.start()

    clock.on_advance(outage)
    gateway.start()
    try:
        assert gateway.ingest.wait_connected(10)
        n = node.run(hw, max_ms=10 * 60_000, sampler_factory=FakeCrowd)
        wait_until(lambda: gateway.stats.received >= len(sent), 40, "the gateway")
        wait_until(lambda: gateway.outbox.depth() == 0, 30, "the outbox")
    finally:
        gateway.stop()
    counters = [protocol.decode(f).counter for f in sent]
    assert counters == sorted(set(counters))  # oldest first, each once, through the outage
    assert n.uplink.dropped > 0 and n.uplink.link_errors > 0
    assert gateway.stats.accepted == len(sent) == gateway.stats.received
    assert not gateway.stats.rejected
    # the status frames after the outage report the drops
    status = [protocol.decode(f) for f in sent if protocol.decode(f).is_status]
    dropped = [dict(s.metrics)[0xE5] for s in status]
    assert dropped[0] == 0 and dropped[-1] == n.uplink.dropped > 0
    assert n.frames_made == len(sent) + n.uplink.dropped


# -- TLS with a client certificate, on the gateway's shipped broker configuration ----------


@pytest.mark.services
def test_a_node_publishes_over_tls_with_its_fleet_certificate(tmp_path_factory, tmp_path):
    from firmware import node
    from fleet.ca import FleetCA
    from fleet.keyring import Keyring, NodeEntry
    from gateway.forward.local import LocalStore
    from gateway.mosquitto import CONF, BrokerSettings, install
    from gateway.pipeline import Gateway
    from tests.fixtures.services import Mosquitto, free_port

    ca = FleetCA.init(tmp_path / "ca")
    ca.issue_node(NODE)
    ca.issue_gateway("gw-terras", ["terras.local"])
    local_port = free_port()

    class ShippedBroker(Mosquitto):
        def _config(self, extra):
            root = hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0
            settings = BrokerSettings(tls_port=self.port, tls_bind=self.host,
                                      local_port=local_port,
                                      persistence_dir=str(self.data_dir),
                                      run_as="root" if root else None)
            return install(ca.layout.root, self.workdir / "broker", settings=settings).read_text()

        def _argv(self):
            return [self.binary, "-c", str(self.workdir / "broker" / CONF)]

        def _probe(self):
            from tests.fixtures.services import _mqtt_connack

            return _mqtt_connack(self.host, local_port)

    broker = ShippedBroker(tmp_path_factory.mktemp("tls-broker"))
    broker.start()
    keyring = Keyring([NodeEntry(NODE, "crowd", ZONE, "terras-3", {0: KEY})])
    gateway = Gateway(keyring, LocalStore(tmp_path / "store.sqlite"), tmp_path / "gw",
                      f"mqtt://127.0.0.1:{local_port}", client_id="tls-test-gw")
    gateway.start()
    try:
        assert gateway.ingest.wait_connected(10)
        name = protocol.node_name(NODE)
        results = {}
        for with_cert in (False, True):
            root = tmp_path / ("flash-cert" if with_cert else "flash-nocert")
            root.mkdir()
            hw = node_host.host_hardware(str(root), mqtt=node_host.paho_client)
            hw.flash.write("ca.pem", ca.layout.ca_cert.read_bytes())
            tls = {"ca": "ca.pem"}
            if with_cert:
                hw.flash.write("node.crt", ca.layout.node_cert(name).read_bytes())
                hw.flash.write("node.pem", ca.layout.node_key(name).read_bytes())
                tls.update(cert="node.crt", key="node.pem")
            node_host.enrol(hw.flash, NODE, "crowd", ZONE, "terras-3", KEY,
                            broker={"host": "127.0.0.1", "port": broker.port, "tls": tls},
                            sampler={"window_s": 10})
            results[with_cert] = node.run(hw, max_ms=35_000, sampler_factory=FakeCrowd)
        wait_until(lambda: gateway.stats.received >= results[True].uplink.sent, 20,
                   "the gateway")
    finally:
        gateway.stop()
        broker.stop()
    refused, good = results[False], results[True]
    assert refused.uplink.sent == 0 and refused.uplink.connects == 0
    assert refused.uplink.link_errors > 0  # no client certificate: no connection
    assert good.uplink.sent == good.frames_made == 4  # boot status + three windows
    assert good.uplink.connects == 1
    assert gateway.stats.accepted == 4 and not gateway.stats.rejected
