"""Each fault type against the real gateway pipeline (verify → anonymise → buffer →
forward → local store), fed envelope by envelope: the gateway's reaction is the one
docs/simulators.md promises (rejected and counted with the reason, or stored with a gap).
Outages need a broker and are in test_replay.py.

The gateway runs with a pass-through privacy policy, so what it stores is what verification
let through, value for value (the shipped policy's effect on crowd readings is the
gateway's tests' business, docs/privacy.md).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest

from firmware import metrics, protocol
from gateway.forward.local import LocalStore
from gateway.model import Envelope
from gateway.pipeline import Gateway
from simulators.faults import FAULTS, FaultError, FaultPipeline, fault_bit, parse_fault
from simulators.framegen import FrameGenerator
from simulators.zonemodel import local_to_utc
from tests.data import PASSTHROUGH

START = local_to_utc(dt.date(2026, 3, 11), 11)
FIRST = START + 60  # the first window ends a minute in; fault times count from there
DATA_FIELDS = set(metrics.BY_NAME)


@pytest.fixture(scope="module")
def fleet():
    gen = FrameGenerator(seed=21, cadence_s=60, status_every=10)
    return gen, gen.keyring(), list(gen.messages(START, START + 1800))


def readings(messages, keyring):
    """(measurement, node, time) -> {field: value} for every frame a gateway could accept
    on its own merits (tag, topic), before replay rules."""
    out = {}
    for msg in messages:
        if msg.is_control:
            continue
        try:
            frame = protocol.decode(msg.payload)
            entry = keyring.get(frame.node_id)
            if entry is None or not protocol.verify(frame, entry.keys[frame.key_id]):
                continue
        except (protocol.FrameError, KeyError):
            continue
        if protocol.parse_topic_up(msg.topic)[1] != frame.node_id:
            continue
        measurement = "node_status" if frame.is_status else entry.kind
        out[(measurement, protocol.node_name(frame.node_id), frame.timestamp)] = {
            metrics.BY_ID[i].name: metrics.BY_ID[i].to_value(raw) for i, raw in frame.metrics}
    return out


def spec_outcomes(messages):
    """What §6.2's replay window says of each well-formed frame, in arrival order."""
    windows: dict[int, protocol.ReplayWindow] = {}
    outcome = Counter()
    for msg in messages:
        try:
            frame = protocol.decode(msg.payload)
        except protocol.FrameError:
            continue
        window = windows.setdefault(frame.node_id, protocol.ReplayWindow())
        verdict = window.check(frame.counter)
        if verdict is None:
            window.accept(frame.counter)
        outcome[verdict or "accepted"] += 1
    return outcome


def pass_through_policy(tmp_path):
    """A privacy policy that releases every value as sent: these tests are about what
    verification does; docs/privacy.md and the gateway's tests cover the policy."""
    return PASSTHROUGH



def through_gateway(messages, keyring, tmp_path, group=100):
    """Feed the frames to a gateway as MQTT envelopes; drain to a local store."""
    store_path = tmp_path / "store.sqlite"
    gateway = Gateway(keyring, LocalStore(store_path), tmp_path / "gw",
                      policy_path=pass_through_policy(tmp_path))
    envelopes = [Envelope("mqtt", m.topic, m.payload, m.t_ms / 1000) for m in messages
                 if not m.is_control]
    for i in range(0, len(envelopes), group):
        gateway.process(envelopes[i:i + group])
    while gateway.forwarder.drain_once():
        pass
    windows = {n: w.highest for n, w in gateway.verifier.windows.items()}
    gateway.stop(drain_timeout_s=0)
    store = LocalStore(store_path, create=False)
    try:
        rows = store._conn().execute(
            "SELECT measurement, node, time_s, field, value FROM points").fetchall()
    finally:
        store.close()
    stored: dict = {}
    for measurement, node, time_s, name, value in rows:
        if name in DATA_FIELDS:  # the gateway may add fields of its own (batch, suppressed)
            stored.setdefault((measurement, node, time_s), {})[name] = value
    return gateway.stats, stored, windows


def apply(fleet, *specs, seed=1):
    gen, ring, base = fleet
    pipeline = FaultPipeline(specs, seed, ring)
    return pipeline, list(pipeline.apply(base))


def test_without_faults_the_store_holds_every_reading(fleet, tmp_path):
    gen, ring, base = fleet
    stats, stored, _ = through_gateway(base, ring, tmp_path)
    assert stats.accepted == len(base) and not stats.rejected
    assert stored == readings(base, ring)


def test_drop_leaves_gaps_and_no_rejections(fleet, tmp_path):
    pipeline, out = apply(fleet, "drop:p=0.1")
    dropped = pipeline.faults[0].affected
    assert dropped > 30 and len(out) == len(fleet[2]) - dropped
    stats, stored, _ = through_gateway(out, fleet[1], tmp_path)
    assert not stats.rejected and stats.accepted == len(out)
    assert stored == readings(out, fleet[1])
    assert len(readings(fleet[2], fleet[1])) - len(stored) == dropped


