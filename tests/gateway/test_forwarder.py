"""forward: nothing leaves the outbox before the store has it; outages back off and
recover; a batch the store refuses for good is split and only the bad readings set aside."""

from __future__ import annotations

import random
import time

import pytest

from gateway.buffer import Outbox
from gateway.forward import RetryableStoreError
from gateway.forward.forwarder import Forwarder
from gateway.forward.influx import InfluxStore
from gateway.model import Reading
from tests.gateway.test_store_influx import Answer, stub  # noqa: F401  (fixture)

pytestmark = pytest.mark.services


def readings(n, t0, node="0a000001"):
    return [Reading(node=node, kind="air", zone="spoorzone", site="spz-01", counter=i + 1,
                    time_s=t0 + 10 * i, window_s=10, fields={"temperature_c": 10 + i / 100})
            for i in range(n)]


def test_store_outage_keeps_everything_then_drains_in_order(tmp_path, victoriametrics_factory):
    vm = victoriametrics_factory()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    t0 = int(time.time()) - 200_000  # 12,000 readings 10 s apart end in the past
    outbox.commit(readings(12_000, t0), {})
    fwd = Forwarder(outbox, InfluxStore(vm.url, timeout_s=2), batch_max=5000)
    vm.stop()
    with pytest.raises(RetryableStoreError):
        fwd.drain_once()
    assert outbox.depth() == 12_000
    vm.start()
    sent = [fwd.drain_once() for _ in range(4)]
    assert sent == [5000, 5000, 2000, 0]
    (series,) = vm.export('{__name__="air_temperature_c"}')
    assert len(series["timestamps"]) == 12_000
    assert series["timestamps"][0] == t0 * 1000 and series["values"][-1] == pytest.approx(129.99)
    assert outbox.counters()["forwarded"] == 12_000


def test_a_refused_batch_is_split_and_only_the_bad_reading_quarantined(tmp_path, stub):  # noqa: F811
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.commit(readings(8, 1_700_000_000), {})
    fwd = Forwarder(outbox, InfluxStore(stub.url))
    orig_write = fwd.store.write_lines

    def write_lines(lines):  # the store refuses any body holding the sixth reading
        bad = any("temperature_c=10.05 " in line for line in lines)
        stub.answer = Answer(status=400, body=b'{"message":"unable to parse"}') if bad \
            else Answer(status=204)
        return orig_write(lines)

    fwd.store.write_lines = write_lines
    assert fwd.drain_once() == 8
    taken = [r["body"] for r in stub.requests if "10.05 " not in r["body"]]
    stored = [line for body in taken for line in body.splitlines()]
    assert len(stored) == 7
    assert outbox.depth() == 0
    assert outbox.counters() == {"forwarded": 7, "quarantined": 1}


def test_a_non_finite_value_is_quarantined_at_commit_and_never_sent(tmp_path, stub):  # noqa: F811
    outbox = Outbox(tmp_path / "outbox.sqlite")
    rs = readings(8, 1_700_000_000)
    rs[5] = Reading(**{**{f: getattr(rs[5], f) for f in Reading.__slots__},
                       "fields": {"temperature_c": float("nan")}})
    outbox.commit(rs, {})
    assert outbox.depth() == 7 and outbox.counters() == {"quarantined": 1}
    fwd = Forwarder(outbox, InfluxStore(stub.url))
    assert fwd.drain_once() == 7
    [req] = stub.requests
    assert len(req["body"].splitlines()) == 7 and "nan" not in req["body"]


def test_413_splits_until_the_store_takes_the_batches(tmp_path, stub):  # noqa: F811
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.commit(readings(100, 1_700_000_000), {})
    fwd = Forwarder(outbox, InfluxStore(stub.url), batch_max=100)
    answers = [Answer(status=413)] * 3  # the first three bodies are too large
    orig_write = fwd.store.write_lines

    def write_lines(lines):
        stub.answer = answers.pop(0) if answers else Answer(status=204)
        return orig_write(lines)

    fwd.store.write_lines = write_lines
    assert fwd.drain_once() == 100
    assert outbox.depth() == 0 and outbox.counters() == {"forwarded": 100}
    sizes = [len(r["body"].splitlines()) for r in stub.requests]
    assert sizes[:3] == [100, 50, 25] and sum(sizes[3:]) == 100


def test_backoff_grows_with_jitter_and_honours_retry_after(tmp_path):
    fwd = Forwarder(Outbox(tmp_path / "o.sqlite"), store=None, backoff_min_s=0.2,
                    backoff_max_s=60, rng=random.Random(1))
    delays = []
    for failures in range(12):
        fwd.failures = failures
        delays.append(fwd.backoff_s(None))
    assert all(0.2 <= d <= min(60, 0.2 * 2 ** f) for f, d in enumerate(delays))
    assert max(delays[8:]) > 10  # it does grow
    fwd.failures = 0
    assert fwd.backoff_s(30.0) >= 30.0
