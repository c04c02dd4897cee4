"""verify: every rejection reason, in order, and no exception for any input."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import metrics, protocol
from fleet.keyring import Keyring, NodeEntry
from gateway import verify as verify_module
from gateway.forward import line_head
from gateway.model import Envelope, Reading, Rejected
from gateway.verify import REASONS, Verifier
from simulators.fleet import SimFleet

NOW = 1_790_000_000


def setup():
    fleet = SimFleet(seed=7)
    ring = fleet.keyring()
    return fleet, ring, Verifier(ring, clock=lambda: NOW + 0.5)


def env(topic, payload, received=NOW + 0.5):
    return Envelope("mqtt", topic, payload, received)


def node_of(fleet, kind):
    return next(n for n in fleet.nodes if n.placement.kind == kind)


def test_good_frames_of_every_kind_become_readings():
    fleet, ring, v = setup()
    for node in fleet.nodes:
        values = node.values(NOW)
        r = v.check(env(node.topic, node.encode(values, NOW, 10)))
        assert isinstance(r, Reading), r
        assert (r.node, r.zone, r.site, r.kind) == (
            protocol.node_name(node.node_id), node.placement.zone, node.placement.site,
            node.placement.kind)
        assert r.time_s == NOW and r.window_s == 10 and not r.status
        for name, value in values.items():
            step = 10.0 ** metrics.BY_NAME[name].exp
            assert abs(r.fields[name] - value) <= step / 2 + 1e-9


def test_zone_and_site_come_from_the_keyring_not_the_topic():
    fleet, ring, v = setup()
    node = node_of(fleet, "air")
    other_zone_topic = protocol.topic_up("maasterras", node.node_id)
    r = v.check(env(other_zone_topic, node.frame(NOW)))
    assert isinstance(r, Reading) and r.zone == node.placement.zone != "maasterras"


def reason(result):
    assert isinstance(result, Rejected), result
    assert result.reason in REASONS
    return result.reason


def test_each_rejection_reason():
    fleet, ring, v = setup()
    air, noise = node_of(fleet, "air"), node_of(fleet, "noise")
    good = air.frame(NOW)
    assert isinstance(v.check(env(air.topic, good)), Reading)
    assert reason(v.check(env(air.topic, good))) == "replay"
    assert reason(v.check(env(air.topic, good[:20]))) == "truncated"
    assert reason(v.check(env(air.topic, good + bytes(200)))) == "oversized"
    assert reason(v.check(env(air.topic, b"\x02" + good[1:]))) == "version"
    assert reason(v.check(env(air.topic, good[:2] + b"\x80" + good[3:]))) == "malformed"
    assert reason(v.check(env(noise.topic, air.frame(NOW)))) == "topic_mismatch"
    assert reason(v.check(env("dordt/v1/x/up", air.frame(NOW)))) == "topic_mismatch"
    f = air.frame(NOW)
    assert reason(v.check(env(air.topic, f[:-1] + bytes([f[-1] ^ 1])))) == "bad_tag"
    # unknown node / key, revoked
    from simulators.fleet import stranger
    topic, frame = stranger(7, NOW)
    assert reason(v.check(env(topic, frame))) == "unknown_node"
    other_key = protocol.encode(air.key, 1, air.node_id, 10_000, NOW, 10, [(1, 5)], key_id=3)
    assert reason(v.check(env(air.topic, other_key))) == "unknown_key"
    # kind mismatch: the air node's key signing a noise frame
    wrong_kind = protocol.encode(air.key, metrics.KIND_NOISE, air.node_id, 10_001, NOW, 10,
                                 [(0x20, 600)])
    assert reason(v.check(env(air.topic, wrong_kind))) == "kind_mismatch"
    # metric: unknown id, another kind's metric, out of range, status metric misplaced
    for pairs, flags in (([(0x1F, 1)], 0), ([(0x60, 3)], 0), ([(0x01, 99999)], 0),
                         ([(0xE0, 5)], 0), ([(0x01, 5)], protocol.FLAG_STATUS)):
        f = protocol.encode(air.key, 1, air.node_id, air.counter + 100, NOW, 10, pairs,
                            flags=flags)
        air.counter += 100
        assert reason(v.check(env(air.topic, f))) == "metric"
    ring.revoke(air.node_id)
    assert reason(v.check(env(air.topic, air.frame(NOW)))) == "revoked"


def test_reordering_inside_the_window_is_accepted_and_old_counters_refused():
    fleet, ring, v = setup()
    node = node_of(fleet, "crowd")
    frames = [node.frame(NOW + i) for i in range(100)]  # counters 1..100
    for i in (5, 3, 4, 0, 90, 27):  # 28 is 63 below the highest (91): still inside
        assert isinstance(v.check(env(node.topic, frames[i])), Reading), i
    assert reason(v.check(env(node.topic, frames[26]))) == "too_old"  # 64 below
    assert reason(v.check(env(node.topic, frames[27]))) == "replay"


def test_unsynced_time_is_replaced_by_receive_time():
    fleet, ring, v = setup()
    node = node_of(fleet, "noise")
    f = node.encode(node.values(NOW), 1234, 10, flags=protocol.FLAG_TIME_UNSYNCED)
    r = v.check(env(node.topic, f, received=NOW + 3.7))
    assert isinstance(r, Reading) and r.time_s == NOW + 3 and r.time_estimated


def test_restore_forgets_window_moves_that_never_became_durable():
    fleet, ring, v = setup()
    node = node_of(fleet, "air")
    f = node.frame(NOW)
    durable = {k: protocol.ReplayWindow(w.highest, w.seen) for k, w in v.windows.items()}
    assert isinstance(v.check(env(node.topic, f)), Reading)
    v.restore(durable)  # the commit failed: the broker will redeliver f
    assert isinstance(v.check(env(node.topic, f)), Reading)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=260), topic=st.text(max_size=40))
def test_any_input_is_a_reading_or_a_counted_rejection(payload, topic):
    fleet, ring, v = setup()
    result = v.check(env(topic, payload))
    assert isinstance(result, Rejected) and result.reason in REASONS


# -- the fast path (Verifier._fast) against the reference path ------------------------------

_FLEET = SimFleet(seed=11, status_every=2)
_RING = _FLEET.keyring()
_FRAMES = [tf for r in range(4) for tf in _FLEET.tick(NOW + 10 * r)]


class _Reference(Verifier):
    def _fast(self, env):  # every frame through the reference path
        return None


def _resigned(frame: bytes, body: bytes, count: int) -> bytes:
    """`frame`'s header with another metric section and count, correctly signed: frames
    only a node's own key could make, to reach every structural check behind the tag."""
    key = _RING.get(int.from_bytes(frame[4:8], "big")).keys[frame[3]]
    signed = frame[:protocol.HEADER_LEN - 1] + bytes([count]) + body
    return signed + protocol.tag_of(key, signed)


