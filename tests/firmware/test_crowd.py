"""The crowd node: counts that are right, and nothing that links a person across windows or
nodes.

- SipHash-2-4 in 16-bit limbs equals the paper's function (its test vectors and a plain
  64-bit reference), on CPython and under MicroPython.
- 200 phones present in a window count 200 +- 5 % (emulated population with rotating
  addresses, fading, losses, and phones out of range).
- Unlinkability, shown on what leaves: the window key is new every window and the table is
  wiped; two different populations with the same per-window counts and RSSI bins make
  byte-identical frames, whatever the RNG; the same phones seen by two nodes give the same
  metrics, so nothing in them tells one phone from another.
- A capture of everything a crowd node publishes in an hour on real Mosquitto holds only
  crowd and status metrics, and the gateway accepts every frame; the node's console and
  flash hold no address.
- Under MicroPython: no allocation per advertisement, and the node runs several full
  windows at real advertising rates.
"""

import io
import json
import random
import threading
import time
from array import array
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from firmware import metrics, node, protocol
from firmware.measure import crowd
from simulators import node_host
from simulators.emulators import ble

REPO = Path(__file__).resolve().parents[2]
NODE = 0x0D0A0003
KEY = bytes(range(0xA0, 0xC0))
ZONE = "spoorzone"
CROWD_IDS = {m.id for m in metrics.BY_ID.values() if m.group == "crowd"}
STATUS_IDS = {m.id for m in metrics.BY_ID.values() if m.group == metrics.GROUP_STATUS}
WINDOW_MS = 60_000


def mp_files():
    return {"/lib/simulators/__init__.py": "",
            "/lib/simulators/node_host.py": (REPO / "simulators" / "node_host.py").read_text()}


# -- SipHash-2-4 ---------------------------------------------------------------------------

_M64 = (1 << 64) - 1


def siphash24_reference(key: bytes, msg: bytes) -> int:
    """SipHash-2-4 written from the paper (Aumasson & Bernstein 2012, §2) with 64-bit ints."""

    def rotl(x, b):
        return ((x << b) | (x >> (64 - b))) & _M64

    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D,
         k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]

    def rounds(n):
        for _ in range(n):
            v[0] = (v[0] + v[1]) & _M64
            v[1] = rotl(v[1], 13) ^ v[0]
            v[0] = rotl(v[0], 32)
            v[2] = (v[2] + v[3]) & _M64
            v[3] = rotl(v[3], 16) ^ v[2]
            v[0] = (v[0] + v[3]) & _M64
            v[3] = rotl(v[3], 21) ^ v[0]
            v[2] = (v[2] + v[1]) & _M64
            v[1] = rotl(v[1], 17) ^ v[2]
            v[2] = rotl(v[2], 32)

    end = len(msg) - len(msg) % 8
    words = [int.from_bytes(msg[i:i + 8], "little") for i in range(0, end, 8)]
    words.append(((len(msg) & 0xFF) << 56) | int.from_bytes(msg[end:], "little"))
    for m in words:
        v[3] ^= m
        rounds(2)
        v[0] ^= m
    v[2] ^= 0xFF
    rounds(4)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def limbs_hash(key, msg):
    state, out = array("H", bytes(32)), array("H", bytes(8))
    crowd.siphash_key_state(key, state)
    low30 = crowd.siphash24(state, msg, len(msg), out)
    return out[0] | out[1] << 16 | out[2] << 32 | out[3] << 48, low30


def test_siphash_matches_the_paper_vectors_and_the_reference():
    key = bytes(range(16))
    # the paper's Appendix A: message 00..0e under key 00..0f; and the empty message
    assert siphash24_reference(key, bytes(range(15))) == 0xA129CA6149BE45E5
    assert siphash24_reference(key, b"") == 0x726FDB47DD0E0E31
    for n in range(64):
        msg = bytes(range(n))
        full, low30 = limbs_hash(key, msg)
        assert full == siphash24_reference(key, msg), n
        assert low30 == (full & 0x3FFFFFFF or 1)
    rng = random.Random(4)
    for _ in range(500):
        k, msg = rng.randbytes(16), rng.randbytes(rng.choice((6, 7, 8, 9)))
        assert limbs_hash(k, msg)[0] == siphash24_reference(k, msg)


