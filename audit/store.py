"""Store audit: a gateway's data directory, its logs and a time-series store, checked for
identifiers and for the policy having been applied as its version says.

In:  the gateway's data directory (outbox.sqlite, privacy.sqlite = the epsilon
accountant, audit.log, anything else it wrote), extra log files, a store (`sqlite:PATH`
or `http://HOST:PORT`), the policy the gateway ran, the required minimum k, and
optionally a watch list of radio addresses (non-fleet advertisers a test or a privacy
officer knows were around) to look for in every form a program might write them.
Out: a `CheckResult` ("store") with findings and figures: points read, suppression and
epsilon per zone and UTC day (for the report's charts).
On failure: a data directory or store that cannot be read is `AuditInputError` (exit 2).

What is checked, and why (docs/privacy.md §1, §3, §4):
- Identifiers.  Every text the gateway keeps or logs is scanned for anything shaped like
  a MAC or BLE address, a long hex or base64 run (a hash or truncated hash): the
  gateway's own provenance fields (batch digests, signatures, policy hashes, the audit
  log's chain) are known and skipped by name; everything else must not look like one.
  Outbox lines and store points may only carry registry metrics, `suppressed` and
  `batch` as fields, and node, zone, site, kind as tags.  A watch list is matched against
  the raw bytes of every file (and each log), in colon, dash and bare hex, either byte
  order, and as SHA-256, SHA-1 and MD5 of the address (whole, and the first 16 digits).
  The gateway's private key file is not opened: it is a secret, not data.
- k: no released crowd count (or RSSI bin) of 1..k-1, where k is the larger of the zone
  policy's and the required minimum; a policy whose k is below the minimum is a finding.
- Noise where configured: in a zone with noise on, the accountant must hold at least
  epsilon x releases for every node and day with released counts.
- Budgets: every node's spending per day, recomputed from the accountant's exact
  fractions, is within its zone's daily budget; the decimal copy agrees with the fraction.
- Policy identity: every batch in the audit log was anonymised under the policy given
  (same version and hash), so the checks above hold the data to the rules that made it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

from audit.findings import AuditInputError, CheckResult, mask
from firmware import metrics

DAY_S = 86400
_MAC = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}"
                  r"(?![0-9A-Fa-f])")
_HEX = re.compile(r"(?<![0-9A-Za-z])[0-9A-Fa-f]{12,}(?![0-9A-Za-z])")
_B64 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{22,}={0,2}(?![A-Za-z0-9+/=])")
_HEXISH = re.compile(rb"[0-9a-f:\-]{12,}")
_FIELDS = frozenset(metrics.BY_NAME) | {"suppressed", "batch"}
_TAGS = frozenset({"node", "zone", "site", "kind"})
_READINGS = frozenset({"air", "noise", "crowd", "node_status"})  # measurements of readings
_PROVENANCE_KEYS = frozenset({"digest", "signature", "policy_hash", "prev", "hash"})
_SECRET_FILES = frozenset({"gateway.key"})
_RAW_SCAN_MAX_BYTES = 256 * 1024 * 1024
_SQLITE_SIDE = ("-wal", "-shm", "-journal")


# -- identifiers ------------------------------------------------------------------------------


class IdentifierScanner:
    """Finds identifier-shaped text, minus the tokens the gateway legitimately writes."""

    def __init__(self, result: CheckResult, allowed: Iterable[str] = ()):
        self.result = result
        self.allowed = sorted({a for a in allowed if a}, key=len, reverse=True)
        self.texts = 0

    def scan(self, text: str, where: str) -> None:
        self.texts += 1
        for token in self.allowed:
            if token in text:
                text = text.replace(token, " ")
        m = _MAC.search(text)
        if m:
            self.result.add(f"{where} holds something shaped like a MAC or BLE address "
                            f"({mask(m.group(0))}): no radio address may be kept or logged",
                            where)
            return
        for m in _HEX.finditer(text):
            token = m.group(0)
            if any(c in "abcdefABCDEF" for c in token):
                self.result.add(f"{where} holds a {len(token)}-digit hex value ({mask(token)}) "
                                "shaped like a hash or an address: the gateway writes no such "
                                "value outside its provenance fields", where)
                return
        for m in _B64.finditer(text):
            token = m.group(0)
            if (any(c.isdigit() for c in token) and any(c.islower() for c in token)
                    and any(c.isupper() for c in token)):
                self.result.add(f"{where} holds a {len(token)}-character base64-like value "
                                f"({mask(token)}) that could be a hash", where)
                return


class WatchList:
    """Radio addresses ("AA:BB:CC:DD:EE:FF") that must not appear, in every form a program
    might write them.  Hex needles are lower-case digits without separators: an address
    in either byte order (12 digits), and SHA-256/SHA-1/MD5 of its bytes and of its text
    (whole, and the first 16 digits).  Raw needles are its bytes, either order, and their
    base64."""

    def __init__(self, addresses: Iterable[str]):
        import numpy as np

        self.hex: set[str] = set()
        raw: list[bytes] = []
        for text in addresses:
            text = text.strip()
            if not text or text.startswith("#"):
                continue
            digits = re.sub(r"[^0-9A-Fa-f]", "", text)
            if len(digits) != 12:
                raise AuditInputError(f"watch list: {text!r} is not a 6-byte address "
                                      "(write it as AA:BB:CC:DD:EE:FF)")
            b = bytes.fromhex(digits)
            for form in (b, b[::-1]):
                self.hex.add(form.hex())
                raw += [form, base64.b64encode(form)]
            spellings = [b, ":".join(f"{x:02X}" for x in b).encode(),
                         ":".join(f"{x:02x}" for x in b).encode(), digits.lower().encode(),
                         digits.upper().encode()]
            for spelling in spellings:
                for algo in ("sha256", "sha1", "md5"):
                    h = hashlib.new(algo, spelling).hexdigest()
                    self.hex.add(h)
                    self.hex.add(h[:16])
        self.count = len(raw) // 4
        self.lengths = sorted({len(n) for n in self.hex})
        # per width, the raw needles as sorted integers, for a vectorised lookup
        self.raw = {width: np.unique(np.array([int.from_bytes(n, "big") for n in raw
                                               if len(n) == width], dtype=np.uint64))
                    for width in sorted({len(n) for n in raw})}

    def hits(self, data: bytes, raw: bool = True) -> str | None:
        """A masked needle found in `data`, or None."""
        for m in _HEXISH.finditer(data.lower()):
            run = m.group(0).replace(b":", b"").replace(b"-", b"").decode()
            for n in self.lengths:
                for i in range(0, len(run) - n + 1):
                    if run[i:i + n] in self.hex:
                        return mask(run[i:i + n])
        if not raw or len(data) > _RAW_SCAN_MAX_BYTES or not data.strip(b"\0"):
            return None  # too big for the byte scan, or all zeros (the outbox's disk reserve)
        # Raw bytes (an address, or its base64) anywhere, binary files included: every
        # window of the file as an integer, matched against the sorted needles at once.
        import numpy as np

        for width, wanted in self.raw.items():
            keys = _window_keys(data, width)
            at = np.minimum(np.searchsorted(wanted, keys), len(wanted) - 1)
            found = np.nonzero(wanted[at] == keys)[0]
            if len(found):
                return mask(data[found[0]:found[0] + width].hex())
        return None


def _window_keys(data: bytes, width: int):
    """Every `width`-byte window of `data` (width <= 8) as one unsigned 64-bit integer."""
    import numpy as np

    buf = np.frombuffer(data, dtype=np.uint8)
    if len(buf) < width:
        return np.zeros(0, dtype=np.uint64)
    keys = np.zeros(len(buf) - width + 1, dtype=np.uint64)
    for i in range(width):
        keys = (keys << np.uint64(8)) | buf[i:len(buf) - width + 1 + i].astype(np.uint64)
    return keys


# -- the gateway's files ----------------------------------------------------------------------


def scan_data_dir(data_dir: Path | None, logs: list[Path], result: CheckResult,
                  allowed: set[str], watch: WatchList | None) -> None:
    scanner = IdentifierScanner(result, allowed)
    files = sorted(p for p in data_dir.rglob("*") if p.is_file()) if data_dir else []
    files += [p for p in logs if p not in files]
    scanned = 0
    for path in files:
        name = str(path.relative_to(data_dir)) if data_dir and path.is_relative_to(
            data_dir) else str(path)
        if path.name in _SECRET_FILES:
            continue
        scanned += 1
        if watch is not None:
            hit = watch.hits(path.read_bytes())
            if hit:
                result.add(f"{name} holds a non-fleet radio address or a derivative of one "
                           f"({hit}): the gateway must drop every foreign advertisement before "
                           "storing or logging anything", name)
        if path.name.endswith(_SQLITE_SIDE):
            continue  # their committed pages are read through the database itself
        if path.suffix in (".sqlite", ".db"):
            _scan_sqlite(path, name, scanner, result)
        elif path.name == "audit.log":
            _scan_audit_log(path, name, scanner)
        elif path.suffix == ".pub":
            continue  # the gateway's public key (PEM): published on purpose
        else:
            _scan_text(path, name, scanner)
    result.figures["files_scanned"] = scanned
    result.figures["texts_scanned"] = scanner.texts


def _scan_text(path: Path, name: str, scanner: IdentifierScanner) -> None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise AuditInputError(f"{path}: cannot be read ({exc.strerror})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        scanner.scan(line, f"{name} line {lineno}")


def _scan_audit_log(path: Path, name: str, scanner: IdentifierScanner) -> None:
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace")
                                  .splitlines(), 1):
        try:
            doc = json.loads(line)
        except ValueError:
            scanner.scan(line, f"{name} line {lineno}")
            continue
        _scan_json(doc, f"{name} line {lineno}", scanner)


def _scan_json(doc, where: str, scanner: IdentifierScanner) -> None:
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in _PROVENANCE_KEYS:
                continue
            scanner.scan(str(key), where)
            _scan_json(value, where, scanner)
    elif isinstance(doc, list):
        for value in doc:
            _scan_json(value, where, scanner)
    elif isinstance(doc, str):
        scanner.scan(doc, where)


def _connect_ro(path: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.Error as exc:
        raise AuditInputError(f"{path}: not a readable SQLite database ({exc})") from None


def _scan_sqlite(path: Path, name: str, scanner: IdentifierScanner,
                 result: CheckResult) -> None:
    from gateway.forward import parse_line

    db = _connect_ro(path)
    try:
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        for table in tables:
            cols = [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]
            for row in db.execute(f'SELECT * FROM "{table}"'):
                where = f"{name} table {table}"
                for col, value in zip(cols, row):
                    if (table, col) in (("policy", "hash"), ("policy_seen", "hash")):
                        continue  # the policy's own hash: provenance
                    if table == "batch" and col == "record":
                        try:
                            _scan_json(json.loads(value), where, scanner)
                        except (TypeError, ValueError):
                            scanner.scan(str(value), where)
                    elif table == "outbox" and col == "line":
                        try:
                            measurement, tags, fields, _t = parse_line(value)
                        except ValueError:
                            scanner.scan(str(value), where)
                            continue
                        if measurement in _READINGS:
                            _names_ok(result, tags, fields, where)
                        for tag in tags.values():
                            scanner.scan(tag, where)
                    elif isinstance(value, str):
                        scanner.scan(value, where)
                    elif isinstance(value, bytes) and table not in ("replay_window",):
                        scanner.scan(value.hex(), where)
    except sqlite3.Error as exc:
        raise AuditInputError(f"{path}: cannot be read ({exc})") from None
    finally:
        db.close()


def _names_ok(result: CheckResult, tags: dict, fields: dict, where: str) -> None:
    for key in fields:
        if key not in _FIELDS:
            result.add(f"{where} holds a field {key!r} that is no registry metric: only "
                       "registry metrics, 'suppressed' and 'batch' may be stored", where)
    for key in tags:
        if key not in _TAGS and key not in ("gateway", "slot"):
            result.add(f"{where} holds a tag {key!r}: only node, zone, site and kind are "
                       "stored with a reading", where)


# -- the store and the policy -----------------------------------------------------------------


def read_store(spec: str):
    """Every point of a store: `StoredReading`s (gateway/provenance.py reads both kinds)."""
    from gateway.provenance import read_local, read_victoriametrics

    if spec.startswith("sqlite:"):
        path = Path(spec[len("sqlite:"):].removeprefix("//"))
        if not path.is_file():
            raise AuditInputError(f"{spec}: no such store file")
        try:
            return read_local(path, 0, 2**32 - 1)
        except sqlite3.Error as exc:
            raise AuditInputError(f"{spec}: not a readable store ({exc})") from None
    if spec.startswith(("http://", "https://")):
        import time

        try:
            return read_victoriametrics(spec, 0, int(time.time()) + 366 * DAY_S)
        except OSError as exc:
            raise AuditInputError(f"{spec}: the store did not answer ({exc})") from None
    raise AuditInputError(f"store {spec!r}: give sqlite:PATH or http://HOST:PORT")


def _outbox_points(data_dir: Path | None):
    """Readings still held in the outbox (anonymised, not yet forwarded)."""
    from gateway.forward import parse_line
    from gateway.provenance import StoredReading

    path = data_dir / "outbox.sqlite" if data_dir else None
    if path is None or not path.is_file():
        return []
    db = _connect_ro(path)
    try:
        rows = db.execute("SELECT line FROM outbox").fetchall()
    except sqlite3.Error:
        rows = []
    finally:
        db.close()
    out = []
    for (line,) in rows:
        try:
            measurement, tags, fields, time_s = parse_line(line)
        except ValueError:
            continue
        out.append(StoredReading(measurement, tags, time_s, fields))
    return out


def _day(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def check_policy(points, policy, min_count: int, accountant: Path | None,
                 audit_log: Path | None, result: CheckResult) -> None:
    from gateway.anonymise import BINS, COUNT, SUPPRESSED, SUPPRESSED_REASONS

    for name, zp in [("defaults", policy.defaults), *policy.zones.items()]:
        if zp.crowd_min_count < min_count:
            result.add(f"the policy ({policy.source}, {policy.id}) lets "
                       f"{'zones without a table' if name == 'defaults' else 'zone ' + name} "
                       f"release crowd counts from {zp.crowd_min_count} devices; the required "
                       f"minimum is k = {min_count}", "policy")
    suppression: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    releases: dict[tuple[str, int], int] = defaultdict(int)
    node_zone: dict[str, str] = {}
    crowd_points = 0
    for p in points:
        if p.measurement != "crowd":
            continue
        crowd_points += 1
        zone, node = p.tags.get("zone", "?"), p.tags.get("node", "?")
        node_zone[node] = zone
        zp = policy.for_zone(zone)
        k = max(zp.crowd_min_count, min_count)
        day = p.time_s // DAY_S
        when = dt.datetime.fromtimestamp(p.time_s, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        reason = p.fields.get(SUPPRESSED)
        key = SUPPRESSED_REASONS.get(int(reason), str(reason)) if reason is not None else \
            "released"
        suppression[zone][_day(day)][key] += 1
        count = p.fields.get(COUNT)
        if count is not None and 0 < count < k:
            result.add(f"node {node} released crowd_count {count:g} at {when} in zone {zone}: "
                       f"below k = {k}, so it must have been withheld", f"store {when}", node)
        small_bins = [b for b in BINS if 0 < p.fields.get(b, 0) < k]
        if small_bins:
            result.add(f"node {node} released {small_bins[0]} = {p.fields[small_bins[0]]:g} at "
                       f"{when} in zone {zone}: an RSSI bin below k = {k} must withhold all "
                       "bins", f"store {when}", node)
        res = zp.crowd_time_resolution_s
        if res and reason != 3 and p.time_s % res:
            result.add(f"node {node}'s crowd point at {when} is not on the {res} s grid the "
                       f"{zone} policy requires", f"store {when}", node)
        if count is not None or any(b in p.fields for b in BINS):
            releases[(node, day)] += 1
    result.figures["crowd_points"] = crowd_points
    result.figures["suppression"] = {z: dict(d) for z, d in suppression.items()}

    spent = _read_accountant(accountant, result) if accountant else {}
    for (node, day), n in sorted(releases.items()):
        zp = policy.for_zone(node_zone.get(node, ""))
        if zp.noise_on:
            need = zp.crowd_noise_epsilon * n
            have = spent.get((node, day), Fraction(0))
            if have < need:
                result.add(f"node {node} released {n} crowd counts on {_day(day)} in a zone with "
                           f"noise on (epsilon {float(zp.crowd_noise_epsilon):g} each) but the "
                           f"accountant records only {float(have):g} spent: noise was not drawn "
                           "for every release", f"accountant {_day(day)}", node)
    epsilon: dict = defaultdict(lambda: defaultdict(float))
    for (node, day), value in sorted(spent.items()):
        zone = node_zone.get(node, "?")
        zp = policy.for_zone(zone)
        budget = zp.daily_epsilon_budget
        if value > budget:
            result.add(f"node {node} spent epsilon {float(value):g} on {_day(day)}, over its "
                       f"daily budget of {float(budget):g} (zone {zone})",
                       f"accountant {_day(day)}", node)
        epsilon[zone][_day(day)] = max(epsilon[zone][_day(day)], float(value))
    result.figures["epsilon_max_per_node"] = {z: dict(d) for z, d in epsilon.items()}
    if audit_log is not None and audit_log.is_file():
        _check_batches(audit_log, policy, result)


def _read_accountant(path: Path, result: CheckResult) -> dict[tuple[str, int], Fraction]:
    if not path.is_file():
        return {}
    db = _connect_ro(path)
    try:
        rows = db.execute("SELECT node, day, spent, spent_approx FROM epsilon_spent").fetchall()
    except sqlite3.Error as exc:
        raise AuditInputError(f"{path}: not an epsilon accountant ({exc})") from None
    finally:
        db.close()
    out = {}
    for node, day, spent, approx in rows:
        try:
            value = Fraction(spent)
        except (ValueError, ZeroDivisionError):
            result.add(f"the accountant's entry for node {node} on {_day(day)} is not an exact "
                       f"fraction ({spent!r}): the file was edited", "accountant", node)
            continue
        if abs(float(value) - float(approx)) > 1e-9 * max(1.0, float(value)):
            result.add(f"the accountant's entry for node {node} on {_day(day)} says {spent} but "
                       f"its decimal copy says {approx}: the file was edited", "accountant", node)
        out[(node, int(day))] = value
    result.figures["accountant_entries"] = len(out)
    return out


def _check_batches(path: Path, policy, result: CheckResult) -> None:
    wrong: dict[str, list[int]] = defaultdict(list)
    batches = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)["record"]
        except (ValueError, KeyError, TypeError):
            continue
        batches += 1
        made = f"{record.get('policy_version')}/{str(record.get('policy_hash', ''))[:12]}"
        if made != policy.id:
            wrong[made].append(record.get("seq", -1))
    result.figures["batches"] = batches
    for made, seqs in wrong.items():
        result.add(f"{len(seqs)} batches (seq {min(seqs)}..{max(seqs)}) were anonymised under "
                   f"policy {made}, not under the policy given ({policy.id}): audit them with "
                   "that policy file", "audit.log")


def audit_store(data_dir: str | Path | None, store: str | None, policy, min_count: int = 5,
                logs: Iterable[str | Path] = (), watch: Iterable[str] | None = None,
                keyring=None) -> CheckResult:
    result = CheckResult("store")
    ddir = Path(data_dir) if data_dir else None
    if ddir is not None and not ddir.is_dir():
        raise AuditInputError(f"{ddir}: no such gateway data directory")
    log_paths = [Path(p) for p in logs]
    for p in log_paths:
        if not p.is_file():
            raise AuditInputError(f"{p}: no such log file")
    allowed = {policy.hash, policy.hash[:12], policy.id}
    if keyring is not None:
        allowed |= {e.node for e in keyring}
    needles = WatchList(watch) if watch is not None else None
    if ddir is not None or log_paths:
        scan_data_dir(ddir, log_paths, result, allowed, needles)
    points = list(_outbox_points(ddir))
    result.figures["outbox_points"] = len(points)
    if store:
        stored = read_store(store)
        result.figures["store_points"] = len(stored)
        scanner = IdentifierScanner(result, allowed)
        # A series repeats its tags and field names in every point: each distinct set is
        # judged once, at the first point that carries it.
        seen_tags: set[tuple] = set()
        seen_names: set[tuple] = set()
        for p in stored:
            if p.measurement == "provenance":
                continue
            where = f"store point {p.measurement} {p.time_s}"
            names = (p.measurement, *p.tags, *p.fields)
            if p.measurement in _READINGS and names not in seen_names:
                seen_names.add(names)  # the gateway's own points (health, gaps) differ
                _names_ok(result, p.tags, p.fields, where)
            tags = tuple(p.tags.values())
            if tags in seen_tags:
                continue
            seen_tags.add(tags)
            for tag in tags:
                scanner.scan(tag, where)
            if needles is not None:
                hit = needles.hits(" ".join(tags).encode(), raw=False)
                if hit:
                    result.add(f"{where} carries a non-fleet radio address ({hit})", where)
        points += stored
    check_policy(points, policy, min_count,
                 ddir / "privacy.sqlite" if ddir else None,
                 ddir / "audit.log" if ddir else None, result)
    return result
