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


def test_an_outbox_of_the_earlier_layout_is_migrated_without_losing_a_reading(tmp_path):
    import json
    import sqlite3

    path = tmp_path / "outbox.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            node TEXT NOT NULL, kind TEXT NOT NULL, zone TEXT NOT NULL, site TEXT NOT NULL,
            counter INTEGER NOT NULL, time_s INTEGER NOT NULL, window_s INTEGER NOT NULL,
            status INTEGER NOT NULL, estimated INTEGER NOT NULL, fields TEXT NOT NULL);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO counters VALUES ('accepted', 3);
    """)
    old = readings(3)
    with db:
        db.executemany(
            "INSERT INTO outbox (node, kind, zone, site, counter, time_s, window_s, status,"
            " estimated, fields) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(r.node, r.kind, r.zone, r.site, r.counter, r.time_s, r.window_s, i == 2, 0,
              json.dumps(r.fields)) for i, r in enumerate(old)])
    db.close()
    box = Outbox(path)
    assert box.depth() == 3 and box.counters() == {"accepted": 3}
    back = [r for _, r in box.peek(10)]
    assert [(r.node, r.time_s, r.fields, r.status) for r in back] == \
        [(r.node, r.time_s, r.fields, i == 2) for i, r in enumerate(old)]
    store = LocalStore(tmp_path / "store.sqlite")
    assert Forwarder(box, store).drain_once() == 3
    assert store.count_by(("zone",)) == {("spoorzone",): 2}
    assert store.count_by(("zone",), status=True) == {("spoorzone",): 1}
    box.close()
    assert Outbox(path).depth() == 0  # opening it again migrates nothing twice


def test_readings_leave_in_batches_of_one_policy_and_each_record_names_its_own(tmp_path):
    import json

    from gateway.forward.forwarder import Provenance
    from gateway.provenance import AuditLog, GatewayIdentity

    box = Outbox(tmp_path / "outbox.sqlite")
    box.note_policy(1, bytes([1]) * 32)
    box.commit(readings(4), {}, policy=1)
    # the gateway restarts with policy 2 while those four are still buffered
    box.note_policy(2, bytes([2]) * 32)
    box.commit(readings(3, t0=T0 + 1000), {}, policy=2)
    try:
        box.note_policy(2, bytes([9]) * 32)
    except ValueError as exc:
        assert "new version" in str(exc)
    else:
        raise AssertionError("a changed policy under an old version number was accepted")
    audit = AuditLog(tmp_path / "audit.log")
    prov = Provenance(GatewayIdentity.load_or_create(tmp_path, "gw"), audit, 2, bytes([2]) * 32)
    fwd = Forwarder(box, LocalStore(tmp_path / "store.sqlite"), provenance=prov)
    assert [fwd.drain_once(), fwd.drain_once(), fwd.drain_once()] == [4, 3, 0]
    records = [json.loads(line)["record"] for line in audit.path.read_text().splitlines()]
    assert [(r["count"], r["policy_version"], r["policy_hash"]) for r in records] == [
        (4, 1, "01" * 32), (3, 2, "02" * 32)]


def test_a_commit_of_any_size_keeps_every_reading_in_order(tmp_path):
    """commit() inserts in statements of a few fixed sizes (_insert_rows): every group size
    around their edges keeps each reading once, in the order given."""
    box = Outbox(tmp_path / "o.sqlite")
    sizes = [0, 1, 3, 4, 5, 63, 64, 65, 239, 240, 241, 500, 997]
    t = T0
    for n in sizes:
        box.commit(readings(n, t0=t), {})
        t += 10 * n
    got = box.peek(sum(sizes) + 1)
    assert [r.time_s for _, r in got] == [T0 + 10 * i for i in range(sum(sizes))]
    ids = [i for i, _ in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