_MP_SIP = r"""
import json
from array import array
from firmware.measure import crowd
cases = json.loads(%r)
out = []
state = array("H", bytes(32))
limbs = array("H", bytes(8))
for key_hex, msg_hex in cases:
    key = bytes.fromhex(key_hex)
    msg = bytes.fromhex(msg_hex)
    crowd.siphash_key_state(key, state)
    low = crowd.siphash24(state, msg, len(msg), limbs)
    out.append([low, list(limbs)])
print(json.dumps(out))
"""


@pytest.mark.micropython
def test_siphash_under_micropython(micropython):
    rng = random.Random(5)
    cases = [(bytes(range(16)).hex(), bytes(range(n)).hex()) for n in range(20)]
    cases += [(rng.randbytes(16).hex(), rng.randbytes(6).hex()) for _ in range(50)]
    got = micropython.run_json(_MP_SIP % json.dumps(cases))
    for (key, msg), (low, limbs) in zip(cases, got):
        want = siphash24_reference(bytes.fromhex(key), bytes.fromhex(msg))
        assert limbs[0] | limbs[1] << 16 | limbs[2] << 32 | limbs[3] << 48 == want
        assert low == (want & 0x3FFFFFFF or 1)


# -- counting ------------------------------------------------------------------------------


def sampler_on(population, seed=1, clock=None, **config):
    clock = clock or node_host.SimClock(start_ticks=(1 << 30) - 100_000)
    scanner = ble.EmulatedScanner(population, clock)
    hw = node_host.host_hardware("/nonexistent", clock=clock, seed=seed, ble=scanner)
    return crowd.CrowdSampler(hw, config), clock, hw


def windows(sampler, clock, n):
    """Run `n` windows; returns, per window, its output with the uncorrected number of
    distinct hashes added as "distinct" (RAM only, never sent), and its [t0, t1) in
    elapsed ms."""
    out = []
    for _ in range(n):
        t0 = clock.elapsed_ms
        while True:
            clock.sleep_ms(min(1000, max(1, sampler.wait_ms(clock.ticks_ms()))))
            got = sampler.poll(clock.ticks_ms())
            if got is not None:
                out.append((dict(got, distinct=sampler.last_distinct), (t0, clock.elapsed_ms)))
                break
    return out


def test_200_phones_count_200_within_5_percent():
    phones = ble.crowd(200, seed=11, far=120)  # 120 more at 80..200 m: out of range
    population = ble.Population(phones, seed=11)
    sampler, clock, hw = sampler_on(population)
    near = {p.phone_id for p in phones if p.distance_m < 20}
    for got, (t0, t1) in windows(sampler, clock, 3):
        assert population.present_in(t0, t1, max_distance_m=20) == near
        assert 190 <= got["crowd_count"] <= 210, got
        assert sum(got[f"rssi_bin_{i}"] for i in range(5)) == got["crowd_count"]
        assert got["crowd_faults"] == 0
        # uncorrected, the node saw exactly the near phones' addresses (rotation included)
        assert got["distinct"] == len(population.addresses_in(t0, t1, near))
    assert hw.ble.delivered > 3 * 200 * 60  # real rates: every 100 ms .. 1 s


def test_without_the_rotation_correction_the_count_is_the_addresses_heard():
    phones = ble.crowd(150, seed=12, rotation_ms=3 * 60_000)  # rotate often
    population = ble.Population(phones, seed=12, loss=0.0)
    sampler, clock, _ = sampler_on(population, address_rotation_s=0)
    for got, (t0, t1) in windows(sampler, clock, 3):
        addresses = population.addresses_in(t0, t1)
        assert abs(got["crowd_count"] - len(addresses)) <= 2, (got, len(addresses))
        assert got["crowd_count"] > 170  # ~1/3 of the phones changed address in the window