class _PythonTables(dict):  # the fast path without the compiled decoder
    def __missing__(self, key):
        value = self[key] = (verify_module._ALLOWED[key], None)
        return value


def _compiled_wanted() -> bool:
    """The C module is there when this machine can build it (setup.py: a compiler and
    libcrypto's headers), and then it must be in use: a stale or refused build is a
    failure here, not a quiet fall back to Python."""
    built = list((Path(verify_module.__file__).parent).glob("_speedups*.so"))
    return bool(built) and not os.environ.get("DORDT_PURE_PYTHON")


def test_the_compiled_path_is_in_use_where_it_was_built():
    if not _compiled_wanted():
        pytest.skip("gateway._speedups was not built here: the python cases run")
    assert verify_module.SPEEDUPS_PROBLEM is None
    assert verify_module._verify_c is not None


@pytest.mark.parametrize("path", ["compiled", "compiled_metrics", "python"])
def test_the_fast_path_agrees_with_the_reference_path_frame_for_frame(path, monkeypatch):
    """compiled: the whole good-frame path in C (_speedups.verify), then Python's fast path
    for what it declines; compiled_metrics: Python's fast path with the C metric decoder;
    python: Python's fast path alone."""
    if path != "python" and verify_module._speedups is None:
        pytest.skip("gateway._speedups was not built (no C compiler): the python case runs")
    if path != "compiled":
        monkeypatch.setattr(verify_module, "_verify_c", None)
    if path == "python":
        monkeypatch.setattr(verify_module, "_TABLES", _PythonTables())
    _fast_agrees_with_reference()


