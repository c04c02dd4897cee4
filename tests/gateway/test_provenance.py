"""Provenance: signed batches a verifier can re-check in the store, and a hash-chained
audit log; tampering with the store or the log is detected."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest

from gateway.forward.influx import InfluxStore
from gateway.forward.local import LocalStore
from gateway.model import Envelope
from gateway.pipeline import Gateway
from gateway.provenance import (
    AuditLog,
    GatewayIdentity,
    ProvenanceRecord,
    load_public_key,
    make_record,
    read_local,
    read_victoriametrics,
    reading_line,
    verify_batches,
)
from simulators.fleet import SimFleet
from tests.data import PASSTHROUGH


def run_gateway(fleet, store, data_dir, rounds, t0, batch_max=50):
    gw = Gateway(fleet.keyring(), store, data_dir, gateway_id="gw-test",
                 policy_path=PASSTHROUGH)
    gw.forwarder.batch_max = batch_max
    for r in range(rounds):
        gw.process([Envelope("mqtt", t, f, t0) for t, f in fleet.tick(t0 + 10 * r)])
    while gw.forwarder.drain_once():
        pass
    return gw


def test_records_sign_round_trip_and_refuse_changes(tmp_path):
    ident = GatewayIdentity.load_or_create(tmp_path, "gw-a")
    assert (tmp_path / "gateway.key").stat().st_mode & 0o777 == 0o600
    assert "PRIVATE" not in repr(ident)
    fleet = SimFleet(seed=5)
    from gateway.verify import Verifier
    v = Verifier(fleet.keyring())
    readings = [v.check(Envelope("mqtt", t, f, 0)) for t, f in fleet.tick(1_790_000_000)]
    lines = [reading_line(r) for r in readings]
    rec = make_record(ident, 7, lines, min(r.time_s for r in readings),
                      max(r.time_s for r in readings), 3, bytes(range(32)))
    pub = load_public_key(tmp_path / "gateway.pub")
    assert rec.verify(pub)
    back = ProvenanceRecord.from_fields("gw-a", rec.to_point().fields)
    assert back == rec and back.verify(pub)
    forged = ProvenanceRecord(**{**rec.__dict__, "count": rec.count + 1})
    assert not forged.verify(pub)
    # the same key is read back on the next start
    assert GatewayIdentity.load_or_create(tmp_path, "gw-a").public_key.public_bytes_raw() == \
        ident.public_key.public_bytes_raw()


def test_local_store_batches_verify_and_one_changed_value_is_found(tmp_path):
    fleet = SimFleet(seed=5, status_every=3)
    t0 = 1_790_000_000
    gw = run_gateway(fleet, LocalStore(tmp_path / "store.sqlite"), tmp_path / "gw", 4, t0)
    pub = load_public_key(tmp_path / "gw" / "gateway.pub")
    points = read_local(tmp_path / "store.sqlite", t0 - 10, t0 + 100)
    report = verify_batches(points, pub, "gw-test")
    assert report.ok and report.batches_ok == -(-4 * 27 // 50)
    assert gw.audit.verify(pub) == []
    db = sqlite3.connect(tmp_path / "store.sqlite")
    with db:
        db.execute("UPDATE points SET value = value + 0.1 WHERE (measurement, node, time_s,"
                   " field) IN (SELECT measurement, node, time_s, field FROM points"
                   " WHERE field = 'pm25_ugm3' LIMIT 1)")
    db.close()
    report = verify_batches(read_local(tmp_path / "store.sqlite", t0 - 10, t0 + 100), pub,
                            "gw-test")
    assert len(report.problems) == 1 and "differ from what was signed" in report.problems[0]


@pytest.mark.services
def test_victoriametrics_batches_verify_and_tampering_is_found(tmp_path,
                                                             victoriametrics_factory):
    vm = victoriametrics_factory()
    fleet = SimFleet(seed=6, status_every=4)
    t0 = int(time.time()) - 3600
    run_gateway(fleet, InfluxStore(vm.url), tmp_path / "gw", 6, t0, batch_max=40)
    vm.flush()
    pub = load_public_key(tmp_path / "gw" / "gateway.pub")
    report = verify_batches(read_victoriametrics(vm.url, t0 - 10, t0 + 100), pub, "gw-test")
    assert report.ok, report.problems
    assert report.batches_ok == -(-6 * 27 // 40)
    # someone raises one stored value (VictoriaMetrics keeps the larger of two samples
    # with the same timestamp)
    node = fleet.nodes[0]
    line = (f"air,kind=air,node={node.node_id:08x},site={node.placement.site},"
            f"zone={node.placement.zone} temperature_c=99.5 {t0}")
    import urllib.request
    urllib.request.urlopen(urllib.request.Request(
        f"{vm.url}/api/v2/write?precision=s", data=line.encode(), method="POST"), timeout=10)
    vm.flush()
    report = verify_batches(read_victoriametrics(vm.url, t0 - 10, t0 + 100), pub, "gw-test")
    assert len(report.problems) == 1 and "differ from what was signed" in report.problems[0]


def test_a_batch_resent_after_a_crash_keeps_its_number_and_record(tmp_path):
    fleet = SimFleet(seed=8)
    t0 = 1_790_000_000
    store = LocalStore(tmp_path / "store.sqlite")
    gw = Gateway(fleet.keyring(), store, tmp_path / "gw", gateway_id="gw-test")
    gw.process([Envelope("mqtt", t, f, t0) for t, f in fleet.tick(t0)])
    items = gw.outbox.peek_items(100)
    # the forwarder numbered and signed the batch, then the gateway died before the write
    seq, record = gw.outbox.open_batch(
        items[0][0], items[-1][0],
        lambda s: json.dumps(gw.forwarder._record(s, items, None).to_json()))
    again = Gateway(fleet.keyring(), store, tmp_path / "gw", gateway_id="gw-test")
    assert again.forwarder.drain_once() == 27
    assert again.outbox.depth() == 0
    entries = [json.loads(x) for x in (tmp_path / "gw" / "audit.log").read_text().splitlines()]
    assert [e["record"]["seq"] for e in entries] == [seq]
    assert entries[0]["record"] == json.loads(record)


def test_the_audit_log_chain_detects_edits_and_removals(tmp_path):
    fleet = SimFleet(seed=5)
    t0 = 1_790_000_000
    run_gateway(fleet, LocalStore(tmp_path / "s.sqlite"), tmp_path / "gw", 5, t0, 20)
    log = AuditLog(tmp_path / "gw" / "audit.log")
    pub = load_public_key(tmp_path / "gw" / "gateway.pub")
    assert log.verify(pub) == [] and log.last_seq == 7
    lines = log.path.read_text().splitlines()
    edited = json.loads(lines[2])
    edited["record"]["count"] += 1
    log.path.write_text("\n".join([*lines[:2], json.dumps(edited), *lines[3:]]) + "\n")
    problems = log.verify(pub)
    assert any("line 3: its record was changed" in p for p in problems)
    log.path.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    assert any("chain broken" in p for p in AuditLog(log.path).verify(pub))


def test_verify_command(tmp_path):
    fleet = SimFleet(seed=5)
    t0 = 1_790_000_000
    run_gateway(fleet, LocalStore(tmp_path / "store.sqlite"), tmp_path / "gw", 2, t0)
    cmd = [sys.executable, "-m", "dordt.cli", "gateway", "verify", "--store",
           f"sqlite:{tmp_path / 'store.sqlite'}", "--pubkey", str(tmp_path / "gw" / "gateway.pub"),
           "--gateway", "gw-test", "--from", str(t0 - 5), "--to", str(t0 + 30),
           "--audit-log", str(tmp_path / "gw" / "audit.log")]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "2 batches verified" in ok.stdout and "audit log: chain intact" in ok.stdout
    db = sqlite3.connect(tmp_path / "store.sqlite")
    with db:
        db.execute("DELETE FROM points WHERE (measurement, node, time_s, field) IN (SELECT"
                   " measurement, node, time_s, field FROM points WHERE measurement = 'crowd'"
                   " AND field = 'crowd_count' LIMIT 1)")
    db.close()
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "readings differ" in bad.stdout


def test_a_write_failing_while_the_next_batch_is_opened_ahead_loses_and_repeats_nothing(
        tmp_path):
    from gateway.buffer import Outbox
    from gateway.forward import RetryableStoreError
    from gateway.forward.forwarder import Forwarder, Provenance
    from gateway.model import Reading
    from gateway.provenance import AuditLog

    t0 = 1_790_000_000
    box = Outbox(tmp_path / "outbox.sqlite")
    box.commit([Reading(f"0a{i % 7:06x}", "air", "spoorzone", "spz-01", i, t0 + i, 10,
                        {"temperature_c": 10 + i / 100}) for i in range(1, 12_001)], {})
    store = LocalStore(tmp_path / "store.sqlite")
    writes = []
    real_write = store.write_lines

    def flaky(lines):  # the second request fails, the third after it succeeds
        writes.append(len(lines))
        if len(writes) == 2:
            raise RetryableStoreError("the store went away")
        real_write(lines)

    store.write_lines = flaky
    ident = GatewayIdentity.load_or_create(tmp_path, "gw-test")
    fwd = Forwarder(box, store, batch_max=5000,
                    provenance=Provenance(ident, AuditLog(tmp_path / "audit.log")))
    assert fwd.drain_once() == 5000  # batch 1 sent, batch 2 opened ahead
    with pytest.raises(RetryableStoreError):
        fwd.drain_once()  # batch 2 fails; batch 3 was opened ahead meanwhile
    assert box.open_batches() == [2, 3]
    # the gateway restarts: the open batches go first, in order, then nothing is left
    again = Forwarder(box, store, batch_max=5000,
                      provenance=Provenance(ident, AuditLog(tmp_path / "audit.log")))
    assert [again.drain_once() for _ in range(3)] == [5000, 2000, 0]
    assert box.depth() == 0 and box.counters()["forwarded"] == 12_000
    points = read_local(tmp_path / "store.sqlite", t0, t0 + 13_000)
    report = verify_batches(points, load_public_key(tmp_path / "gateway.pub"), "gw-test")
    assert report.ok and report.batches_ok == 3, report.problems
    seqs = [json.loads(x)["record"]["seq"]
            for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert seqs == [1, 2, 3]


def _backlog(tmp_path, n, t0=1_790_000_000):
    from gateway.buffer import Outbox
    from gateway.model import Reading

    box = Outbox(tmp_path / "outbox.sqlite")
    box.commit([Reading(f"0a{i % 7:06x}", "air", "spoorzone", "spz-01", i, t0 + i, 10,
                        {"temperature_c": 10 + i / 100}) for i in range(1, n + 1)], {})
    return box


def _check_drained(tmp_path, box, n, seqs, t0=1_790_000_000):
    assert box.depth() == 0 and box.counters()["forwarded"] == n
    points = read_local(tmp_path / "store.sqlite", t0, t0 + n + 1)
    assert len([p for p in points if p.measurement == "air"]) == n  # each once
    report = verify_batches(points, load_public_key(tmp_path / "gateway.pub"), "gw-test")
    assert report.ok and report.batches_ok == len(seqs), report.problems
    assert [json.loads(x)["record"]["seq"]
            for x in (tmp_path / "audit.log").read_text().splitlines()] == seqs


def _forwarder(tmp_path, box, store):
    from gateway.forward.forwarder import Forwarder, Provenance

    ident = GatewayIdentity.load_or_create(tmp_path, "gw-test")
    return Forwarder(box, store, batch_max=1000,
                     provenance=Provenance(ident, AuditLog(tmp_path / "audit.log")))


def test_a_backlog_leaves_in_batches_back_to_back_in_order(tmp_path):
    """drain(): the next batch's write starts as soon as the store has one, before that one
    is closed; the writes do not overlap each other and the audit log keeps their order."""
    box = _backlog(tmp_path, 7_500)
    store = LocalStore(tmp_path / "store.sqlite")
    active, most, real_write = [0], [0], store.write_lines

    def counting(lines):
        active[0] += 1
        most[0] = max(most[0], active[0])
        time.sleep(0.01)
        real_write(lines)
        active[0] -= 1

    store.write_lines = counting
    fwd = _forwarder(tmp_path, box, store)
    assert fwd.drain(max_batches=5) == 5000  # five batches in one call
    assert box.open_batches() == [6]  # the sixth opened ahead, not sent
    assert fwd.drain(max_batches=5) == 2500 and fwd.drain() == 0
    assert most[0] == 1
    _check_drained(tmp_path, box, 7_500, list(range(1, 9)))


def test_a_write_failing_in_a_run_of_batches_loses_and_repeats_nothing(tmp_path):
    from gateway.forward import RetryableStoreError

    box = _backlog(tmp_path, 6_000)
    store = LocalStore(tmp_path / "store.sqlite")
    writes, real_write = [], store.write_lines

    def flaky(lines):  # the third request fails
        writes.append(len(lines))
        if len(writes) == 3:
            raise RetryableStoreError("the store went away")
        real_write(lines)

    store.write_lines = flaky
    fwd = _forwarder(tmp_path, box, store)
    with pytest.raises(RetryableStoreError):
        fwd.drain(max_batches=10)
    assert box.depth() == 4000 and box.open_batches() == [3, 4]
    while fwd.drain():  # the same forwarder goes on: batch 3 first, then 4, ...
        pass
    _check_drained(tmp_path, box, 6_000, [1, 2, 3, 4, 5, 6])


def test_closing_a_batch_failing_while_the_next_is_written_loses_nothing(tmp_path):
    box = _backlog(tmp_path, 3_000)
    store = LocalStore(tmp_path / "store.sqlite")
    fwd = _forwarder(tmp_path, box, store)
    real_close, calls = box.close_batch, []

    def failing_close(seq, first_id, last_id):
        calls.append(seq)
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real_close(seq, first_id, last_id)

    box.close_batch = failing_close
    with pytest.raises(sqlite3.OperationalError):
        fwd.drain(max_batches=10)  # batch 1 is in the store; batch 2's write had started
    assert box.open_batches() == [1, 2]
    while fwd.drain():  # sent again, the same batches: the store and the log keep one each
        pass
    _check_drained(tmp_path, box, 3_000, [1, 2, 3])
