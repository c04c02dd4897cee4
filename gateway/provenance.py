"""Provenance: every forwarded batch is signed by the gateway, and anyone holding the
gateway's public key can re-read the store and check what reached it.

- Each gateway has an Ed25519 key made on the gateway (`GatewayIdentity`), private key
  mode 0600 in its data dir; the public key is what fleet/ records for the gateway.
- A batch's digest is SHA-256 over its readings in a canonical form that survives the
  store's float handling: each reading's line-protocol line with metric values normalised
  to the registry's fixed point, lines sorted (docs/gateway-operations.md, "Provenance").
- A `ProvenanceRecord` (gateway, batch seq, count, time span, digest, policy id and hash)
  is signed and written to the store in the same request as its batch, as a point of the
  measurement `provenance`; every reading of the batch carries the field `batch` = seq.
  The record's byte fields are stored as 32-bit integer fields (d0..d7, s0..s15, p0..p7)
  because not every store keeps strings (VictoriaMetrics turns them into 0).
- The same records go, hash-chained, into the gateway's local audit log (`AuditLog`).
- `verify_range()` re-reads a time range and checks every record's signature and digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fleet.files import write_file_atomic
from gateway.forward import fixed_point, line_protocol
from gateway.model import Point, Reading

MEASUREMENT = "provenance"
BATCH_FIELD = "batch"
SLOTS = 64  # provenance points per (gateway, second) before two could share a timestamp
_MAGIC = "dordt-provenance/2"  # /2: digests over normalised line protocol


# -- the gateway's key ---------------------------------------------------------------------


class GatewayIdentity:
    """The gateway's Ed25519 signing key.  repr() and errors never show the key."""

    def __init__(self, gateway_id: str, private_key: Ed25519PrivateKey):
        self.gateway_id = gateway_id
        self._key = private_key
        self.public_key = private_key.public_key()

    def __repr__(self) -> str:
        return f"GatewayIdentity({self.gateway_id!r})"

    @classmethod
    def load_or_create(cls, data_dir: str | Path, gateway_id: str) -> GatewayIdentity:
        """Read data_dir/gateway.key, or make one (atomically, mode 0600) on first run, and
        write data_dir/gateway.pub (PEM) for the fleet registry."""
        data_dir = Path(data_dir)
        path = data_dir / "gateway.key"
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (ValueError, TypeError, OSError):
                raise ValueError(f"{path}: not a readable Ed25519 private key; move it aside "
                                 "to make a new one (and re-register the gateway)") from None
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path}: not an Ed25519 key")
        else:
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            write_file_atomic(path, pem, 0o600)
        ident = cls(gateway_id, key)
        write_file_atomic(data_dir / "gateway.pub", public_pem(ident.public_key), 0o644)
        return ident

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a readable public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


# -- digests ---------------------------------------------------------------------------------


def canonical_line(measurement: str, tags: dict[str, str], time_s: int,
                   fields: dict[str, float]) -> str:
    """One reading as the digest sees it: its line-protocol line (tags sorted, no batch
    field) with every registry metric's value normalised to the registry's fixed point,
    so a store's float formatting cannot change the digest.  For what the gateway wrote,
    this is exactly the line it sent (values are raw / 10**-exp), so the forwarder digests
    the outbox's lines as they are and only the verifier normalises."""
    values = {name: fixed_point(name, value) for name, value in fields.items()
              if name != BATCH_FIELD}
    return line_protocol(Point(measurement, tags, values, time_s))


def batch_digest(lines: Iterable[str]) -> bytes:
    """SHA-256 over the sorted lines, each followed by a newline."""
    body = "\n".join(sorted(lines))
    return hashlib.sha256((body + "\n").encode()).digest()


def reading_line(r: Reading) -> str:
    return canonical_line(r.measurement, r.tags, r.time_s, r.fields)