def test_a_full_table_saturates_and_says_so():
    population = ble.Population(ble.crowd(100, seed=13), seed=13, loss=0.0)
    sampler, clock, _ = sampler_on(population, table_slots=64, address_rotation_s=0)
    got, _ = windows(sampler, clock, 1)[0]
    assert got["crowd_count"] == 48  # 3/4 of 64 slots: a lower bound, flagged
    assert got["crowd_faults"] & crowd.FAULT_TABLE_FULL


def test_missing_scanner_or_rng_are_faults_not_crashes():
    clock = node_host.SimClock()
    hw = node_host.host_hardware("/nonexistent", clock=clock, ble=None)
    s = crowd.CrowdSampler(hw, {})
    got, _ = windows(s, clock, 1)[0]
    assert got["crowd_count"] == 0 and got["crowd_faults"] == crowd.FAULT_NO_SCANNER

    class BrokenRng:
        def urandom(self, n):
            raise OSError(5)

    population = ble.Population(ble.crowd(10, seed=14), seed=14)
    hw = node_host.host_hardware("/nonexistent", clock=clock,
                                 ble=ble.EmulatedScanner(population, clock))
    hw.rng = BrokenRng()
    s = crowd.CrowdSampler(hw, {})
    got, _ = windows(s, clock, 1)[0]
    assert got["crowd_count"] == 0 and got["crowd_faults"] == crowd.FAULT_NO_KEY


def test_sampler_settings_are_checked_with_the_key_named():
    hw = node_host.host_hardware("/nonexistent")
    for bad, words in [({"window": 60}, "[sampler.window] is an invalid option"),
                       ({"window_s": 1}, "[sampler.window_s] must be an integer in 10..3600"),
                       ({"table_slots": 1000}, "power of two"),
                       ({"rssi_floor_dbm": -200}, "[sampler.rssi_floor_dbm]")]:
        with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
            crowd.CrowdSampler(hw, bad)


# -- unlinkability -------------------------------------------------------------------------


class FixedFeed:
    """A deterministic scanner: each device (addr, rssi, interval_ms, phase_ms) advertises
    on its own schedule with a fixed RSSI."""

    def __init__(self, clock, devices):
        self.devices = devices
        self.cb = None
        clock.on_advance(self._advance)

    def start(self, cb):
        self.cb = cb

    def stop(self):
        self.cb = None

    def _advance(self, t0, t1):
        if self.cb is None:
            return
        events = []
        for addr, rssi, interval, phase in self.devices:
            first = t0 + (phase - t0) % interval
            events += [(t, addr, rssi) for t in range(first, t1, interval)]
        events.sort(key=lambda e: e[0])
        for _, addr, rssi in events:
            self.cb(addr, rssi)


def devices(seed, rssis):
    """Devices with fresh random addresses and the given RSSIs and schedules."""
    rng = random.Random(seed)
    sched = random.Random(99)  # the same schedules in every population
    return [(rng.randbytes(6), rssi, sched.randint(100, 1000), sched.randrange(1000))
            for rssi in rssis]


def test_the_window_key_changes_every_window_and_the_table_is_wiped():
    clock = node_host.SimClock()
    devs = devices(1, [-70] * 10)
    hw = node_host.host_hardware("/nonexistent", clock=clock, seed=21)
    hw.ble = FixedFeed(clock, devs)
    s = crowd.CrowdSampler(hw, {})
    keys, slots = [], []
    calls = hw.rng.calls
    addr = devs[0][0]
    for _ in range(8):
        keys.append(bytes(s._state))
        slots.append(crowd.siphash24(s._state, addr, 6))  # what the table holds for addr
        windows(s, clock, 1)
        assert not any(s._table) and not any(s._rssi)  # wiped at the window's end
    assert len(set(keys)) == 8 and len(set(slots)) == 8
    assert hw.rng.calls - calls == 8  # one fresh key from the RNG per window
    s.close()
    assert not any(s._state) and not any(s._table)


