"""LocalStore: readings → one SQLite file, the embedded default store (demo, first run).

In: a sequence of `Reading`s.  Out: one row per (measurement, node, time_s, field) with its
value and the reading's zone, site and kind; written in one transaction per `write()`, so
a batch is stored whole or not at all, and an upsert, so writing a reading twice leaves
one point (the same rule InfluxDB applies to a series and timestamp).  WAL journal with
synchronous=FULL: when `write()` returns the batch survives a power cut.

Threads: one writer and any number of readers.  Each thread gets its own connection; WAL
lets readers run while the writer commits.  Other processes (a CLI) may read the file too.

On failure: every SQLite fault (locked, I/O error, disk full, read-only file, cannot open)
raises `RetryableStoreError` with the path and what to do — the readings are fine, the file
is not, so they stay buffered.  A reading with a non-finite value raises
`PermanentStoreError` (SQLite would store NaN as NULL).
"""

from __future__ import annotations

import errno
import math
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from gateway.forward import PermanentStoreError, RetryableStoreError, parse_line
from gateway.model import Reading

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    measurement TEXT NOT NULL,
    node TEXT NOT NULL,
    time_s INTEGER NOT NULL,
    field TEXT NOT NULL,
    value REAL NOT NULL,
    zone TEXT NOT NULL,
    site TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (measurement, node, time_s, field)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS points_by_field ON points (measurement, field, time_s);
CREATE INDEX IF NOT EXISTS points_by_zone ON points (zone, kind);
"""

_UPSERT = """
INSERT INTO points (measurement, node, time_s, field, value, zone, site, kind)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (measurement, node, time_s, field) DO UPDATE SET
    value = excluded.value, zone = excluded.zone, site = excluded.site, kind = excluded.kind