def test_duplicates_are_refused_as_replays(fleet, tmp_path):
    pipeline, out = apply(fleet, "duplicate:p=0.1")
    copies = pipeline.faults[0].affected
    stats, stored, _ = through_gateway(out, fleet[1], tmp_path)
    assert copies > 30 and stats.rejected == {"replay": copies}
    assert stored == readings(fleet[2], fleet[1])


def test_reordered_frames_are_all_stored(fleet, tmp_path):
    pipeline, out = apply(fleet, "reorder:p=0.2,depth=3")
    assert pipeline.faults[0].affected > 50 and out != fleet[2]
    stats, stored, _ = through_gateway(out, fleet[1], tmp_path)
    assert not stats.rejected
    assert stored == readings(fleet[2], fleet[1])


def test_delays_are_stored_late_or_refused_as_too_old(fleet, tmp_path):
    _, short = apply(fleet, "delay:p=0.2,delay_s=300")
    stats, stored, _ = through_gateway(short, fleet[1], tmp_path / "short")
    assert not stats.rejected and stored == readings(fleet[2], fleet[1])
    gen, ring, _ = fleet
    hour = list(gen.messages(START, START + 3600))
    # 35 windows late: 70 counters behind, unless the stream ends first
    long = list(FaultPipeline(["delay:p=0.2,delay_s=2100"], 1, ring).apply(hour))
    expected = spec_outcomes(long)
    stats, stored, _ = through_gateway(long, fleet[1], tmp_path / "long")
    assert expected["too_old"] > 5 and stats.rejected == {"too_old": expected["too_old"]}
    assert len(stored) == expected["accepted"]


def test_corrupted_frames_are_refused_and_never_stored(fleet, tmp_path):
    pipeline, out = apply(fleet, "corrupt:p=0.2,bits=3")
    corrupted = pipeline.faults[0].affected
    stats, stored, _ = through_gateway(out, fleet[1], tmp_path)
    assert sum(stats.rejected.values()) == corrupted > 50
    assert set(stats.rejected) <= {"bad_tag", "malformed", "truncated", "version",
                                   "topic_mismatch", "unknown_node", "unknown_key",
                                   "oversized"}
    assert stats.rejected["bad_tag"] > 0
    intact = readings(out, fleet[1])
    assert stored == intact and len(intact) == len(fleet[2]) - corrupted


def test_replay_attacks_are_refused(fleet, tmp_path):
    pipeline, out = apply(fleet, "replay_attack:p=0.05,after_s=600")
    attacks = pipeline.faults[0].affected
    stats, stored, _ = through_gateway(out, fleet[1], tmp_path / "soon")
    assert attacks > 10 and stats.rejected == {"replay": attacks}
    assert stored == readings(fleet[2], fleet[1])
    gen, ring, _ = fleet
    hour = list(gen.messages(START, START + 3600))
    pipeline = FaultPipeline(["replay_attack:p=0.05,after_s=2400"], 1, ring)  # 80 counters
    out = list(pipeline.apply(hour))
    expected = spec_outcomes(out)
    stats, _, _ = through_gateway(out, ring, tmp_path / "late")
    assert expected["too_old"] > 10 and expected["replay"] > 0
    assert stats.rejected == {"too_old": expected["too_old"], "replay": expected["replay"]}
    assert expected["too_old"] + expected["replay"] == pipeline.faults[0].affected


def test_forged_tags_are_refused(fleet, tmp_path):
    pipeline, out = apply(fleet, "forged_tag:p=0.1")
    forged = pipeline.faults[0].affected
    stats, stored, _ = through_gateway(out, fleet[1], tmp_path)
    assert forged > 30 and stats.rejected == {"bad_tag": forged}
    assert len(stored) == len(fleet[2]) - forged


def test_clock_drift_is_stored_at_the_drifted_times(fleet, tmp_path):
    node = protocol.node_name(fleet[0].nodes[0].placement.node_id)
    pipeline, out = apply(fleet, f"clock_drift:ppm=20000,offset_s=5,nodes={node}")
    stats, stored, _ = through_gateway(out, fleet[1], tmp_path)
    assert not stats.rejected and pipeline.faults[0].affected == 33
    times = sorted(t for (m, n, t) in stored if n == node and m != "node_status")
    assert times == [t + round(5 + (t - FIRST) * 0.02) for t in range(FIRST, START + 1801, 60)]
    assert stored == readings(out, fleet[1])


def test_a_stuck_sensor_is_stored_as_a_flat_line(fleet, tmp_path):
    air = [n for n in fleet[0].nodes if n.placement.kind == "air"][:2]
    name = protocol.node_name(air[0].placement.node_id)
    other = protocol.node_name(air[1].placement.node_id)
    _, out = apply(fleet, f"stuck:metric=pm25_ugm3,at_s=300,duration_s=900,nodes={name}")
    stats, stored, _ = through_gateway(out, fleet[1], tmp_path)
    assert not stats.rejected

    def pm25(node, lo, hi):
        return [v["pm25_ugm3"] for (m, n, t), v in sorted(stored.items())
                if n == node and m == "air" and lo <= t - FIRST < hi]

    assert len(set(pm25(name, 300, 1200))) == 1 and len(pm25(name, 300, 1200)) == 15
    assert len(set(pm25(name, 1200, 1800))) > 1 and len(set(pm25(other, 300, 1200))) > 1