def _run_node(tmp, feed_devices, seed, node_id=NODE):
    clock = node_host.SimClock(start_ticks=(1 << 30) - 30_000)
    Path(tmp).mkdir(parents=True, exist_ok=True)
    hw = node_host.host_hardware(str(tmp), clock=clock, seed=seed)
    hw.ble = FixedFeed(clock, feed_devices)
    node_host.enrol(hw.flash, node_id, "crowd", ZONE, "spz-1", KEY,
                    time={"ntp_host": "ntp.local"}, intervals={"status_every": 3})
    with redirect_stdout(io.StringIO()):
        node.run(hw, max_ms=4 * WINDOW_MS + 500)
    return hw.broker.payloads()


def test_different_people_with_the_same_counts_make_identical_frames(tmp_path):
    # per window: 5 devices in RSSI bin 0 and 20 in each of bins 1..4
    rssis = [-92] * 5 + [-85] * 20 + [-75] * 20 + [-65] * 20 + [-50] * 20
    a = _run_node(tmp_path / "a", devices(1, rssis), seed=1)
    b = _run_node(tmp_path / "b", devices(2, rssis), seed=2)  # other people, other keys
    assert len(a) == 6 and a == b  # every byte, tag included
    crowd_frames = [protocol.decode(f) for f in a if not protocol.decode(f).is_status]
    assert len(crowd_frames) == 4
    for f in crowd_frames:
        values = dict(f.metrics)
        # 85 devices / (1 + 60/900) = 79.7; the bins scaled to that total by largest
        # remainders: 4.69, 18.75, 18.75, 18.75, 18.75
        assert values[0x60] == 80
        assert [values[0x61 + i] for i in range(5)] == [4, 19, 19, 19, 19]


def test_the_same_people_at_two_nodes_leave_only_equal_counts(tmp_path):
    rssis = [-80] * 30 + [-60] * 30
    people = devices(3, rssis)
    a = [protocol.decode(f) for f in _run_node(tmp_path / "a", people, 1, node_id=NODE)]
    b = [protocol.decode(f) for f in _run_node(tmp_path / "b", people, 2, node_id=NODE + 1)]
    assert [f.metrics for f in a] == [f.metrics for f in b]
    # and the same counts from other people: the metrics cannot tell the two groups apart
    c = [protocol.decode(f) for f in _run_node(tmp_path / "c", devices(4, rssis), 3)]
    assert [f.metrics for f in c] == [f.metrics for f in a]


# -- an hour on real Mosquitto, with the gateway -------------------------------------------


