"""The store misbehaves: 429/503 with Retry-After, and a 72-hour outage (time accelerated).
Backoff is honoured, the buffer keeps its bound with gap records, and nothing else is lost."""

from __future__ import annotations

import time

import pytest

from gateway.forward import RetryableStoreError
from gateway.forward.influx import InfluxStore
from gateway.model import Envelope
from gateway.pipeline import Gateway
from hardware.sites import load_placements
from simulators.fleet import SimFleet
from tests.helpers import wait_until

pytestmark = pytest.mark.services


def stored_count(vm, names="(air|noise|crowd|node_status)"):
    vm.flush()
    return sum(len(s["timestamps"]) for s in vm.export(f'{{__name__=~"{names}_batch"}}'))


def test_429_and_503_with_retry_after_are_honoured_and_nothing_is_lost(tmp_path, fault_proxy):
    proxy, vm = fault_proxy
    fleet = SimFleet(seed=41)
    gw = Gateway(fleet.keyring(), InfluxStore(proxy.url), tmp_path / "gw", gateway_id="gw-ra")
    gw.forwarder.backoff_min_s = 0.01
    proxy.fail_next(1, 429, "1")
    proxy.fail_next(1, 503, "2")
    gw.start()
    try:
        t0 = int(time.time()) - 600
        for r in range(4):
            for topic, f in fleet.tick(t0 + 10 * r):
                gw.queue.put(Envelope("mqtt", topic, f, t0))
        wait_until(lambda: gw.outbox.depth() == 0 and gw.stats.accepted == 108, 20,
                   "the outbox to drain")
    finally:
        gw.stop(0)
    (t429, s429), (t503, s503), (t_ok, s_ok) = proxy.log[:3]
    assert (s429, s503, s_ok) == (429, 503, 204)
    assert t503 - t429 >= 1.0 - 0.05  # waited at least Retry-After: 1
    assert t_ok - t503 >= 2.0 - 0.05  # and Retry-After: 2
    assert stored_count(vm) == 108


def test_a_72_hour_outage_keeps_the_bound_evicts_with_gaps_and_drains(tmp_path, fault_proxy):
    proxy, vm = fault_proxy
    zone = [p for p in load_placements() if p.zone == "maasterras"]  # 9 nodes
    fleet = SimFleet(zone, seed=42, status_every=0)
    bound = 8 * 1024 * 1024
    now = int(time.time())
    t_start = now - 72 * 3600
    gw = Gateway(fleet.keyring(), InfluxStore(proxy.url, timeout_s=2), tmp_path / "gw",
                 gateway_id="gw-72h", buffer_max_bytes=bound, buffer_max_age_s=None)
    proxy.down = True
    total = 0
    peak = 0
    # 72 h of 10-s readings from 9 nodes, an hour at a time, while the store is down
    for hour in range(72):
        for minutes in range(0, 60, 10):  # groups as the ingest makes them under load
            group = []
            for step in range(60):
                t = t_start + hour * 3600 + minutes * 60 + step * 10
                group += [Envelope("mqtt", topic, f, t) for topic, f in fleet.tick(t)]
            gw.process(group)
            total += len(group)
        gw.outbox.enforce_bounds()
        peak = max(peak, gw.outbox.used_bytes())
        if hour % 12 == 0:  # the forwarder keeps trying, and keeps failing
            with pytest.raises(RetryableStoreError):
                gw.forwarder.drain_once()
    assert peak <= bound
    evicted = gw.outbox.counters()["evicted.bytes"]
    assert 0 < evicted < total
    proxy.down = False  # the store is back
    while gw.forwarder.drain_once():
        pass
    assert gw.outbox.depth() == 0 and gw.outbox.peek_points(1) == []
    stored = stored_count(vm)
    gaps = vm.export('{__name__="gap_readings"}')
    gap_total = sum(sum(s["values"]) for s in gaps)
    assert stored + gap_total == total  # every reading is either in the store or in a gap
    assert stored == total - evicted
    # the gaps name the nodes and the time the twin is missing
    assert {s["metric"]["node"] for s in gaps} == {f"{n.node_id:08x}" for n in fleet.nodes}
    # the oldest readings went first, except the batch that was being sent when the store
    # went away: its signed record counts it, so it is kept whole
    first = vm.export('{__name__="gap_first_s"}')
    last = vm.export('{__name__="gap_last_s"}')
    assert t_start < min(min(s["values"]) for s in first)
    assert max(max(s["values"]) for s in last) < now - 3600  # the newest hours stay
    print(f"72 h: {total} readings, {evicted} evicted into gap records, peak buffer "
          f"{peak / 1e6:.1f} MB of {bound / 1e6:.1f} MB, {stored} stored after the outage")
    gw.stop(0)