# ~100 draws an example: on a loaded machine drawing alone can trip the too_slow check
@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def _fast_agrees_with_reference(data):
    fast = Verifier(_RING, clock=lambda: NOW + 0.5)
    ref = _Reference(_RING, clock=lambda: NOW + 0.5)
    previous = _FRAMES[0]
    sent = []
    for topic, frame in _FRAMES:
        how = data.draw(st.integers(0, 9))
        if how == 1:  # one bit flipped
            bit = data.draw(st.integers(0, 8 * len(frame) - 1))
            frame = bytearray(frame)
            frame[bit // 8] ^= 1 << (bit % 8)
            frame = bytes(frame)
        elif how == 2:  # cut short
            frame = frame[:data.draw(st.integers(0, len(frame) - 1))]
        elif how == 3:  # sent again
            topic, frame = previous
        elif how == 7 and sent:  # an earlier one, late: reordered, replayed or too old
            topic, frame = data.draw(st.sampled_from(sent))
        elif how == 4:  # on another node's topic
            topic = data.draw(st.sampled_from(_FRAMES))[0]
        elif how == 5:  # any metric section, signed with the node's key
            body = data.draw(st.binary(min_size=0, max_size=40))
            frame = _resigned(frame, body, data.draw(st.integers(0, 60)))
        elif how == 6:  # one value as a non-minimal or over-long varint, signed
            n = frame[protocol.HEADER_LEN - 1]
            body = frame[protocol.HEADER_LEN:-protocol.TAG_LEN]
            which = data.draw(st.integers(0, n - 1))
            pos = 0
            for _ in range(which + 1):  # to the end of that metric's varint
                pos += 1
                while body[pos] & 0x80:
                    pos += 1
                pos += 1
            longer = data.draw(st.sampled_from([b"\x00", b"\x80\x00", b"\x80\x80\x80\x00",
                                                b"\x80\x80\x80\x7f", b"\x01"]))
            body = body[:pos - 1] + bytes([body[pos - 1] | 0x80]) + longer + body[pos:]
            frame = _resigned(frame, body, n)
        previous = (topic, frame)
        sent.append(previous)
        e = env(topic, frame)
        got = fast.check(e)
        assert got == ref.check(e)
        if isinstance(got, Reading):  # the text made on the way is what formatting makes
            assert line_head(got) == line_head(dataclasses.replace(got, head=None))
    assert {n: (w.highest, w.seen) for n, w in fast.windows.items()} == \
        {n: (w.highest, w.seen) for n, w in ref.windows.items()}
    assert fast.dirty == ref.dirty


# -- the compiled path's edges, each against the reference path ----------------------------
# A node's first frame goes through Python (which prepares the node); these send a good frame
# first so that what follows meets the compiled path when there is one.


def _pair(ring):
    return (Verifier(ring, clock=lambda: NOW + 0.5), _Reference(ring, clock=lambda: NOW + 0.5))


def _both(pair, e):
    got, want = pair[0].check(e), pair[1].check(e)
    assert got == want
    if isinstance(got, Reading) and got.head is not None:  # made on a fast path
        assert got.head == line_head(dataclasses.replace(got, head=None))
    return got


def _compiled(r):
    """True when `r` came by the compiled path (where there is one): it carries the head."""
    return verify_module._verify_c is None or r.head is not None


@pytest.mark.parametrize("received", [NOW + 3.7, NOW + 3, 0, 0.0, None, float("nan")])
def test_unsynced_frames_take_the_receive_time_or_the_clock(received):
    fleet, ring, _ = setup()
    pair = _pair(ring)
    node = node_of(fleet, "noise")
    _both(pair, env(node.topic, node.frame(NOW)))
    f = node.encode(node.values(NOW), 1234, 10, flags=protocol.FLAG_TIME_UNSYNCED)
    if received != received:  # NaN: int() of it raises, on both paths alike
        with pytest.raises(ValueError):
            pair[0].check(env(node.topic, f, received=received))
        return
    r = _both(pair, env(node.topic, f, received=received))
    assert r.time_estimated and r.time_s == (int(received) if received else NOW)
    assert _compiled(r)


def test_a_node_revoked_in_place_is_refused_by_every_path():
    fleet, ring, _ = setup()
    pair = _pair(ring)
    node = node_of(fleet, "air")
    _both(pair, env(node.topic, node.frame(NOW)))
    ring.revoke(node.node_id)
    assert reason(_both(pair, env(node.topic, node.frame(NOW + 10)))) == "revoked"


@pytest.mark.parametrize("zone, site", [("spoorzone", "spz-01"), ("maße", "plein,1 a=b"),
                                        ("zone " + "z" * 600, "s")])
def test_line_heads_for_any_zone_and_site_names(zone, site):
    """ASCII series are copied into the head in C; others (and long ones) are joined."""
    fleet, ring, _ = setup()
    node = node_of(fleet, "air")
    entry = ring.get(node.node_id)
    entry.zone, entry.site = zone, site
    pair = _pair(ring)
    for i in range(3):
        r = _both(pair, env(node.topic, node.frame(NOW + 10 * i)))
        assert isinstance(r, Reading) and r.zone == zone and r.site == site
        assert i == 0 or _compiled(r)
    if verify_module._verify_c is not None:  # and by the compiled function itself
        v = pair[0]
        r = verify_module._verify_c(env(node.topic, node.frame(NOW + 30)), v._nodes, v.windows,
                                    v._topics, v.dirty)
        assert isinstance(r, Reading) and r.head == line_head(dataclasses.replace(r, head=None))


@pytest.mark.parametrize("highest, seen, size", [(5, 1 << 70, 64), (5, 0b101, 8),
                                                 (-1, 0, 64), (2**40, 0, 64), (10, -1, 64)])
def test_unusual_replay_windows_move_alike(highest, seen, size):
    fleet, ring, _ = setup()
    node = node_of(fleet, "crowd")
    frames = [node.frame(NOW + i) for i in range(12)]  # counters 1..12
    pair = _pair(ring)
    _both(pair, env(node.topic, frames[0]))
    for v in pair:
        v.windows[node.node_id] = protocol.ReplayWindow(highest, seen, size)
    for f in frames[1:] + frames[:3]:
        _both(pair, env(node.topic, f))
    a, b = (v.windows[node.node_id] for v in pair)
    assert (a.highest, a.seen) == (b.highest, b.seen)


_VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "frames.json")
                      .read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", ["compiled", "python", "reference"])