@pytest.mark.services
def test_an_hour_of_a_crowd_node_on_mosquitto_accepted_by_the_gateway(mosquitto, tmp_path):
    import paho.mqtt.client as mqtt

    from fleet.keyring import Keyring, NodeEntry
    from gateway.forward.local import LocalStore
    from gateway.pipeline import Gateway

    hour_ms = 3600 * 1000
    clock = node_host.SimClock(start_ticks=(1 << 30) - 600_000)  # ticks wrap at 10 min
    phones = ble.street(seed=31, duration_ms=hour_ms, arrivals_per_min=12,
                        dwell_mean_s=240, max_distance_m=50)
    population = ble.Population(phones, seed=31)
    scanner = ble.EmulatedScanner(population, clock)
    flash_dir = tmp_path / "flash"
    flash_dir.mkdir()
    hw = node_host.host_hardware(str(flash_dir), clock=clock, seed=None,  # os.urandom keys
                                 mqtt=node_host.paho_client, ble=scanner)
    node_host.enrol(hw.flash, NODE, "crowd", ZONE, "spz-1", KEY,
                    broker={"host": mosquitto.host, "port": mosquitto.port},
                    time={"ntp_host": "ntp.local"})

    captured = []  # everything published on the broker, by anyone
    ready = threading.Event()
    capture = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="crowd-capture")
    capture.on_connect = lambda c, u, f, rc, p: c.subscribe("#", qos=1)
    capture.on_subscribe = lambda *a: ready.set()
    capture.on_message = lambda c, u, m: captured.append((m.topic, bytes(m.payload)))
    capture.connect(mosquitto.host, mosquitto.port)
    capture.loop_start()
    keyring = Keyring([NodeEntry(NODE, "crowd", ZONE, "spz-1", {0: KEY})])
    gateway = Gateway(keyring, LocalStore(tmp_path / "store.sqlite"), tmp_path / "gw",
                      mosquitto.url, client_id="crowd-hour-gw")
    gateway.start()
    console = io.StringIO()
    started = time.monotonic()
    try:
        assert ready.wait(10) and gateway.ingest.wait_connected(10)
        with redirect_stdout(console):
            n = node.run(hw, max_ms=hour_ms + 500)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
                gateway.stats.received < n.uplink.sent or len(captured) < n.uplink.sent):
            time.sleep(0.05)
    finally:
        gateway.stop()
        capture.loop_stop()
        capture.disconnect()
    real_s = time.monotonic() - started

    # the node: 60 windows, a status frame at boot and every 10 windows, all sent
    assert n.frames_made == n.uplink.sent == 60 + 7 and n.uplink.dropped == 0
    assert n.errors == 0 and hw.wdt.max_gap_ms <= 1000
    # the gateway took every frame
    assert gateway.stats.accepted == gateway.stats.received == n.uplink.sent
    assert not gateway.stats.rejected
    # the capture: only this node's uplink topic, only crowd and status metrics
    assert {t for t, _ in captured} == {protocol.topic_up(ZONE, NODE)}
    assert len(captured) == n.uplink.sent
    decoded = [protocol.open_frame(p, KEY) for _, p in captured]
    for f in decoded:
        ids = {i for i, _ in f.metrics}
        assert ids <= (STATUS_IDS if f.is_status else CROWD_IDS), f
        assert f.time_synced and f.kind == metrics.KIND_CROWD
    counts = [dict(f.metrics)[0x60] for f in decoded if not f.is_status]
    # against the ground truth, window by window: with fading, a node hears every phone
    # whose mean RSSI is within 2 sd of its floor at least once in a minute of
    # advertisements, so those are the ones it should count
    audible = [len(population.present_in(i * WINDOW_MS, (i + 1) * WINDOW_MS,
                                         min_mean_rssi=-95 - 2 * ble.FADING_SD_DB))
               for i in range(60)]
    for count, truth in zip(counts, audible):
        assert abs(count - truth) <= 0.1 * truth + 2, list(zip(counts, audible))
    assert sum(abs(c - t) for c, t in zip(counts, audible)) / sum(audible) < 0.05
    assert max(audible) > 40  # a busy street, people coming and going
    # nothing that identifies a phone on the console or on flash
    addresses = population.addresses_in(0, hour_ms)
    text = console.getvalue().lower()
    stored = b"".join(hw.flash.read(name) for name in hw.flash.listdir())
    assert sorted(hw.flash.listdir()) == ["config.json", "counter", "node.key"]
    for addr in addresses:
        assert addr.hex() not in text and addr not in stored
    print(f"crowd hour: {scanner.delivered} advertisements, {len(addresses)} addresses, "
          f"{len(decoded)} frames, {real_s:.1f} s real time")


# -- under MicroPython ---------------------------------------------------------------------

_MP_ALLOC = r"""
import gc, json
from firmware.measure import crowd
from simulators import node_host


class Feed:
    def start(self, cb):
        self.cb = cb

    def stop(self):
        pass


class Keys:
    # the sampler's own allocations only: a board's os.urandom(16) adds its 16-byte result
    def __init__(self):
        self.keys = [bytes([i] * 16) for i in range(1, 9)]
        self.n = 0

    def urandom(self, n):
        self.n += 1
        return self.keys[self.n & 7]


clock = node_host.SimClock()
hw = node_host.host_hardware("/x", clock=clock, seed=7)
hw.ble = Feed()
hw.rng = Keys()
s = crowd.CrowdSampler(hw, {"address_rotation_s": 900})
addrs = [bytes([i & 255, i >> 8, 3, 4, 5, 6]) for i in range(300)]
cb = hw.ble.cb
for a in addrs:  # warm up: every attribute and slot touched once
    cb(a, -70)
clock.advance(60000)
s.poll(clock.ticks_ms())


def feed(cb, addrs, rounds):
    # in a function: its locals live on the stack, so only the code under test can allocate
    for k in range(rounds):
        for a in addrs:
            cb(a, -60 - (k & 7))


def close(s, clock):
    clock.elapsed_ms += 60000
    return s.poll(clock.ticks_ms())


feed(cb, addrs, 1)  # warm up the function itself
a0 = a1 = a2 = 0  # globals made before measuring: a new one can grow the module's dict
got = None
gc.collect()
gc.disable()
a0 = gc.mem_alloc()
feed(cb, addrs, 20)
a1 = gc.mem_alloc()
got = close(s, clock)
a2 = gc.mem_alloc()
gc.enable()
print(json.dumps({"per_ads": a1 - a0, "ads": 20 * len(addrs), "window_close": a2 - a1,
                  "count": got["crowd_count"], "distinct": s.last_distinct}))
"""