def test_spikes_are_outliers_in_range_and_refused_beyond(fleet, tmp_path):
    pipeline, out = apply(fleet, "spike:metric=pm25_ugm3,p=0.2,factor=8")
    spikes = pipeline.faults[0].affected
    stats, stored, _ = through_gateway(out, fleet[1], tmp_path / "in")
    assert spikes > 10 and not stats.rejected
    base = readings(fleet[2], fleet[1])
    high = [k for k, v in stored.items() if "pm25_ugm3" in v
            and v["pm25_ugm3"] > 5 * base[k]["pm25_ugm3"]]
    assert len(high) == spikes
    pipeline, out = apply(fleet, "spike:metric=humidity_pct,p=0.2,factor=2")
    stats, stored, _ = through_gateway(out, fleet[1], tmp_path / "beyond")
    assert stats.rejected == {"metric": pipeline.faults[0].affected}
    assert len(stored) == len(base) - pipeline.faults[0].affected


def test_nan_leaves_the_metric_out_and_sets_its_fault_bit(fleet, tmp_path):
    pipeline, out = apply(fleet, "nan:metric=pm10_ugm3,at_s=0,duration_s=600")
    stats, stored, _ = through_gateway(out, fleet[1], tmp_path)
    assert not stats.rejected and pipeline.faults[0].affected == 9 * 10
    assert fault_bit("pm10_ugm3") == ("air_faults", 1 << 5)
    for (measurement, _, t), fields in stored.items():
        if measurement == "air":
            early = t - FIRST < 600
            assert ("pm10_ugm3" not in fields) == early
            assert fields["air_faults"] == (32.0 if early else 0.0)
            assert "pm25_ugm3" in fields


def test_a_missing_metric_is_a_gap_in_that_field_only(fleet, tmp_path):
    pipeline, out = apply(fleet, "missing:metric=la90_db,at_s=600,duration_s=600")
    stats, stored, _ = through_gateway(out, fleet[1], tmp_path)
    assert not stats.rejected and pipeline.faults[0].affected == 9 * 10
    noise = {k: v for k, v in stored.items() if k[0] == "noise"}
    assert len(noise) == 9 * 30
    gaps = [k for k, v in noise.items() if "la90_db" not in v]
    assert len(gaps) == 90 and all(600 <= t - FIRST < 1200 for _, _, t in gaps)
    assert all(v["noise_faults"] == 0 and "laeq_db" in v for v in noise.values())


def test_a_reboot_is_a_gap_then_a_counter_jump(fleet, tmp_path):
    gen, ring, base = fleet
    nodes = [protocol.node_name(n.placement.node_id) for n in gen.nodes[:2]]
    pipeline, out = apply(fleet, f"reboot:at_s=600,down_s=180,jump=1000,nodes={'+'.join(nodes)}")
    stats, stored, windows = through_gateway(out, ring, tmp_path)
    assert not stats.rejected
    for name in nodes:
        times = sorted(t - FIRST for (m, n, t) in stored if n == name and m != "node_status")
        assert [t for t in times if 600 <= t < 780] == []
        assert times[-1] == 1740 and len(times) == 30 - 3
        assert windows[int(name, 16)] >= 2 * ((START + 1800) // 60) + 1000
    untouched = protocol.node_name(gen.nodes[5].placement.node_id)
    assert sum(1 for (m, n, t) in stored if n == untouched and m != "node_status") == 30


def test_fault_specs_are_checked_and_every_fault_is_listed():
    assert {"drop", "duplicate", "reorder", "delay", "corrupt", "replay_attack", "forged_tag",
            "clock_drift", "stuck", "spike", "nan", "missing", "reboot", "broker_outage",
            "gateway_outage"} == set(FAULTS)
    assert parse_fault("delay:p=0.5,delay_s=12").delay_s == 12.0
    with pytest.raises(FaultError, match="Did you mean 'delay'"):
        parse_fault("dely")
    with pytest.raises(FaultError, match="p must be float"):
        parse_fault("drop:p=lots")
    with pytest.raises(FaultError, match="needs the fleet's keyring"):
        FaultPipeline(["clock_drift"], 1, None)
    with pytest.raises(FaultError, match="not a measurement metric"):
        parse_fault("stuck:metric=uptime_s")


def test_faults_are_seeded(fleet):
    _, a = apply(fleet, "drop:p=0.2", "corrupt:p=0.2", "delay:p=0.2", seed=3)
    _, b = apply(fleet, "drop:p=0.2", "corrupt:p=0.2", "delay:p=0.2", seed=3)
    _, c = apply(fleet, "drop:p=0.2", "corrupt:p=0.2", "delay:p=0.2", seed=4)
    assert a == b and a != c
    assert [m.t_ms for m in a] == sorted(m.t_ms for m in a)