def test_every_bad_vector_is_refused_for_its_reason_by_every_path(path, monkeypatch):
    """docs/protocol.md §9: the gateway's three decoders give each bad vector's reason
    (the §2.3 order, 7d before 7c included)."""
    if path != "compiled":
        monkeypatch.setattr(verify_module, "_verify_c", None)
    for v in _VECTORS["bad"]:
        frame = bytes.fromhex(v["frame"])
        node = int.from_bytes(frame[4:8], "big") if len(frame) >= 8 else 0x0D0A0001
        kind = frame[1] if len(frame) > 1 and frame[1] in metrics.KIND_NAMES else 1
        ring = Keyring()  # the node, with the key the vector is checked with
        ring.add(NodeEntry(node, metrics.KIND_NAMES[kind], "z", "s",
                           {frame[3] if len(frame) > 3 else 0: bytes.fromhex(v["key"])}))
        verifier = Verifier(ring, clock=lambda: 1764331200.5)
        if path == "reference":
            verifier._fast = lambda env: None
        got = verifier.check(env(protocol.topic_up("z", node), frame, 1764331200.5))
        assert isinstance(got, Rejected) and got.reason == v["reason"], (v["name"], got)


def test_a_rotated_key_continues_the_nodes_counter_and_exhaustion_needs_a_new_node_id():
    """docs/protocol.md §4 and §6.3: the counter and the replay window belong to the node,
    not to a key.  Under a new key id the node goes on counting; a counter used under the
    old key is still a replay.  After 0xffffffff nothing more is accepted from that node id;
    the node is re-enrolled under a new one."""
    k0, k1, k2 = bytes(range(32)), bytes(range(1, 33)), bytes(range(2, 34))
    node, renewed = 0x00010011, 0x00010021
    ring = Keyring([NodeEntry(node, "air", "spoorzone", "spz-01", {0: k0, 1: k1}),
                    NodeEntry(renewed, "air", "spoorzone", "spz-02", {0: k2})])
    v = Verifier(ring, clock=lambda: NOW + 0.5)
    status = [(metrics.BY_NAME["uptime_s"].id, 1)]

    def frame(key, key_id, counter, node_id=node):
        return env(protocol.topic_up("spoorzone", node_id),
                   protocol.encode(key, 1, node_id, counter, NOW, 0, status, key_id,
                                   protocol.FLAG_STATUS))

    assert isinstance(v.check(frame(k0, 0, 100)), Reading)
    assert reason(v.check(frame(k1, 1, 100))) == "replay"  # the new key is no fresh start
    assert reason(v.check(frame(k1, 1, 0))) == "too_old"
    assert isinstance(v.check(frame(k1, 1, 101)), Reading)
    assert reason(v.check(frame(k0, 1, 102))) == "bad_tag"  # key id 1 means key 1
    assert isinstance(v.check(frame(k1, 1, 0xFFFFFFFF)), Reading)
    assert reason(v.check(frame(k1, 1, 0xFFFFFFFF))) == "replay"  # nothing after the last
    assert isinstance(v.check(frame(k2, 0, 0, renewed)), Reading)  # re-enrolled: a new id