"""

# Columns a caller may group by; the names go into SQL, so only these are accepted.
GROUP_KEYS = ("zone", "site", "kind", "node", "measurement")

# What to tell an operator, by SQLite primary result code (https://sqlite.org/rescode.html).
_ADVICE = {
    "SQLITE_FULL": "the disk is full; free space on its filesystem",
    "SQLITE_BUSY": "another process holds a lock on it; it will be retried",
    "SQLITE_LOCKED": "another connection holds a lock on it; it will be retried",
    "SQLITE_READONLY": "it is read-only; check the permissions of the file and its folder",
    "SQLITE_CANTOPEN": "it cannot be opened; check that its folder exists and is writable",
    "SQLITE_IOERR": "the disk reported an I/O error; check the storage device",
    "SQLITE_CORRUPT": "the file is damaged; move it aside so a new one is made",
    "SQLITE_NOTADB": "the file is not an SQLite database; check the path",
    "SQLITE_PERM": "access was denied; check the permissions of the file and its folder",
}


class StoredPoint(NamedTuple):
    node: str
    time_s: int
    value: float


class LocalStore:
    """A `Store` in one SQLite file at `path`.

    With `create` (the default) the file and its folder are made when missing; without,
    a missing file raises FileNotFoundError (a query tool must not leave empty stores
    behind a mistyped path).  `busy_timeout_s`: how long a write waits for another
    process's lock before it raises RetryableStoreError.
    """

    def __init__(
        self, path: str | os.PathLike[str], create: bool = True, busy_timeout_s: float = 5.0
    ):
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        if not create and not self.path.is_file():
            raise FileNotFoundError(
                errno.ENOENT, "no local store here; check the path", str(self.path)
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RetryableStoreError(
                f"cannot create the folder of the local store {self.path}: {exc.strerror}"
            ) from None
        try:
            with self._errors("open"):
                conn = self._conn()
                conn.execute("PRAGMA journal_mode=WAL")
                with conn:
                    conn.executescript(_SCHEMA)
        except BaseException:
            self.close()
            raise

    # -- Store ----------------------------------------------------------------------------

    def write(self, readings: Sequence[Reading]) -> None:
        rows = []
        for r in readings:
            for name, value in r.fields.items():
                if not math.isfinite(value):
                    raise PermanentStoreError(
                        f"reading from node {r.node} at {r.time_s} has field {name}={value};"
                        " the store takes only finite values"
                    )
                rows.append(
                    (r.measurement, r.node, r.time_s, name, float(value), r.zone, r.site, r.kind)
                )
        self._upsert(rows)

    def write_lines(self, lines: Sequence[str]) -> None:
        """Line-protocol text (as the outbox keeps it) → the same rows as write()."""
        rows = []
        for line in (line for text in lines for line in text.split("\n")):
            try:
                measurement, tags, fields, time_s = parse_line(line)
            except ValueError as exc:
                raise PermanentStoreError(str(exc)) from None
            node = tags.get("node")
            if node is None:  # gateway points: heartbeats, provenance records (their slot)
                node = tags.get("gateway", "-")
                if "slot" in tags:
                    node = f"{node}#{tags['slot']}"
            zone, site, kind = tags.get("zone", "-"), tags.get("site", "-"), tags.get(
                "kind", "gateway")
            for name, value in fields.items():
                if not math.isfinite(value):
                    raise PermanentStoreError(
                        f"reading from node {node} at {time_s} has field {name}={value};"
                        " the store takes only finite values"
                    )
                rows.append((measurement, node, time_s, name, value, zone, site, kind))
        self._upsert(rows)

    def _upsert(self, rows: list[tuple]) -> None:
        if not rows:
            return
        with self._errors("write to"):
            conn = self._conn()
            with conn:  # one transaction: the batch is stored whole or not at all
                conn.executemany(_UPSERT, rows)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    # -- queries (demo summary, CLI) ------------------------------------------------------

    def count_by(
        self, keys: Iterable[str] = ("zone", "kind"), *, status: bool = False
    ) -> dict[tuple[str, ...], int]:
        """Number of readings (not field values) per distinct value of `keys`, e.g.
        {("spoorzone", "air"): 120}.  Measurement readings only, or status readings only
        when `status` is true."""
        keys = tuple(keys)
        bad = [k for k in keys if k not in GROUP_KEYS]
        if not keys or bad:
            raise ValueError(f"count_by keys must be some of {GROUP_KEYS}, got {keys}")
        cols = ", ".join(keys)
        sql = (
            f"SELECT {cols}, COUNT(*) FROM ("
            f" SELECT DISTINCT measurement, node, time_s, {cols} FROM points"
            f" WHERE {_measurement_filter(status)}"
            f") GROUP BY {cols} ORDER BY {cols}"
        )
        with self._errors("read"):
            rows = self._conn().execute(sql).fetchall()
        return {tuple(row[:-1]): row[-1] for row in rows}

    def latest(self, zone: str | None = None, kind: str | None = None) -> list[dict]:
        """The most recent value of each field, one row per node and measurement, sorted
        by node then measurement: {"node", "measurement", "kind", "zone", "site", "time_s",
        "fields": {name: value}}, `time_s` being the newest of its fields' times.

        `kind` matches a node kind ("air": its measurements and its status readings) or a
        measurement ("node_status": the status readings of every node)."""
        where = []
        params: list[str] = []
        if zone is not None:
            where.append("zone = ?")
            params.append(zone)
        if kind is not None:
            where.append("(kind = ? OR measurement = ?)")
            params += [kind, kind]
        if kind != "provenance":  # batch records, not readings (gateway/provenance.py)
            where.append("measurement != 'provenance'")
        # SQLite takes the bare columns of a MAX() aggregate from the row holding the maximum
        # (https://sqlite.org/lang_select.html#bare_columns_in_an_aggregate_query).
        sql = (
            "SELECT node, measurement, field, value, MAX(time_s), zone, site, kind FROM points"
            f" {'WHERE ' + ' AND '.join(where) if where else ''}"
            " GROUP BY node, measurement, field ORDER BY node, measurement, field"
        )
        with self._errors("read"):
            rows = self._conn().execute(sql, params).fetchall()
        out: dict[tuple[str, str], dict] = {}
        for node, measurement, field, value, time_s, zone_, site, kind_ in rows:
            row = out.get((node, measurement))
            if row is None:
                row = out[(node, measurement)] = {
                    "node": node,
                    "measurement": measurement,
                    "kind": kind_,
                    "zone": zone_,
                    "site": site,
                    "time_s": time_s,
                    "fields": {},
                }
            elif time_s > row["time_s"]:  # the newest field's tags win
                row.update(time_s=time_s, zone=zone_, site=site, kind=kind_)
            row["fields"][field] = value
        return list(out.values())

    def points(
        self,
        measurement: str,
        field: str,
        node: str | None = None,
        since_s: int | None = None,
    ) -> list[StoredPoint]:
        """Values of one field, oldest first, optionally of one node and from `since_s` on."""
        sql = "SELECT node, time_s, value FROM points WHERE measurement = ? AND field = ?"
        params: list[object] = [measurement, field]
        if node is not None:
            sql += " AND node = ?"
            params.append(node)
        if since_s is not None:
            sql += " AND time_s >= ?"
            params.append(since_s)
        sql += " ORDER BY time_s, node"
        with self._errors("read"):
            rows = self._conn().execute(sql, params).fetchall()
        return [StoredPoint(*row) for row in rows]

    # -- internals ------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"the local store {self.path} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the local store {self.path} is closed")
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level="DEFERRED",
                check_same_thread=False,  # close() may run on another thread
            )
            try:
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=OFF")
            except sqlite3.Error:
                conn.close()
                raise
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    def _errors(self, doing: str) -> _SqliteErrors:
        return _SqliteErrors(self.path, doing)


class _SqliteErrors:
    """Turns SQLite faults into RetryableStoreError with the path and what to do."""

    def __init__(self, path: Path, doing: str):
        self.path = path
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or not isinstance(exc, (sqlite3.OperationalError, sqlite3.DatabaseError)):
            return False
        message = f"cannot {self.doing} the local store {self.path}: {exc}"
        advice = sqlite_advice(exc, self.path, opening=self.doing == "open")
        if advice:
            message += f" ({advice})"
        raise RetryableStoreError(message) from exc


def sqlite_advice(exc: sqlite3.Error, path: Path, opening: bool = True) -> str:
    """What an operator should do about SQLite fault `exc` on the database file `path`
    (the local store, the outbox), met while `opening` it or later: "" when there is
    nothing to say."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    primary = "_".join(name.split("_")[:2])  # SQLITE_IOERR_WRITE → SQLITE_IOERR
    try:  # a read-only mount fails as CANTOPEN or READONLY; chmod would not help
        if os.statvfs(_existing_folder(path)).f_flag & os.ST_RDONLY:
            return (f"the filesystem holding {path.parent} is mounted read-only; "
                    "use a folder on a writable disk")
    except OSError:
        pass
    leftovers = [p.name for p in (Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()
                 or p.is_symlink()]
    if opening and leftovers and primary in ("SQLITE_IOERR", "SQLITE_CORRUPT",
                                             "SQLITE_NOTADB", "SQLITE_CANTOPEN"):
        # SQLite opens NAME-wal and NAME-shm beside NAME: ones left by an earlier file
        # (or a folder of that name) break the new one, whatever the disk's health.
        return (f"{' and '.join(leftovers)} beside it may belong to an earlier file; "
                f"if {path.name} is new, move them aside, else check the storage device")
    advice = _ADVICE.get(primary, "")
    if not advice and "locked" in str(exc):
        advice = _ADVICE["SQLITE_BUSY"]
    return advice


def _existing_folder(path: Path) -> Path:
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _measurement_filter(status: bool) -> str:
    return "measurement = 'node_status'" if status else "measurement = kind"
