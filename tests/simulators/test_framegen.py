"""Frame-level generation: the fast signer and generator give exactly the reference
codec's bytes, deterministically."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import metrics, protocol
from simulators.fleet import SimFleet, stranger
from simulators.framegen import (
    KIND_METRICS,
    FrameGenerator,
    FrameSigner,
    metric_part,
    scaled_placements,
    sim_key,
)
from simulators.zonemodel import local_to_utc

WEDNESDAY_8H = local_to_utc(dt.date(2026, 3, 11), 8)

metric_lists = st.lists(
    st.tuples(st.integers(0, 255), st.integers(protocol.RAW_MIN, protocol.RAW_MAX)),
    min_size=1, max_size=12, unique_by=lambda p: p[0])


@settings(max_examples=400, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), kind=st.integers(1, 255),
       node_id=st.integers(0, protocol.U32_MAX), counter=st.integers(0, protocol.U32_MAX),
       timestamp=st.integers(0, protocol.U32_MAX), window_s=st.integers(0, 0xFFFF),
       pairs=metric_lists, flags=st.integers(0, protocol.FLAGS_KNOWN),
       key_id=st.integers(0, 255))
def test_fast_signer_is_byte_identical_to_the_reference_encoder(
        key, kind, node_id, counter, timestamp, window_s, pairs, flags, key_id):
    expected = protocol.encode(key, kind, node_id, counter, timestamp, window_s, pairs,
                               key_id=key_id, flags=flags)
    fast = FrameSigner(key, key_id).encode(kind, node_id, counter, timestamp, window_s, pairs,
                                           flags)
    assert fast == expected


@settings(max_examples=200, deadline=None)
@given(metric_id=st.integers(0, 255), raw=st.integers(protocol.RAW_MIN, protocol.RAW_MAX))
def test_table_encoded_metric_bytes_match_the_codec(metric_id, raw):
    frame = protocol.encode(bytes(32), 1, 1, 1, 1, 1, [(metric_id, raw)])
    assert metric_part(metric_id, raw) == frame[protocol.HEADER_LEN:-protocol.TAG_LEN]


@settings(max_examples=100, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 255), st.integers(-10, 10)), max_size=60),
       kind=st.integers(-1, 300), counter=st.integers(-1, protocol.U32_MAX + 1))
def test_fast_signer_refuses_what_the_reference_refuses(pairs, kind, counter):
    def outcome(fn):
        try:
            return fn()
        except ValueError:
            return ValueError

    key = bytes(range(32))
    ref = outcome(lambda: protocol.encode(key, kind, 7, counter, 1, 1, pairs))
    fast = outcome(lambda: FrameSigner(key).encode(kind, 7, counter, 1, 1, pairs))
    assert fast == ref


@pytest.fixture(scope="module")
def generator():
    return FrameGenerator(scaled_placements(60), seed=5, cadence_s=10, status_every=6)


def test_generated_frames_are_what_the_reference_encoder_makes_of_their_fields(generator):
    ring = generator.keyring()
    seen_status = 0
    for t in generator.window_ends(WEDNESDAY_8H, WEDNESDAY_8H + 60):
        for k, frame in generator.frames(t):
            node = generator.nodes[k]
            decoded = protocol.open_frame(frame, ring.get(node.placement.node_id).keys[0])
            assert protocol.encode(node.key, decoded.kind, decoded.node_id, decoded.counter,
                                   decoded.timestamp, decoded.window_s, decoded.metrics,
                                   flags=decoded.flags) == frame
            assert decoded.timestamp == t and decoded.window_s == 10
            if decoded.is_status:
                seen_status += 1
                assert decoded.counter == 2 * (t // 10) + 1
                assert decoded.metrics == generator.status_at(node, t)
            else:
                assert decoded.counter == 2 * (t // 10)
                assert decoded.metrics == generator.metrics_at(node, t)
                names = [metrics.BY_ID[i].name for i, _ in decoded.metrics]
                assert tuple(names) == KIND_METRICS[node.placement.kind]
    assert seen_status == 60  # every node once in 6 windows


def test_every_generated_value_is_inside_the_registry_range(generator):
    for t in generator.window_ends(WEDNESDAY_8H - 86400, WEDNESDAY_8H + 86400)[::97]:
        for _, frame in generator.frames(t):
            for metric_id, raw in protocol.decode(frame).metrics:
                m = metrics.BY_ID[metric_id]
                assert m.raw_min <= raw <= m.raw_max, (m.name, raw)


def test_same_seed_same_frames_other_seed_other_frames():
    a = FrameGenerator(seed=9).frames(WEDNESDAY_8H)
    b = FrameGenerator(seed=9).frames(WEDNESDAY_8H)
    c = FrameGenerator(seed=10).frames(WEDNESDAY_8H)
    assert a == b
    assert [f for _, f in a] != [f for _, f in c]


def test_scaled_placements_extend_the_zones_with_unique_derived_ids():
    placements = scaled_placements(300)
    assert len(placements) == 300
    assert len({p.node_id for p in placements}) == 300
    first = scaled_placements(27)
    assert {(p.site, p.kind) for p in first} == {
        (f"{z}-0{i}", k) for z in ("spz", "mst", "spb") for i in (1, 2, 3)
        for k in ("air", "noise", "crowd")}
    for p in placements:
        site_no = int(p.site.rsplit("-", 1)[1])
        assert p.node_id == (p.node_id >> 16) << 16 | site_no << 4 | metrics.KIND_IDS[p.kind]


def test_simfleet_keeps_its_interface_and_signs_with_the_simulation_keys():
    fleet = SimFleet(seed=3, status_every=2)
    node = fleet.nodes[0]
    first, second = node.frame(WEDNESDAY_8H), node.frame(WEDNESDAY_8H + 10)
    a, b = protocol.open_frame(first, node.key), protocol.open_frame(second, node.key)
    assert (a.counter, b.counter) == (1, 2) and not a.is_status and b.is_status
    assert node.key == sim_key(3, node.node_id)
    assert set(node.values(WEDNESDAY_8H)) == set(KIND_METRICS[node.placement.kind])
    assert len(fleet.keyring()) == 27
    topics = [t for t, _ in fleet.tick(WEDNESDAY_8H + 20)]
    assert topics == [n.topic for n in fleet.nodes]
    topic, frame = stranger(3, WEDNESDAY_8H)
    assert protocol.decode(frame).node_id == 0x00FFFF01 and topic.endswith("/00ffff01/up")