# -- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProvenanceRecord:
    gateway: str
    seq: int
    count: int
    first_s: int
    last_s: int
    digest: bytes  # 32
    policy_version: int
    policy_hash: bytes  # 32
    signature: bytes = b""  # 64

    def message(self) -> bytes:
        """What the signature covers."""
        return "\n".join([
            _MAGIC, self.gateway, str(self.seq), str(self.count), str(self.first_s),
            str(self.last_s), self.digest.hex(), str(self.policy_version),
            self.policy_hash.hex(),
        ]).encode()

    def signed_by(self, identity: GatewayIdentity) -> ProvenanceRecord:
        return ProvenanceRecord(**{**self.__dict__, "signature": identity.sign(self.message())})

    def verify(self, public_key: Ed25519PublicKey) -> bool:
        try:
            public_key.verify(self.signature, self.message())
            return True
        except InvalidSignature:
            return False

    def to_json(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items()
                   if not isinstance(v, bytes)},
                "digest": self.digest.hex(), "policy_hash": self.policy_hash.hex(),
                "signature": self.signature.hex()}

    @classmethod
    def from_json(cls, doc: dict) -> ProvenanceRecord:
        return cls(doc["gateway"], doc["seq"], doc["count"], doc["first_s"], doc["last_s"],
                   bytes.fromhex(doc["digest"]), doc["policy_version"],
                   bytes.fromhex(doc["policy_hash"]), bytes.fromhex(doc["signature"]))

    def to_point(self) -> ProvenancePoint:
        fields: dict[str, float] = {
            "seq": float(self.seq), "count": float(self.count), "first_s": float(self.first_s),
            "last_s": float(self.last_s), "policy_version": float(self.policy_version),
        }
        for prefix, blob in (("d", self.digest), ("s", self.signature),
                             ("p", self.policy_hash)):
            for i in range(len(blob) // 4):
                fields[f"{prefix}{i}"] = float(int.from_bytes(blob[4 * i:4 * i + 4], "big"))
        return ProvenancePoint(self.gateway, self.seq % SLOTS, self.last_s, fields)

    @classmethod
    def from_fields(cls, gateway: str, fields: dict[str, float]) -> ProvenanceRecord:
        def blob(prefix: str, n: int) -> bytes:
            return b"".join(int(fields[f"{prefix}{i}"]).to_bytes(4, "big") for i in range(n))

        return cls(gateway, int(fields["seq"]), int(fields["count"]), int(fields["first_s"]),
                   int(fields["last_s"]), blob("d", 8), int(fields["policy_version"]),
                   blob("p", 8), blob("s", 16))


@dataclass(frozen=True)
class ProvenancePoint:
    """A provenance record as a store point (duck-typed like a Reading for the stores)."""

    gateway: str
    slot: int
    time_s: int
    fields: dict[str, float] = field(hash=False)

    measurement = MEASUREMENT
    kind = "gateway"
    zone = "-"
    site = "-"

    @property
    def node(self) -> str:  # the local store's series key
        return f"{self.gateway}#{self.slot:02d}"

    @property
    def tags(self) -> dict[str, str]:
        return {"gateway": self.gateway, "slot": f"{self.slot:02d}"}


def make_record(identity: GatewayIdentity, seq: int, lines: list[str], first_s: int,
                last_s: int, policy_version: int, policy_hash: bytes) -> ProvenanceRecord:
    """The signed record of a batch of canonical lines (see canonical_line)."""
    return ProvenanceRecord(
        identity.gateway_id, seq, len(lines), first_s, last_s, batch_digest(lines),
        policy_version, policy_hash,
    ).signed_by(identity)


# -- the local audit log -------------------------------------------------------------------------


class AuditLog:
    """Append-only JSON lines, each holding a forwarded batch's record and the SHA-256 of
    the previous line's hash and this record, so a removed or edited line breaks the
    chain.  fsync per entry (one per batch, not per reading).  Appending a seq already in
    the log does nothing, so a batch re-sent after a crash is logged once."""

    GENESIS = "0" * 64

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.last_hash, self.last_seq = self.GENESIS, -1
        if self.path.exists():
            for entry in self._entries():
                self.last_hash, self.last_seq = entry["hash"], entry["record"]["seq"]

    def _entries(self):
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    @staticmethod
    def _hash(prev: str, record: dict) -> str:
        body = json.dumps(record, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256((prev + body).encode()).hexdigest()

    def append(self, record: ProvenanceRecord, at_s: float) -> None:
        if record.seq <= self.last_seq:
            return
        doc = record.to_json()
        h = self._hash(self.last_hash, doc)
        line = json.dumps({"at_s": round(at_s, 3), "record": doc, "prev": self.last_hash,
                           "hash": h}, sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.last_hash, self.last_seq = h, record.seq

    def verify(self, public_key: Ed25519PublicKey | None = None) -> list[str]:
        """Problems found (empty: the chain is whole and, with a key, every record signed)."""
        problems = []
        prev = self.GENESIS
        for n, entry in enumerate(self._entries(), start=1):
            if entry["prev"] != prev:
                problems.append(f"line {n}: does not follow line {n - 1} (chain broken)")
            if self._hash(entry["prev"], entry["record"]) != entry["hash"]:
                problems.append(f"line {n}: its record was changed after it was written")
            if public_key is not None and not ProvenanceRecord.from_json(
                    entry["record"]).verify(public_key):
                problems.append(f"line {n}: signature does not verify")
            prev = entry["hash"]
        return problems


# -- verification against the store -----------------------------------------------------------


@dataclass
class StoredReading:
    measurement: str
    tags: dict[str, str]
    time_s: int
    fields: dict[str, float]


@dataclass
class VerifyReport:
    batches_ok: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_batches(points: Iterable[StoredReading], public_key: Ed25519PublicKey,
                   gateway: str | None = None) -> VerifyReport:
    """Check every provenance record among `points` against the readings carrying its
    batch number.  `points` must cover each record's [first_s, last_s].  Batch numbers are
    per gateway: verify one gateway's range at a time (its nodes' readings).

    The points come from a store, which anyone with write access could have filled: a
    record or a batch number that cannot be read is a problem in the report, never an
    exception."""
    records: list[ProvenanceRecord] = []
    members: dict[int, list[str]] = defaultdict(list)
    report = VerifyReport()
    for p in points:
        try:
            if p.measurement == MEASUREMENT:
                records.append(ProvenanceRecord.from_fields(p.tags["gateway"], p.fields))
            elif BATCH_FIELD in p.fields:
                tags = {k: v for k, v in p.tags.items() if k in ("zone", "site", "node", "kind")}
                members[int(p.fields[BATCH_FIELD])].append(
                    canonical_line(p.measurement, tags, p.time_s, p.fields))
        except (KeyError, ValueError, OverflowError, TypeError) as exc:
            report.problems.append(
                f"a {p.measurement!r} point at {p.time_s} cannot be read ({type(exc).__name__}"
                f": {str(exc)[:80]}); the store holds something this gateway did not write")
    for rec in sorted(records, key=lambda r: r.seq):
        if gateway is not None and rec.gateway != gateway:
            continue
        lines = members.get(rec.seq, [])
        if not rec.verify(public_key):
            report.problems.append(f"batch {rec.seq}: signature does not verify")
        elif len(lines) != rec.count:
            report.problems.append(
                f"batch {rec.seq}: the store holds {len(lines)} readings, the record {rec.count}")
        elif batch_digest(lines) != rec.digest:
            report.problems.append(f"batch {rec.seq}: readings differ from what was signed")
        else:
            report.batches_ok += 1
    return report


# -- reading a time range back from a store ---------------------------------------------------

_MEASUREMENTS = ("node_status", MEASUREMENT, "air", "noise", "crowd")


def read_local(path: str | Path, start_s: int, end_s: int,
               measurements: tuple[str, ...] | None = None,
               fields: tuple[str, ...] | None = None) -> list[StoredReading]:
    """Every point of a LocalStore file in [start_s, end_s], or only those of
    `measurements` and only their `fields` (fleet health reads its few).  A gateway's
    point (gateway_health) has its gateway id as "node", as LocalStore.write_lines keys
    it."""
    import sqlite3

    sql = ("SELECT measurement, node, time_s, field, value, zone, site, kind FROM points"
           " WHERE time_s BETWEEN ? AND ?")
    params: list[object] = [start_s, end_s]
    for column, wanted in (("measurement", measurements), ("field", fields)):
        if wanted is not None:
            sql += f" AND {column} IN ({', '.join('?' * len(wanted))})"
            params += wanted
    db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        rows = db.execute(sql, params).fetchall()
    finally:
        db.close()
    grouped: dict[tuple, StoredReading] = {}
    for measurement, node, time_s, name, value, zone, site, kind in rows:
        key = (measurement, node, time_s)
        if key not in grouped:
            if measurement == MEASUREMENT:
                gateway, _, slot = node.rpartition("#")
                tags = {"gateway": gateway, "slot": slot}
            else:
                tags = {"zone": zone, "site": site, "node": node, "kind": kind}
            grouped[key] = StoredReading(measurement, tags, time_s, {})
        grouped[key].fields[name] = value
    return list(grouped.values())


def read_victoriametrics(url: str, start_s: int, end_s: int, timeout_s: float = 30,
                         measurements: tuple[str, ...] = _MEASUREMENTS,
                         fields: tuple[str, ...] | None = None) -> list[StoredReading]:
    """Every dordt point in [start_s, end_s] through VictoriaMetrics' /api/v1/export, or
    only those of `measurements` and only their `fields`."""
    import urllib.parse
    import urllib.request

    field_re = ".*" if not fields else "(" + "|".join(map(re.escape, fields)) + ")"
    match = '{__name__=~"(' + "|".join(measurements) + ")_" + field_re + '"}'
    query = urllib.parse.urlencode({"match[]": match, "start": start_s, "end": end_s})
    with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/export?{query}",
                                timeout=timeout_s) as resp:
        body = resp.read()
    return parse_victoriametrics_export(body, measurements)


def parse_victoriametrics_export(body: bytes | str, measurements: tuple[str, ...] = _MEASUREMENTS
                                 ) -> list[StoredReading]:
    """The points of a VictoriaMetrics /api/v1/export answer (one JSON series a line:
    {"metric": {labels}, "values": [...], "timestamps": [ms, ...]}) of `measurements`,
    grouped into readings.  Raises ValueError naming the line for anything else."""
    # the longest name first: "gateway_health_x" is gateway_health's, not a "gateway"'s
    measurements = tuple(sorted(measurements, key=len, reverse=True))
    if isinstance(body, bytes):
        try:
            body = body.decode()
        except UnicodeDecodeError as exc:
            raise ValueError(f"the store's export is not UTF-8 text ({exc})") from None
    grouped: dict[tuple, StoredReading] = {}
    for number, line in enumerate(body.splitlines(), 1):
        if not line.strip():
            continue
        try:
            series = json.loads(line)
            labels = {str(k): str(v) for k, v in dict(series["metric"]).items()}
            name = labels.pop("__name__")
            labels.pop("db", None)
            measurement = next((m for m in measurements if name.startswith(m + "_")), None)
            if measurement is None:
                continue  # not a dordt series: the match[] filter let it through
            field_name = name[len(measurement) + 1:]
            tag_key = tuple(sorted(labels.items()))
            values, stamps = series["values"], series["timestamps"]
            if not isinstance(values, list) or not isinstance(stamps, list) or \
                    len(values) != len(stamps):
                raise ValueError("values and timestamps do not pair up")
            for value, ts_ms in zip(values, stamps, strict=True):
                time_s = int(ts_ms) // 1000
                key = (measurement, tag_key, time_s)
                if key not in grouped:
                    grouped[key] = StoredReading(measurement, dict(labels), time_s, {})
                grouped[key].fields[field_name] = float(value)
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise ValueError(f"the store's export, line {number}: not a series this tool "
                             f"reads ({type(exc).__name__}: {str(exc)[:80]})") from None
    return list(grouped.values())
