"""The buffer's filesystem really fills up (a small tmpfs, mounted for the test): the
gateway keeps acknowledging only what is durable, evicts the oldest readings with gap
records instead of wedging, raises the alert, and never crashes."""

from __future__ import annotations

import os
import subprocess

import pytest

from gateway.forward.local import LocalStore
from gateway.model import Envelope
from gateway.pipeline import Gateway
from simulators.fleet import SimFleet

T0 = 1_790_000_000


@pytest.fixture
def small_fs(tmp_path):
    if os.geteuid() != 0:  # CI runs as root; test_buffer.py has a variant that needs none
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_really_full_filesystem_evicts_and_keeps_going(small_fs, tmp_path):
    fleet = SimFleet(seed=4, status_every=0)
    gw = Gateway(fleet.keyring(), LocalStore(tmp_path / "store.sqlite"), small_fs / "gw",
                 buffer_max_bytes=None, buffer_max_age_s=None,
                 buffer_reserve_bytes=1024 * 1024,
                 buffer_wal_pages=64)
    acked = []
    t = T0
    for i in range(600):  # ~16,000 readings, several times what fits, with the store away
        gw.process([Envelope("mqtt", topic, f, t, lambda: acked.append(1))
                    for topic, f in fleet.tick(t)])
        t += 10
        if i % 20 == 0:
            gw.housekeeping()
        if i == 300:  # something else fills the disk to the last byte
            with open(small_fs / "other.bin", "wb") as f, pytest.raises(OSError):
                while True:
                    f.write(bytes(65536))
                    f.flush()
    assert len(acked) == 600 * 27  # every group committed and acknowledged
    counters = gw.outbox.counters()
    assert counters["evicted.disk_full"] > 0 and "disk_full" in gw.alerts
    kept = gw.outbox.depth()
    assert kept + counters["evicted.disk_full"] == 600 * 27
    gaps = [p for _, p in gw.outbox.peek_points(10_000) if p.measurement == "gap"]
    assert sum(p.fields["readings"] for p in gaps) == counters["evicted.disk_full"]
    newest = max(r.time_s for _, r in gw.outbox.peek(100_000))
    assert newest == t - 10  # the newest readings are the ones kept
    gw.stop(0)


def test_a_disk_filled_by_something_else_costs_no_buffered_reading(small_fs, tmp_path):
    # Found by bench/soak.py: another file filled the buffer's disk for a moment while the
    # store was up; the gateway evicted every buffered reading (13,486 in one soak) trying
    # to restore a reserve that evicting could never restore.
    fleet = SimFleet(seed=5, status_every=0)
    gw = Gateway(fleet.keyring(), LocalStore(tmp_path / "store.sqlite"), small_fs / "gw",
                 buffer_max_bytes=None, buffer_max_age_s=None,
                 buffer_reserve_bytes=1024 * 1024, buffer_wal_pages=64)
    acked = []
    t = T0
    for _ in range(20):  # a few hundred readings buffered (the forwarder is not started)
        gw.process([Envelope("mqtt", topic, f, t, lambda: acked.append(1))
                    for topic, f in fleet.tick(t)])
        t += 10
    with open(small_fs / "other.bin", "wb", buffering=0) as f, pytest.raises(OSError):
        while True:
            f.write(bytes(4096))
    assert gw.outbox.room_bytes() < 1024 * 1024  # the reserve is gone
    gw.housekeeping()  # and the outbox could not give it back: nothing is evicted
    for _ in range(5):  # and readings keep coming: the ballast's room takes them
        gw.process([Envelope("mqtt", topic, f, t, lambda: acked.append(1))
                    for topic, f in fleet.tick(t)])
        t += 10
    assert len(acked) == 25 * 27
    assert gw.outbox.counters().get("evicted.disk_full", 0) == 0
    assert gw.outbox.depth() == 25 * 27
    gw.stop(0)
