"""Buffer: verified readings → a durable SQLite outbox, until the store has them.

In:  batches of Readings, with the replay windows and rejection counts they moved.
Out: the oldest readings first, for the forwarder; deleted once the store has them.
On failure: commit() raises and nothing of the batch is kept, so the caller does not
ack it and the broker redelivers.

Durability: WAL journal with synchronous=FULL.  The gateway acks the broker only after
commit() returns, so a power cut must not lose a committed transaction; FULL fsyncs the
WAL at each commit (NORMAL could drop the last ones).  The cost is paid once per group
commit, not per reading, which keeps SD cards alive.  Readings, replay windows and
rejection counters change in one transaction, so after a crash they agree.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from firmware.protocol import ReplayWindow
from gateway.model import Reading

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL, kind TEXT NOT NULL, zone TEXT NOT NULL, site TEXT NOT NULL,
    counter INTEGER NOT NULL, time_s INTEGER NOT NULL, window_s INTEGER NOT NULL,
    status INTEGER NOT NULL, estimated INTEGER NOT NULL, fields TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS replay_window (
    node_id INTEGER PRIMARY KEY, highest INTEGER NOT NULL, seen BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batch (
    seq INTEGER PRIMARY KEY, first_id INTEGER NOT NULL, last_id INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY, reading TEXT NOT NULL, error TEXT NOT NULL, at_s REAL NOT NULL
);
"""


_ADD_COUNTER = (
    "INSERT INTO counters VALUES (?, ?)"
    " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"
)


class Outbox:
    """One writer (the pipeline) and one reader (the forwarder) share it; a lock keeps
    their statements apart on the single connection."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writer -------------------------------------------------------------------------

    def commit(
        self,
        readings: Iterable[Reading],
        windows: dict[int, ReplayWindow],
        counts: Counter | None = None,
    ) -> None:
        rows = [
            (
                r.node, r.kind, r.zone, r.site, r.counter, r.time_s, r.window_s,
                int(r.status), int(r.time_estimated),
                json.dumps(r.fields, separators=(",", ":")),
            )
            for r in readings
        ]
        with self._lock, self._transaction() as db:
            db.executemany(
                "INSERT INTO outbox (node, kind, zone, site, counter, time_s, window_s,"
                " status, estimated, fields) VALUES (?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            db.executemany(
                "INSERT OR REPLACE INTO replay_window VALUES (?,?,?)",
                [(n, w.highest, w.seen.to_bytes(8, "big")) for n, w in windows.items()],
            )
            if counts:
                db.executemany(_ADD_COUNTER, list(counts.items()))

    def load_windows(self) -> dict[int, ReplayWindow]:
        with self._lock:
            rows = self._db.execute("SELECT node_id, highest, seen FROM replay_window").fetchall()
        return {n: ReplayWindow(h, int.from_bytes(s, "big")) for n, h, s in rows}

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT name, value FROM counters").fetchall())

    # -- reader -------------------------------------------------------------------------

    def peek(self, limit: int) -> list[tuple[int, Reading]]:
        """The oldest `limit` readings with their outbox ids."""
        return self._rows("ORDER BY id LIMIT ?", (limit,))

    def _rows(self, where: str, params: tuple) -> list[tuple[int, Reading]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, node, kind, zone, site, counter, time_s, window_s, status,"
                " estimated, fields FROM outbox " + where,
                params,
            ).fetchall()
        return [
            (
                row[0],
                Reading(
                    node=row[1], kind=row[2], zone=row[3], site=row[4], counter=row[5],
                    time_s=row[6], window_s=row[7], fields=json.loads(row[10]),
                    status=bool(row[8]), time_estimated=bool(row[9]),
                ),
            )
            for row in rows
        ]

    # -- batches: a batch is fixed (members and signed record) before it is sent, so a
    # batch re-sent after a crash is the same batch, with the same number and record.

    def open_batch(self, first_id: int, last_id: int, make_record) -> tuple[int, str]:
        """Number the next batch, ask `make_record(seq)` for its record (JSON text) and
        keep both; returns (seq, record)."""
        with self._lock, self._transaction() as db:
            db.execute(_ADD_COUNTER, ("batch.seq", 1))
            seq = db.execute("SELECT value FROM counters WHERE name = 'batch.seq'").fetchone()[0]
            record = make_record(seq)
            db.execute("INSERT INTO batch VALUES (?, ?, ?, ?)", (seq, first_id, last_id, record))
        return seq, record

    def pending_batch(self) -> tuple[int, str, list[tuple[int, Reading]]] | None:
        """The batch that was opened but not closed (the gateway stopped mid-send)."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq, first_id, last_id, record FROM batch ORDER BY seq LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        seq, first_id, last_id, record = row
        return seq, record, self._rows("WHERE id BETWEEN ? AND ? ORDER BY id",
                                       (first_id, last_id))

    def close_batch(self, seq: int, ids: list[int]) -> None:
        """The store has the batch: drop its readings and the batch, in one transaction."""
        with self._lock, self._transaction() as db:
            self._remove(db, ids, "forwarded")
            db.execute("DELETE FROM batch WHERE seq = ?", (seq,))

    def abandon_batch(self, seq: int) -> None:
        """The store refused the batch for good; its readings stay, to be split."""
        with self._lock, self._transaction() as db:
            db.execute("DELETE FROM batch WHERE seq = ?", (seq,))

    def remove(self, ids: list[int], counter: str = "forwarded") -> None:
        """Drop readings the store now has."""
        with self._lock, self._transaction() as db:
            self._remove(db, ids, counter)

    def quarantine(self, item: tuple[int, Reading], error: str, at_s: float) -> None:
        """Set aside a reading the store refuses for good, so it never blocks the queue."""
        outbox_id, reading = item
        doc = json.dumps({**reading.tags, "time_s": reading.time_s, "fields": reading.fields})
        with self._lock, self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?)",
                       (outbox_id, doc, error, at_s))
            self._remove(db, [outbox_id], "quarantined")

    @staticmethod
    def _remove(db: sqlite3.Connection, ids: list[int], counter: str) -> None:
        db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
        db.execute(_ADD_COUNTER, (counter, len(ids)))

    @contextmanager
    def _transaction(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def depth(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
