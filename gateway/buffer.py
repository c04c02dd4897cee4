"""Buffer: verified readings → a durable SQLite outbox, until the store has them.

In:  batches of Readings, with the replay windows and rejection counts they moved.
Out: the oldest readings first, for the forwarder: a batch is a span of outbox ids
(span()), whose sorted canonical lines and whose body SQLite makes (span_lines(),
span_body()); one by one as `Item`s (outbox id, time_s, policy version, line head) where
a batch must be split.  Deleted once the store has them.

Each reading is kept as the line-protocol text the store will get, without its
timestamp (forward.line_head), formatted once on the way in: draining then formats and
parses nothing, which is what lets a backlog of a million readings leave in seconds.
Beside it: the node (for gap records), the time (bounds, batches) and the version of the
privacy policy the reading went through (its provenance record names that policy, even
when the gateway has moved on to another one by the time the reading leaves).
On failure: commit() raises and nothing of the batch is kept, so the caller does not
ack it and the broker redelivers.  Opening an outbox that cannot be used (damaged, on a
read-only disk, written by a newer version) raises `OutboxError` with what to do.

Durability: WAL journal with synchronous=FULL.  The gateway acks the broker only after
commit() returns, so a power cut must not lose a committed transaction; FULL fsyncs the
WAL at each commit (NORMAL could drop the last ones).  The cost is paid once per group
commit, not per reading, which keeps SD cards alive.  Readings, replay windows and
rejection counters change in one transaction, so after a crash they agree.  The one
commit without an fsync of its own is closing a forwarded batch (close_batch says why).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager
from math import isfinite
from pathlib import Path

from firmware.protocol import ReplayWindow
from gateway.forward import line_head, parse_line
from gateway.forward.local import sqlite_advice
from gateway.model import Point, Reading

# (outbox id, time_s, policy version, line head): a buffered reading as the forwarder
# sees it; the line to send is f"{head} {time_s}" (plus the batch field)
Item = tuple[int, int, int, str]

# Why readings were evicted, as the gap record's `reason` field says.
EVICT_BYTES, EVICT_AGE, EVICT_DISK_FULL = 1, 2, 3
_EVICT_NAMES = {EVICT_BYTES: "bytes", EVICT_AGE: "age", EVICT_DISK_FULL: "disk_full"}

# PRAGMA user_version of the outbox this code writes: 1 had readings as columns and JSON
# fields (migrated on open), 2 has line heads.  A higher one is refused, never guessed at.
OUTBOX_VERSION = 2


class OutboxError(Exception):
    """The outbox file cannot be opened or used as it is; the message says what to do."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL, time_s INTEGER NOT NULL, policy INTEGER NOT NULL, line TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS policy (version INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS replay_window (
    node_id INTEGER PRIMARY KEY, highest INTEGER NOT NULL, seen BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batch (
    seq INTEGER PRIMARY KEY, first_id INTEGER NOT NULL, last_id INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS extra (
    id INTEGER PRIMARY KEY AUTOINCREMENT, measurement TEXT NOT NULL, tags TEXT NOT NULL,
    fields TEXT NOT NULL, time_s INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY, reading TEXT NOT NULL, error TEXT NOT NULL, at_s REAL NOT NULL
);
"""


def _insert_rows(db: sqlite3.Connection, rows: list[tuple]) -> None:
    """INSERT the outbox rows (node, time_s, policy, line), in order, as multi-row
    statements of fixed sizes: one statement of 240 rows costs SQLite about half of 240
    executions of a one-row statement (the AUTOINCREMENT counter is written once per
    statement, not once per row).  At most 960 parameters a statement, under the 999 of
    an SQLite built before 3.32; the sizes are few, so each statement is compiled once
    (the sqlite3 module's statement cache)."""
    i, n = 0, len(rows)
    for size in _INSERT_SIZES:
        sql = _INSERTS[size]
        while n - i >= size:
            db.execute(sql, [v for row in rows[i:i + size] for v in row])
            i += size


_INSERT_SIZES = (240, 64, 16, 4, 1)
_INSERTS = {size: "INSERT INTO outbox (node, time_s, policy, line) VALUES "
            + ",".join(["(?,?,?,?)"] * size) for size in _INSERT_SIZES}

# one encoder, built once: json.dumps with separators= builds a new one per call
_compact_json = json.JSONEncoder(separators=(",", ":")).encode

_ADD_COUNTER = (
    "INSERT INTO counters VALUES (?, ?)"
    " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"
)


class Outbox:
    """One writer (the pipeline) and one reader (the forwarder) share it; a lock keeps
    their statements apart on the single connection."""

    def __init__(self, path: str | Path, max_bytes: int | None = None,
                 max_age_s: float | None = None, clock=time.time,
                 wal_pages: int = 1000, reserve_bytes: int = 16 * 1024 * 1024):
        """`max_bytes` bounds the database's used pages, `max_age_s` the age of the oldest
        reading; enforce_bounds() evicts the oldest readings beyond either and leaves a gap
        record per node in their place, so the twin knows what is missing.

        A full filesystem must not wedge the gateway: with everything in the WAL and no
        space left, even a DELETE cannot be written.  So the WAL is checkpointed every
        `wal_pages` pages and truncated after each checkpoint, enforce_bounds() keeps
        `reserve_bytes` of room (free disk + free pages) by evicting (when the outbox
        holds at least the shortfall: evicting cannot give back more), and a ballast file
        of half the reserve is kept beside the database to be given up when the disk fills
        anyway (release_ballast), leaving room to evict and checkpoint."""
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.clock = clock
        self.reserve_bytes = reserve_bytes
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"cannot make the folder of the outbox {self.path}: "
                              f"{exc.strerror}; give a data folder on a writable disk"
                              ) from None
        self.ballast = self.path.with_name(self.path.name + ".ballast")
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False,
                                       isolation_level=None)
        except sqlite3.Error as exc:
            raise OutboxError(self._problem(exc)) from exc
        try:
            with self._lock:
                self._open(wal_pages)
        except sqlite3.Error as exc:
            self._db.close()
            raise OutboxError(self._problem(exc)) from exc
        except OutboxError:
            self._db.close()
            raise
        self.restore_ballast()

    def _problem(self, exc: sqlite3.Error) -> str:
        advice = sqlite_advice(exc, self.path)
        if not advice or getattr(exc, "sqlite_errorcode", 0) in (sqlite3.SQLITE_CORRUPT,
                                                                 sqlite3.SQLITE_NOTADB):
            advice = ("the file is damaged or not an outbox; move it aside to start an "
                      "empty one (readings still in it are then not sent)")
        return f"cannot open the outbox {self.path}: {exc} ({advice})"

    def _open(self, wal_pages: int) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > OUTBOX_VERSION:
            raise OutboxError(
                f"the outbox {self.path} is format {version}, written by a newer dordt (this "
                f"one reads up to {OUTBOX_VERSION}); run that version so it drains, or move "
                "the file aside to start an empty one")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA wal_autocheckpoint={int(wal_pages)}")
        page = self._db.execute("PRAGMA page_size").fetchone()[0]
        self._db.execute(f"PRAGMA journal_size_limit={int(wal_pages) * page}")
        self._migrate()
        self._db.executescript(_SCHEMA)
        if version != OUTBOX_VERSION:
            self._db.execute(f"PRAGMA user_version={OUTBOX_VERSION}")

    def _migrate(self) -> None:
        """An outbox written by an earlier version (readings as columns and JSON fields)
        becomes one of lines, in one transaction: buffered readings are never dropped by
        an upgrade."""
        cols = [row[1] for row in self._db.execute("PRAGMA table_info(outbox)")]
        if "fields" not in cols:
            return
        with self._transaction() as db:
            old = db.execute(
                "SELECT id, node, kind, zone, site, counter, time_s, window_s, status,"
                " estimated, fields FROM outbox ORDER BY id").fetchall()
            db.execute("ALTER TABLE outbox RENAME TO outbox_v1")
            db.execute(_SCHEMA.split(";")[0])
            db.executemany(
                "INSERT INTO outbox (id, node, time_s, policy, line) VALUES (?,?,?,0,?)",
                [(i, node, t, line_head(Reading(node, kind, zone, site, ctr, t, w,
                                                json.loads(f), bool(st), bool(est))))
                 for i, node, kind, zone, site, ctr, t, w, st, est, f in old])
            db.execute("DROP TABLE outbox_v1")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writer -------------------------------------------------------------------------

    def commit(
        self,
        readings: Iterable[Reading],
        windows: dict[int, ReplayWindow],
        counts: Counter | None = None,
        policy: int = 0,
    ) -> None:
        """Keep `readings` (anonymised under policy version `policy`), the replay windows
        they moved and the counters, in one transaction."""
        rows = []
        refused = []
        for r in readings:
            if r.head is not None:  # verify formatted it, from finite values
                rows.append((r.node, r.time_s, policy, r.head))
            # a sum is finite when every value is (and none is near 1e308): one C call
            elif isfinite(sum(r.fields.values())):
                rows.append((r.node, r.time_s, policy, line_head(r)))
            else:  # no store takes NaN or infinity: set aside now, never blocking the queue
                refused.append((json.dumps({"line": line_head(r) + f" {r.time_s}",
                                            "policy": policy}),
                                "a field value is not finite; line protocol has no NaN or"
                                " infinity", self.clock()))
        with self._lock, self._transaction() as db:
            _insert_rows(db, rows)
            if refused:
                db.executemany("INSERT INTO quarantine (reading, error, at_s) VALUES (?, ?, ?)",
                               refused)
                db.execute(_ADD_COUNTER, ("quarantined", len(refused)))
            if windows:
                db.executemany(
                    "INSERT OR REPLACE INTO replay_window VALUES (?,?,?)",
                    [(n, w.highest, w.seen.to_bytes(8, "big")) for n, w in windows.items()],
                )
            if counts:
                db.executemany(_ADD_COUNTER, list(counts.items()))

    def note_policy(self, version: int, digest: bytes) -> None:
        """Remember the hash of policy `version`, for the provenance of readings buffered
        under it.  A version seen before with another hash is refused (anonymise.py refuses
        to start with one; this is the buffer's own guard)."""
        with self._lock, self._transaction() as db:
            row = db.execute("SELECT hash FROM policy WHERE version = ?", (version,)).fetchone()
            if row is not None and bytes(row[0]) != digest:
                raise ValueError(f"privacy policy version {version} is already in the buffer"
                                 " with other values; give the new policy a new version")
            db.execute("INSERT OR IGNORE INTO policy VALUES (?, ?)", (version, digest))

    def policies(self) -> dict[int, bytes]:
        with self._lock:
            return {v: bytes(h) for v, h in self._db.execute("SELECT version, hash FROM policy")}

    # -- bounds -------------------------------------------------------------------------

    def used_bytes(self) -> int:
        with self._lock:
            return self._used_bytes()

    def _used_bytes(self) -> int:
        db = self._db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * db.execute("PRAGMA page_size").fetchone()[0]

    # -- room on the disk ----------------------------------------------------------------

    def room_bytes(self) -> int:
        """Free space the database can still use: the filesystem's plus its free pages."""
        with self._lock:
            free_pages = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            page = self._db.execute("PRAGMA page_size").fetchone()[0]
        return shutil.disk_usage(self.path.parent).free + free_pages * page

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (its space goes back)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def release_ballast(self) -> bool:
        """Give up the ballast file's space (the disk is full); True if there was one."""
        try:
            self.ballast.unlink()
            return True
        except FileNotFoundError:
            return False

    def restore_ballast(self) -> None:
        """Put the ballast back when there is room for it and the reserve beside it."""
        size = self.reserve_bytes // 2
        if not size or self.ballast.exists():
            return
        try:
            if shutil.disk_usage(self.path.parent).free < 2 * size:
                return
            with open(self.ballast, "wb") as f:
                f.truncate(0)
                f.write(bytes(size))  # written, not sparse: the blocks must really be held
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            self.ballast.unlink(missing_ok=True)

    def enforce_bounds(self) -> int:
        """Evict what is beyond the age, byte and free-space bounds; returns how many
        readings went."""
        evicted = 0
        if self.max_age_s is not None:
            cutoff = int(self.clock() - self.max_age_s)
            evicted += self.evict("time_s < ?", (cutoff,), EVICT_AGE)
        if self.max_bytes is not None:
            while self.used_bytes() > self.max_bytes:
                n = self.evict_oldest(max(100, self.depth() // 20), EVICT_BYTES)
                if n == 0:
                    break
                evicted += n
        if self.reserve_bytes:
            try:
                self.checkpoint()
            except sqlite3.OperationalError:  # a full disk may refuse it; the WAL keeps all
                pass
            while (short := self.reserve_bytes - self.room_bytes()) > 0:
                # Evicting gives back only what the outbox holds.  When that is less than
                # the shortfall, something else filled the disk: emptying the outbox would
                # lose every buffered reading and still not restore the reserve (found by
                # bench/soak.py).  Keep them; the ballast leaves room to commit and drain,
                # and commit() evicts if the disk is still full after that.
                if self.used_bytes() < short:
                    break
                n = self.evict_oldest(max(100, self.depth() // 10), EVICT_DISK_FULL)
                if n == 0:
                    break
                evicted += n
                self.checkpoint()
            self.restore_ballast()
        return evicted

    def evict_oldest(self, n: int, reason: int) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT max(id) FROM (SELECT id FROM outbox WHERE id > ? ORDER BY id LIMIT ?)",
                (self._pending_last_id(), n)).fetchone()
        if row[0] is None:
            return 0
        return self.evict("id <= ?", (row[0],), reason)

    def _pending_last_id(self) -> int:
        # readings of a batch being sent are never evicted: its signed record counts them
        return self._db.execute("SELECT coalesce(max(last_id), 0) FROM batch").fetchone()[0]

    def evict(self, where: str, params: tuple, reason: int) -> int:
        """Delete the readings matching `where` (not those of a batch being sent) and write
        one gap record per node: how many readings, from when to when, and why."""
        cond = f"({where}) AND id > ?"
        with self._lock, self._transaction() as db:
            params = (*params, self._pending_last_id())
            groups = db.execute(
                "SELECT node, count(*), min(time_s), max(time_s), min(id) FROM outbox"
                f" WHERE {cond} GROUP BY node", params).fetchall()
            if not groups:
                return 0
            heads = {node: db.execute("SELECT line, time_s FROM outbox WHERE id = ?",
                                      (first_id,)).fetchone()
                     for node, _, _, _, first_id in groups}
            db.execute(f"DELETE FROM outbox WHERE {cond}", params)
            total = 0
            for node, count, first_s, last_s, _ in groups:
                line, time_s = heads[node]
                _, tags, _, _ = parse_line(f"{line} {time_s}")
                tags = {k: tags.get(k, "-") for k in ("zone", "site", "node", "kind")}
                fields = {"readings": count, "first_s": first_s, "last_s": last_s,
                          "reason": reason}
                db.execute("INSERT INTO extra (measurement, tags, fields, time_s)"
                           " VALUES ('gap', ?, ?, ?)",
                           (json.dumps(tags), json.dumps(fields), last_s))
                total += count
            db.execute(_ADD_COUNTER, (f"evicted.{_EVICT_NAMES[reason]}", total))
        return total

    # -- points that are not readings (gap records, heartbeats) ------------------------

    def add_point(self, point: Point) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO extra (measurement, tags, fields, time_s) VALUES (?, ?, ?, ?)",
                (point.measurement, json.dumps(point.tags), json.dumps(point.fields),
                 point.time_s))

    def peek_points(self, limit: int) -> list[tuple[int, Point]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, measurement, tags, fields, time_s FROM extra ORDER BY id LIMIT ?",
                (limit,)).fetchall()
        return [(i, Point(m, json.loads(t), {k: float(v) for k, v in json.loads(f).items()},
                          ts)) for i, m, t, f, ts in rows]

    def quarantine_point(self, item: tuple[int, Point], error: str, at_s: float) -> None:
        point_id, point = item
        doc = json.dumps({"measurement": point.measurement, **point.tags,
                          "time_s": point.time_s, "fields": point.fields})
        with self._lock, self._transaction() as db:
            db.execute("INSERT INTO quarantine (reading, error, at_s) VALUES (?, ?, ?)",
                       (doc, error, at_s))
            db.execute("DELETE FROM extra WHERE id = ?", (point_id,))
            db.execute(_ADD_COUNTER, ("quarantined", 1))

    def remove_points(self, ids: list[int]) -> None:
        with self._lock, self._transaction() as db:
            db.executemany("DELETE FROM extra WHERE id = ?", [(i,) for i in ids])

    def oldest_time_s(self) -> int | None:
        with self._lock:
            return self._db.execute("SELECT min(time_s) FROM outbox").fetchone()[0]

    def load_windows(self) -> dict[int, ReplayWindow]:
        with self._lock:
            rows = self._db.execute("SELECT node_id, highest, seen FROM replay_window").fetchall()
        return {n: ReplayWindow(h, int.from_bytes(s, "big")) for n, h, s in rows}

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT name, value FROM counters").fetchall())

    # -- reader -------------------------------------------------------------------------

    def peek_items(self, limit: int) -> list[Item]:
        """The oldest `limit` readings, as the forwarder sends them."""
        with self._lock:
            return self._db.execute(
                "SELECT id, time_s, policy, line FROM outbox ORDER BY id LIMIT ?",
                (limit,)).fetchall()

    def span(self, limit: int, after_id: int = 0) -> tuple[int, int, int, int, int, int] | None:
        """The next batch's extent: the oldest readings with ids above `after_id`, at most
        `limit`, all of one policy version (a batch's record names its policy):
        (first id, last id, count, first time, last time, policy), or None when there are
        none.  A batch is a range of ids: readings are only ever added at the end."""
        with self._lock:
            first, last, n, first_s, last_s, low, high = self._db.execute(
                "SELECT min(id), max(id), count(*), min(time_s), max(time_s), min(policy),"
                " max(policy) FROM (SELECT id, time_s, policy FROM outbox WHERE id > ?"
                " ORDER BY id LIMIT ?)", (after_id, limit)).fetchone()
            if not n:
                return None
            if low == high:  # one policy: the common case, answered by SQLite alone
                return first, last, n, first_s, last_s, low
            rows = self._db.execute(
                "SELECT id, time_s, policy FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit)).fetchall()
        policy = rows[0][2]
        rows = rows[:next(i for i, row in enumerate(rows) if row[2] != policy)]
        times = [row[1] for row in rows]
        return rows[0][0], rows[-1][0], len(rows), min(times), max(times), policy

    def span_lines(self, first_id: int, last_id: int) -> list[str]:
        """The readings of ids first..last as complete lines, sorted: the provenance
        digest's canonical lines.  SQLite sorts them (text as bytes, UTF-8, which is code
        point order, as Python's) and joins them in one step, without the GIL, so a store
        write on another thread goes on meanwhile; the sort here then only confirms the
        order (linear on sorted input), since SQLite does not promise that an aggregate
        keeps its subquery's order."""
        with self._lock:
            body = self._db.execute(
                "SELECT group_concat(l, char(10)) FROM (SELECT line || ' ' || time_s AS l"
                " FROM outbox WHERE id BETWEEN ? AND ? ORDER BY 1)",
                (first_id, last_id)).fetchone()[0]
        if not body:
            return []
        lines = body.split("\n")
        lines.sort()
        return lines

    def span_body(self, first_id: int, last_id: int, extra_field: str) -> str:
        """The readings of ids first..last as the text to send, a line each with
        `extra_field` (",batch=7.0") added, made by SQLite in one pass ("" for none)."""
        with self._lock:
            body = self._db.execute(
                "SELECT group_concat(line || ? || ' ' || time_s, char(10)) FROM outbox"
                " WHERE id BETWEEN ? AND ?", (extra_field, first_id, last_id)).fetchone()[0]
        return body or ""

    def span_items(self, first_id: int, last_id: int) -> list[Item]:
        with self._lock:
            return self._db.execute(
                "SELECT id, time_s, policy, line FROM outbox WHERE id BETWEEN ? AND ?"
                " ORDER BY id", (first_id, last_id)).fetchall()

    def open_batches(self) -> list[int]:
        """Numbers of the batches opened and not yet closed, oldest first."""
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT seq FROM batch ORDER BY seq")]

    def open_batches_last_id(self) -> int:
        """The last outbox id in any open batch (0: none): new batches start after it."""
        with self._lock:
            return self._pending_last_id()

    def peek(self, limit: int) -> list[tuple[int, Reading]]:
        """The oldest `limit` readings with their outbox ids, as Readings (for people and
        tests; counter and window length are not kept, so they read 0)."""
        return [(item[0], item_reading(item)) for item in self.peek_items(limit)]

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

    def pending_batch(self) -> tuple[int, str, int, int] | None:
        """The oldest batch opened and not closed (the gateway stopped mid-send, or the
        store failed): (seq, record, first id, last id)."""
        with self._lock:
            return self._db.execute(
                "SELECT seq, record, first_id, last_id FROM batch ORDER BY seq LIMIT 1"
            ).fetchone()

    def close_batch(self, seq: int, first_id: int, last_id: int) -> int:
        """The store has the batch of ids first..last: drop its readings and the batch, in
        one transaction; returns how many readings left.

        Without an fsync of its own (synchronous=NORMAL for this one commit): should a
        power cut take it back, the batch is still open after the restart and is sent
        again, the same batch with the same number and record, which leaves the store as
        it was (same series and times) and the audit log too (it skips a number it has).
        The next group commit's fsync makes it durable anyway.  One fsync less per batch
        is a fifth of a backlog's drain time on an SD card."""
        with self._lock:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._transaction() as db:
                    n = db.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ?",
                                   (first_id, last_id)).rowcount
                    db.execute(_ADD_COUNTER, ("forwarded", n))
                    db.execute("DELETE FROM batch WHERE seq = ?", (seq,))
            finally:
                self._db.execute("PRAGMA synchronous=FULL")
        return n

    def abandon_batch(self, seq: int) -> None:
        """The store refused the batch for good; its readings stay, to be split."""
        with self._lock, self._transaction() as db:
            db.execute("DELETE FROM batch WHERE seq = ?", (seq,))

    def remove(self, ids: list[int], counter: str = "forwarded") -> None:
        """Drop readings the store now has."""
        with self._lock, self._transaction() as db:
            self._remove(db, ids, counter)

    def quarantine(self, item: Item, error: str, at_s: float) -> None:
        """Set aside a reading the store refuses for good, so it never blocks the queue."""
        outbox_id, time_s, policy, head = item
        doc = json.dumps({"line": f"{head} {time_s}", "policy": policy})
        with self._lock, self._transaction() as db:
            db.execute("INSERT INTO quarantine (reading, error, at_s) VALUES (?, ?, ?)",
                       (doc, error, at_s))
            self._remove(db, [outbox_id], "quarantined")

    @staticmethod
    def _remove(db: sqlite3.Connection, ids: list[int], counter: str) -> None:
        if ids and ids[-1] - ids[0] + 1 == len(ids) and ids == sorted(ids):
            db.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ?", (ids[0], ids[-1]))
        else:
            db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
        db.execute(_ADD_COUNTER, (counter, len(ids)))

    @contextmanager
    def _transaction(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself after some errors (SQLITE_FULL among them)
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def depth(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]


def item_reading(item: Item) -> Reading:
    """A buffered reading back as a Reading (counter and window length read 0)."""
    _, time_s, _, head = item
    measurement, tags, fields, _ = parse_line(f"{head} {time_s}")
    return Reading(node=tags.get("node", "-"), kind=tags.get("kind", "-"),
                   zone=tags.get("zone", "-"), site=tags.get("site", "-"), counter=0,
                   time_s=time_s, window_s=0, fields=fields,
                   status=measurement == "node_status")