@pytest.mark.micropython
def test_no_allocation_per_advertisement_under_micropython(micropython):
    out = micropython.run_json(_MP_ALLOC, files=mp_files(), timeout_s=120)
    assert out["per_ads"] == 0, out  # 6000 advertisements, not one byte
    assert out["distinct"] == 300 and out["count"] == 281  # 300 / (1 + 60/900)
    assert out["window_close"] == 0, out  # histogram, wipe, rekey, output: in place


_MP_NODE = r"""
import json
from firmware import node, protocol
from simulators import node_host

KEY = bytes(range(0xA0, 0xC0))
PHONES = 100


class Feed:
    # PHONES phones, each advertising every 100 ms .. 1 s at a fixed RSSI, in time order
    def __init__(self, clock):
        self.cb = None
        seed = 1
        self.phones = []
        for i in range(PHONES):
            seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
            interval = 100 + seed % 901
            addr = bytes([0x40 | (seed & 0x3F), i, seed >> 8 & 255, seed >> 16 & 255, 7, 9])
            self.phones.append([seed % interval, interval, addr, -55 - (i % 40)])
        clock.on_advance(self.advance)
        self.delivered = 0

    def start(self, cb):
        self.cb = cb

    def stop(self):
        self.cb = None

    def advance(self, t0, t1):
        cb = self.cb
        if cb is None:
            return
        while True:
            best = None
            for p in self.phones:
                if p[0] < t1 and (best is None or p[0] < best[0]):
                    best = p
            if best is None:
                return
            cb(best[2], best[3])
            self.delivered += 1
            best[0] += best[1]


import os
os.mkdir("/flash")
clock = node_host.SimClock(start_ticks=(1 << 30) - 50000)
hw = node_host.host_hardware("/flash", clock=clock, seed=5)
feed = Feed(clock)
hw.ble = feed
node_host.enrol(hw.flash, 0x0D0A0003, "crowd", "spoorzone", "spz-1", KEY,
                time={"ntp_host": "ntp.local"}, sampler={"address_rotation_s": 0})
n = node.run(hw, max_ms=3 * 60000 + 500)
frames = []
for payload in hw.broker.payloads():
    f = protocol.open_frame(payload, KEY)
    frames.append([f.flags, f.window_s, f.metrics])
print(json.dumps({"frames": frames, "delivered": feed.delivered, "errors": n.errors,
                  "files": sorted(os.listdir("/flash"))}))
"""


@pytest.mark.micropython
def test_the_crowd_node_runs_full_windows_at_real_rates_under_micropython(micropython):
    out = micropython.run_json(_MP_NODE, files=mp_files(), timeout_s=300)
    assert out["errors"] == 0
    assert out["delivered"] > 3 * 60 * 100  # 100 phones at 100 ms .. 1 s for 3 minutes
    measure = [f for f in out["frames"] if not f[0] & protocol.FLAG_STATUS]
    status = [f for f in out["frames"] if f[0] & protocol.FLAG_STATUS]
    assert len(measure) == 3 and len(status) == 1
    for _, window_s, pairs in measure:
        values = dict(map(tuple, pairs))
        assert set(values) <= CROWD_IDS and window_s == 60
        assert values[0x60] == 100  # every phone, once (no rotation in this feed)
        assert sum(values[0x61 + i] for i in range(5)) == 100
        assert values[0x66] == 0
    assert out["files"] == ["config.json", "counter", "node.key"]
