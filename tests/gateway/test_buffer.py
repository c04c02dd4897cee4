"""buffer: bounded by bytes and age; evictions leave gap records the store receives; a
full disk evicts instead of crashing and raises an alert."""

from __future__ import annotations

from gateway.buffer import EVICT_AGE, EVICT_BYTES, Outbox
from gateway.forward.forwarder import Forwarder
from gateway.forward.local import LocalStore
from gateway.model import Envelope, Reading
from gateway.pipeline import Gateway
from simulators.fleet import SimFleet

T0 = 1_790_000_000


def readings(n, node="0a000001", t0=T0):
    return [Reading(node=node, kind="air", zone="spoorzone", site="spz-01", counter=i + 1,
                    time_s=t0 + 10 * i, window_s=10,
                    fields={"temperature_c": 10.0, "humidity_pct": 50.0, "pm25_ugm3": 5.5})
            for i in range(n)]


def test_the_byte_bound_evicts_the_oldest_and_leaves_gap_records(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_bytes=2 * 1024 * 1024)
    for chunk in range(40):
        box.commit(readings(1000, t0=T0 + chunk * 10_000), {})
        box.enforce_bounds()
        assert box.used_bytes() <= 2 * 1024 * 1024
    counters = box.counters()
    kept = box.depth()
    assert counters["evicted.bytes"] == 40_000 - kept > 0
    # what is left is the newest
    assert box.peek(1)[0][1].time_s > T0 + 10_000
    gaps = [p for _, p in box.peek_points(1000)]
    assert gaps and all(p.measurement == "gap" and p.fields["reason"] == EVICT_BYTES
                        for p in gaps)
    assert sum(p.fields["readings"] for p in gaps) == counters["evicted.bytes"]
    assert min(p.fields["first_s"] for p in gaps) == T0


def test_the_age_bound_and_the_gap_reaches_the_store(tmp_path):
    now = [T0 + 10_000]
    box = Outbox(tmp_path / "o.sqlite", max_age_s=3600, clock=lambda: now[0])
    box.commit(readings(1000), {})  # T0 .. T0 + 9990
    assert box.enforce_bounds() == 640  # keeps time_s >= now - 3600: the last 360
    store = LocalStore(tmp_path / "s.sqlite")
    fwd = Forwarder(box, store)
    while fwd.drain_once():
        pass
    assert box.depth() == 0 and box.peek_points(10) == []
    gap = store.points("gap", "readings")
    assert len(gap) == 1 and gap[0].value == 640
    (reason,) = store.points("gap", "reason")
    assert reason.value == EVICT_AGE


def test_a_full_disk_evicts_instead_of_failing_and_raises_an_alert(tmp_path):
    fleet = SimFleet(seed=4, status_every=0)
    gw = Gateway(fleet.keyring(), LocalStore(tmp_path / "s.sqlite"), tmp_path / "gw",
                 buffer_max_bytes=None)
    t = T0
    # fill the outbox while the store is "away": nothing is forwarded
    for _ in range(60):
        gw.process([Envelope("mqtt", topic, f, t) for topic, f in fleet.tick(t)])
        t += 10
    # the filesystem is now full: SQLite may not grow the file any more
    pages = gw.outbox._db.execute("PRAGMA page_count").fetchone()[0]
    gw.outbox._db.execute(f"PRAGMA max_page_count = {pages}")
    acks = []
    for _ in range(40):
        envs = [Envelope("mqtt", topic, f, t, lambda: acks.append(1))
                for topic, f in fleet.tick(t)]
        gw.process(envs)  # never raises
        t += 10
    assert len(acks) == 40 * 27  # every frame acked: it is durable
    assert "disk_full" in gw.alerts
    assert gw.outbox.counters()["evicted.disk_full"] > 0
    newest = max(r.time_s for _, r in gw.outbox.peek(100_000))
    assert newest == t - 10
