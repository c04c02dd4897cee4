"""LocalStore: the embedded SQLite store — upserts, queries, and how faults surface."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gateway.forward import PermanentStoreError, RetryableStoreError, open_store
from gateway.forward.influx import InfluxStore
from gateway.forward.local import LocalStore
from gateway.model import Reading

T0 = 1_700_000_000


def air(node: str, t: int, zone: str = "spoorzone", **fields: float) -> Reading:
    return Reading(
        node=node, kind="air", zone=zone, site="s1", counter=t - T0, time_s=t, window_s=10,
        fields=fields or {"temperature_c": 21.5, "pm25_ugm3": 12.3},
    )  # fmt: skip


def crowd(node: str, t: int, count: float, zone: str = "maasterras") -> Reading:
    return Reading(
        node=node, kind="crowd", zone=zone, site="m2", counter=t - T0, time_s=t, window_s=60,
        fields={"crowd_count": count, "rssi_bin_0": 1.0},
    )  # fmt: skip


def status(node: str, t: int, kind: str = "air", zone: str = "spoorzone") -> Reading:
    return Reading(
        node=node, kind=kind, zone=zone, site="s1", counter=t - T0, time_s=t, window_s=0,
        fields={"uptime_s": 3600.0, "free_heap_bytes": 81234.0}, status=True,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path):
    s = LocalStore(tmp_path / "store.sqlite")
    yield s
    s.close()


def test_writing_the_same_readings_twice_leaves_one_point_each(store: LocalStore):
    batch = [air("0a000001", T0), air("0a000001", T0 + 10), crowd("0c000001", T0, 7.0)]
    store.write(batch)
    store.write(batch)
    assert store.count_by(("node",)) == {("0a000001",): 2, ("0c000001",): 1}
    assert store.points("air", "pm25_ugm3") == [
        ("0a000001", T0, 12.3),
        ("0a000001", T0 + 10, 12.3),
    ]
    # a re-sent reading with a corrected value overwrites, as InfluxDB does for a series+time
    store.write([crowd("0c000001", T0, 9.0)])
    assert store.points("crowd", "crowd_count") == [("0c000001", T0, 9.0)]


def test_a_batch_is_stored_whole_or_not_at_all(store: LocalStore):
    bad = air("0a000002", T0 + 10, temperature_c=float("nan"))
    with pytest.raises(PermanentStoreError, match=r"0a000002.*temperature_c=nan"):
        store.write([air("0a000001", T0), bad])
    assert store.count_by(("node",)) == {}


def test_count_by_counts_readings_not_fields(store: LocalStore):
    store.write([
        air("0a000001", T0), air("0a000001", T0 + 10), air("0a000002", T0, zone="maasterras"),
        crowd("0c000001", T0, 3.0), crowd("0c000001", T0 + 60, 4.0),
        status("0a000001", T0 + 5),
    ])  # fmt: skip
    assert store.count_by(("zone", "kind")) == {
        ("maasterras", "air"): 1,
        ("maasterras", "crowd"): 2,
        ("spoorzone", "air"): 2,
    }
    assert store.count_by(("kind",), status=True) == {("air",): 1}
    with pytest.raises(ValueError, match="count_by keys must be some of"):
        store.count_by(("zone; DROP TABLE points",))


def test_latest_gives_each_nodes_newest_fields_per_measurement(store: LocalStore):
    store.write([
        air("0a000001", T0, temperature_c=20.0, pm25_ugm3=10.0),
        air("0a000001", T0 + 10, temperature_c=21.0),  # a frame without pm25
        air("0a000002", T0, zone="maasterras"),
        crowd("0c000001", T0 + 60, 4.0),
        status("0a000001", T0 + 5),
    ])  # fmt: skip
    rows = store.latest()
    assert [(r["node"], r["measurement"]) for r in rows] == [
        ("0a000001", "air"), ("0a000001", "node_status"), ("0a000002", "air"),
        ("0c000001", "crowd"),
    ]  # fmt: skip
    first = rows[0]
    assert first == {
        "node": "0a000001", "measurement": "air", "kind": "air", "zone": "spoorzone",
        "site": "s1", "time_s": T0 + 10, "fields": {"temperature_c": 21.0, "pm25_ugm3": 10.0},
    }  # fmt: skip
    assert [r["node"] for r in store.latest(zone="maasterras")] == ["0a000002", "0c000001"]
    assert [r["node"] for r in store.latest(zone="maasterras", kind="crowd")] == ["0c000001"]
    assert store.latest(zone="spuiboulevard") == []
    assert [(r["node"], r["measurement"]) for r in store.latest(kind="air")] == [
        ("0a000001", "air"), ("0a000001", "node_status"), ("0a000002", "air"),
    ]  # fmt: skip
    assert [r["measurement"] for r in store.latest(kind="node_status")] == ["node_status"]


def test_points_filter_by_node_and_time(store: LocalStore):
    store.write([crowd("0c000001", T0 + 60 * i, float(i)) for i in range(5)])
    store.write([crowd("0c000002", T0 + 30, 99.0)])
    assert [p.value for p in store.points("crowd", "crowd_count", node="0c000001")] == [
        0.0, 1.0, 2.0, 3.0, 4.0,
    ]  # fmt: skip
    assert store.points("crowd", "crowd_count", since_s=T0 + 120) == [
        ("0c000001", T0 + 120, 2.0), ("0c000001", T0 + 180, 3.0), ("0c000001", T0 + 240, 4.0),
    ]  # fmt: skip
    assert store.points("crowd", "crowd_count", node="0c000002") == [("0c000002", T0 + 30, 99.0)]
    assert store.points("crowd", "no_such_field") == []


def test_the_file_is_wal_and_readable_by_another_connection(store: LocalStore):
    store.write([air("0a000001", T0)])
    with sqlite3.connect(store.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert other.execute("SELECT COUNT(*) FROM points").fetchone() == (2,)
    reopened = LocalStore(store.path, create=False)
    try:
        assert reopened.count_by(("kind",)) == {("air",): 1}
    finally:
        reopened.close()


def test_one_writer_and_readers_on_other_threads(store: LocalStore):
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                store.count_by(("zone", "kind"))
                store.latest()
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for i in range(50):
            store.write([air(f"0a{n:06x}", T0 + 10 * i) for n in range(10)])
    finally:
        done.set()
        for t in readers:
            t.join()
    assert errors == []
    assert store.count_by(("kind",)) == {("air",): 500}


def test_a_locked_file_is_retryable_and_fails_after_the_busy_timeout(tmp_path: Path):
    store = LocalStore(tmp_path / "store.sqlite", busy_timeout_s=0.2)
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        start = time.monotonic()
        with pytest.raises(RetryableStoreError, match="database is locked") as err:
            store.write([air("0a000001", T0)])
        assert time.monotonic() - start < 2
        assert str(store.path) in str(err.value)
        other.execute("ROLLBACK")
        store.write([air("0a000001", T0)])  # the lock is gone: the same batch now goes in
        assert store.count_by(("node",)) == {("0a000001",): 1}
    finally:
        other.close()
        store.close()


def test_a_full_disk_is_retryable_with_a_clear_message(store: LocalStore):
    store.write([air("0a000001", T0)])
    conn = store._conn()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL, as on a full disk
    big = [air(f"0a{n:06x}", T0 + 10) for n in range(2000)]
    with pytest.raises(RetryableStoreError, match="disk is full; free space") as err:
        store.write(big)
    assert err.value.retry_after_s is None
    assert store.count_by(("kind",)) == {("air",): 1}  # the failed batch left nothing
    conn.execute("PRAGMA max_page_count = 1073741823")
    store.write(big)
    assert store.count_by(("kind",)) == {("air",): 2001}


def test_a_read_only_file_is_retryable(store: LocalStore):
    store.write([air("0a000001", T0)])
    # What SQLite reports for a file it may not write (root ignores chmod, so ask SQLite).
    store._conn().execute("PRAGMA query_only = ON")
    with pytest.raises(RetryableStoreError, match="read-only; check the permissions"):
        store.write([air("0a000001", T0 + 10)])


def test_a_store_that_cannot_be_opened_is_retryable(tmp_path: Path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(RetryableStoreError, match="cannot create the folder of the local store"):
        LocalStore(not_a_folder / "store.sqlite")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not an sqlite file" * 100)
    with pytest.raises(RetryableStoreError, match="not an SQLite database; check the path"):
        LocalStore(garbage)


def test_without_create_a_missing_file_is_an_error_and_nothing_is_made(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no local store here"):
        LocalStore(tmp_path / "typo" / "store.sqlite", create=False)
    assert list(tmp_path.iterdir()) == []


def test_a_closed_store_refuses_writes(tmp_path: Path):
    store = LocalStore(tmp_path / "store.sqlite")
    store.close()
    with pytest.raises(RuntimeError, match="is closed"):
        store.write([air("0a000001", T0)])


def test_open_store_understands_the_documented_forms(tmp_path: Path, monkeypatch):
    for spec in (f"sqlite:{tmp_path}/a.sqlite", f"{tmp_path}/b.db", f"{tmp_path}/c.sqlite"):
        s = open_store(spec)
        try:
            assert isinstance(s, LocalStore)
        finally:
            s.close()
    assert sorted(p.name for p in tmp_path.glob("*.*") if "-" not in p.name) == [
        "a.sqlite", "b.db", "c.sqlite",
    ]  # fmt: skip
    monkeypatch.setenv("DORDT_INFLUX_TOKEN", "env-token")
    s = open_store("http://127.0.0.1:9/", bucket="b1")
    try:
        assert isinstance(s, InfluxStore)
        assert (s.url, s.org, s.bucket, s._token) == (
            "http://127.0.0.1:9",
            "dordt",
            "b1",
            "env-token",
        )
    finally:
        s.close()
    s = open_store("https://twin.example/", token="given", org="o")
    try:
        assert (s.org, s._token) == ("o", "given")
    finally:
        s.close()
    for bad in ("influx://x", "store.txt", "", "mqtt://127.0.0.1:1883"):
        with pytest.raises(
            ValueError, match=r"use sqlite:PATH, a PATH ending in \.sqlite or \.db"
        ):
            open_store(bad)
