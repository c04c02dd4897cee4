"""The fleet registry: zones, sites, nodes and gateways in one SQLite file, with node keys
sealed at rest.

In:  a registry path (`--registry PATH`, else $DORDT_FLEET_REGISTRY, else ./fleet.sqlite)
     and, for anything that touches node keys, the 32-byte master key (`--master-key FILE`,
     else $DORDT_FLEET_MASTER_KEY_FILE, else $DORDT_FLEET_MASTER_KEY; 64 hex digits).
Out: `Registry`: `.db` (sqlite3, WAL, foreign keys on), listings as plain dicts (never a
     key), and the node keys in the clear only through `node_keys()` for a keyring.
On failure: `RegistryError` with what was wrong and what to do (the CLI maps it to
     `UserError`, exit 2).  A wrong master key is one line; key bytes never appear in a
     message.

Schema: `fleet/migrations/NNNN_name.sql`, applied in sorted order, each in its own
transaction; `PRAGMA user_version` is the number of the last one applied.  Numbers
0001-0009 are the registry's, 0010-0019 rollouts' (fleet/rollout.py), 0020-0029 balena's
(fleet/balena.py).  A file whose user_version is above every known migration was written by
a newer dordt and is refused rather than guessed at.

Keys at rest: AES-256-GCM under the master key, a fresh 12-byte nonce per key, associated
data "dordt-node-key v1|<node>|<key id>", so a sealed key copied to another row does not
open.  The registry also keeps a sealed check value so a wrong master key is told apart
from a damaged row.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sqlite3
from pathlib import Path

DEFAULT_PATH = "fleet.sqlite"
ENV_PATH = "DORDT_FLEET_REGISTRY"
ENV_MASTER_KEY = "DORDT_FLEET_MASTER_KEY"
ENV_MASTER_KEY_FILE = "DORDT_FLEET_MASTER_KEY_FILE"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MASTER_KEY_LEN = 32
STATES = ("active", "retired", "revoked")
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_CHECK_AAD = b"dordt-registry master key check v1"
_CHECK_PLAIN = b"dordt registry"


class RegistryError(ValueError):
    """A registry, master key or request that cannot be used; never holds key material."""


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- migrations ---------------------------------------------------------------------------


def migrations(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, Path]]:
    """(number, file) of every migration, sorted; refuses two files with one number."""
    found: dict[int, Path] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _MIGRATION_NAME.match(path.name)
        if m is None:
            raise RegistryError(f"{path}: a migration is named NNNN_name.sql")
        number = int(m.group(1))
        if number in found:
            raise RegistryError(f"{path} and {found[number]} have the same number")
        found[number] = path
    return sorted(found.items())


def migrate(db: sqlite3.Connection, path: Path | str,
            directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply the migrations above the file's user_version, each in one transaction; the
    numbers applied.  A file newer than this dordt is refused, untouched."""
    known = migrations(directory)
    have = db.execute("PRAGMA user_version").fetchone()[0]
    newest = known[-1][0] if known else 0
    if have > newest:
        raise RegistryError(f"{path}: registry schema {have} was written by a newer version of "
                            f"dordt (this one knows up to {newest}); update dordt, or restore "
                            "a backup made with this version")
    applied = []
    for number, sql_path in known:
        if number <= have:
            continue
        script = sql_path.read_text(encoding="utf-8")
        # executescript() commits first and runs outside Python's transaction handling, so
        # the transaction (and user_version, which is transactional) is part of the script.
        try:
            db.executescript(f"BEGIN;\n{script}\n;PRAGMA user_version = {number};\nCOMMIT;")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.rollback()
            raise RegistryError(f"{path}: migration {sql_path.name} failed ({exc}); the "
                                "registry is left at schema "
                                f"{db.execute('PRAGMA user_version').fetchone()[0]}") from None
        applied.append(number)
    return applied


# -- master key ---------------------------------------------------------------------------


def parse_master_key(text: str, where: str) -> bytes:
    """64 hex digits (surrounding white space ignored); the message never echoes the text."""
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != MASTER_KEY_LEN:
        raise RegistryError(f"{where}: a master key is {MASTER_KEY_LEN * 2} hex digits on one "
                            "line (make one with `dordt fleet registry init --master-key FILE`)")
    return key


def load_master_key(path: str | None = None, env: dict | None = None) -> bytes | None:
    """From `path`, else $DORDT_FLEET_MASTER_KEY_FILE, else $DORDT_FLEET_MASTER_KEY; None
    when none is given."""
    env = os.environ if env is None else env
    path = path or env.get(ENV_MASTER_KEY_FILE)
    if path:
        try:
            text = Path(path).read_text(encoding="ascii")
        except FileNotFoundError:
            raise RegistryError(f"{path}: no master key file there (make one with `dordt fleet "
                                "registry init --master-key FILE`)") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not text"
            raise RegistryError(f"{path}: cannot read the master key ({reason})") from None
        return parse_master_key(text, path)
    if env.get(ENV_MASTER_KEY):
        return parse_master_key(env[ENV_MASTER_KEY], f"${ENV_MASTER_KEY}")
    return None


def new_master_key_file(path: Path) -> bytes:
    """A fresh random master key written to `path` (mode 0600); refuses to overwrite."""
    from fleet.files import write_file_atomic

    if path.exists():
        raise RegistryError(f"{path} exists already; use it, or move it away first")
    key = os.urandom(MASTER_KEY_LEN)
    write_file_atomic(path, key.hex().encode() + b"\n", 0o600)
    return key


def _aesgcm(master_key: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(master_key)


def key_aad(node: str, key_id: int) -> bytes:
    return f"dordt-node-key v1|{node}|{key_id}".encode()


# -- the registry -------------------------------------------------------------------------


class Registry:
    """One open registry file.  Use as a context manager, or call close()."""

    def __init__(self, db: sqlite3.Connection, path: Path, master_key: bytes | None):
        self.db = db
        self.path = path
        self._master_key = master_key

    def __repr__(self) -> str:  # never the master key
        return f"Registry({str(self.path)!r})"

    @classmethod
    def open(cls, path: str | Path, master_key: bytes | None = None,
             create: bool = False) -> Registry:
        path = Path(path)
        if not create and not path.exists():
            raise RegistryError(f"{path}: no registry there; make one with `dordt fleet "
                                "registry init` (or give --registry / $DORDT_FLEET_REGISTRY)")
        if create and path.parent and not path.parent.exists():
            from fleet.files import mkdirs_private

            mkdirs_private(path.parent)
        try:
            fresh = not path.exists()
            if fresh:
                # The registry holds sealed keys only, but its metadata is still the fleet's
                # inventory: private to its owner from the start.
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            db = sqlite3.connect(path, timeout=10.0)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"{path}: not a registry database ({exc})") from None
        reg = cls(db, path, master_key)
        try:
            # migrations first: a file from a newer dordt is refused before anything (even
            # the journal mode in its header) is changed
            migrate(db, path)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            reg._check_master_key()
        except sqlite3.DatabaseError as exc:
            db.close()
            raise RegistryError(f"{path}: not a registry database ({exc})") from None
        except BaseException:
            db.close()
            raise
        return reg

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- master key ---------------------------------------------------------------------

    def _check_master_key(self) -> None:
        """Seal the check value on first use; afterwards a key that does not open it is
        refused here, in one line, before any row is touched."""
        if self._master_key is None:
            return
        from cryptography.exceptions import InvalidTag

        row = self.db.execute("SELECT value FROM meta WHERE name = 'master_check'").fetchone()
        aead = _aesgcm(self._master_key)
        if row is None:
            nonce = os.urandom(12)
            with self.db:
                self.db.execute("INSERT INTO meta(name, value) VALUES ('master_check', ?)",
                                (nonce + aead.encrypt(nonce, _CHECK_PLAIN, _CHECK_AAD),))
            return
        value = bytes(row[0])
        try:
            aead.decrypt(value[:12], value[12:], _CHECK_AAD)
        except InvalidTag:
            raise RegistryError(f"{self.path}: wrong master key: it does not open this "
                                "registry; give the key the registry was made with") from None

    def _need_master_key(self) -> bytes:
        if self._master_key is None:
            raise RegistryError("this needs the registry's master key: give --master-key FILE "
                                f"or set ${ENV_MASTER_KEY_FILE} or ${ENV_MASTER_KEY}")
        return self._master_key

    def seal_key(self, node: str, key_id: int, key: bytes) -> tuple[bytes, bytes]:
        nonce = os.urandom(12)
        return nonce, _aesgcm(self._need_master_key()).encrypt(nonce, key,
                                                              key_aad(node, key_id))

    def open_key(self, node: str, key_id: int, nonce: bytes, sealed: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return _aesgcm(self._need_master_key()).decrypt(bytes(nonce), bytes(sealed),
                                                            key_aad(node, key_id))
        except InvalidTag:
            raise RegistryError(f"{self.path}: the sealed key {key_id} of node {node} does not "
                                "open (damaged or copied from another row); restore it from "
                                "a backup or rotate the node's key") from None

    def change_master_key(self, new_master_key: bytes) -> int:
        """Re-seal every node key and the check value under `new_master_key`, in one
        transaction (a crash leaves all under the old key or all under the new one); the
        number of keys.  Old backups stay sealed under the old key: keep it while they do."""
        from cryptography.exceptions import InvalidTag

        if len(new_master_key) != MASTER_KEY_LEN:
            raise RegistryError(f"a master key has {MASTER_KEY_LEN} bytes")
        self._need_master_key()
        rows = self.db.execute("SELECT node, key_id, nonce, sealed FROM node_keys").fetchall()
        new = _aesgcm(new_master_key)
        with self.db:
            for r in rows:
                key = self.open_key(r["node"], r["key_id"], r["nonce"], r["sealed"])
                nonce = os.urandom(12)
                self.db.execute("UPDATE node_keys SET nonce = ?, sealed = ? WHERE node = ? AND "
                                "key_id = ?", (nonce, new.encrypt(nonce, key,
                                                                  key_aad(r["node"], r["key_id"])),
                                               r["node"], r["key_id"]))
            nonce = os.urandom(12)
            self.db.execute("UPDATE meta SET value = ? WHERE name = 'master_check'",
                            (nonce + new.encrypt(nonce, _CHECK_PLAIN, _CHECK_AAD),))
        try:  # what was written opens with the new key (a cheap check before we forget)
            value = bytes(self.db.execute("SELECT value FROM meta WHERE name = "
                                          "'master_check'").fetchone()[0])
            new.decrypt(value[:12], value[12:], _CHECK_AAD)
        except InvalidTag:  # pragma: no cover - would be a bug above
            raise RegistryError("re-sealing failed; restore the backup") from None
        self._master_key = new_master_key
        return len(rows)

    # -- listings -----------------------------------------------------------------------

    def nodes(self, zone: str | None = None, state: str | None = None) -> list[dict]:
        sql = "SELECT * FROM nodes"
        where, params = [], []
        if zone is not None:
            where.append("zone = ?")
            params.append(zone)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.db.execute(sql + " ORDER BY node", params).fetchall()
        key_ids = self._key_ids()
        return [_node_dict(r, key_ids.get(r["node"], [])) for r in rows]

    def node(self, node: str) -> dict:
        row = self.db.execute("SELECT * FROM nodes WHERE node = ?", (node,)).fetchone()
        if row is None:
            raise RegistryError(f"node {node} is not in the registry {self.path}")
        return _node_dict(row, self._key_ids(node).get(node, []))

    def _key_ids(self, node: str | None = None) -> dict[str, list[dict]]:
        sql = "SELECT node, key_id, state, fingerprint, created_at FROM node_keys"
        rows = self.db.execute(sql + (" WHERE node = ?" if node else "") + " ORDER BY key_id",
                               (node,) if node else ()).fetchall()
        out: dict[str, list[dict]] = {}
        for r in rows:
            out.setdefault(r["node"], []).append(
                {"key_id": r["key_id"], "state": r["state"], "fingerprint": r["fingerprint"],
                 "created_at": r["created_at"]})
        return out

    def gateways(self) -> list[dict]:
        rows = self.db.execute("SELECT * FROM gateways ORDER BY name").fetchall()
        return [_gateway_dict(r) for r in rows]

    def gateway(self, name: str) -> dict:
        row = self.db.execute("SELECT * FROM gateways WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise RegistryError(f"gateway {name} is not in the registry {self.path} (add it "
                                "with `dordt fleet gateway add`)")
        return _gateway_dict(row)


    # -- zones and sites --------------------------------------------------------------

    def sync_zones(self, zones_path: str | Path | None = None) -> int:
        """Add or update the zones and sites of the zones file (hardware/sites.py); the
        number of sites.  Sites the file no longer has stay while nodes stand there."""
        from hardware.sites import ZonesError, load_zones

        try:
            zones = load_zones(zones_path)
        except ZonesError as exc:
            raise RegistryError(str(exc)) from None
        n = 0
        with self.db:
            for z in zones:
                self.db.execute("INSERT INTO zones(zone, number, name) VALUES (?, ?, ?) "
                                "ON CONFLICT(zone) DO UPDATE SET number = excluded.number, "
                                "name = excluded.name", (z.id, z.number, z.name))
                for site in z.sites:
                    self.db.execute(
                        "INSERT INTO sites(site, zone, lat, lon, kinds) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT(site) DO UPDATE SET zone = excluded.zone, lat = "
                        "excluded.lat, lon = excluded.lon, kinds = excluded.kinds",
                        (site.id, z.id, site.lat, site.lon, ",".join(site.kinds)))
                    n += 1
        return n

    def zones(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM zones ORDER BY number")]

    def _check_zone(self, zone: str) -> None:
        if self.db.execute("SELECT 1 FROM zones WHERE zone = ?", (zone,)).fetchone() is None:
            known = [r[0] for r in self.db.execute("SELECT zone FROM zones ORDER BY number")]
            raise RegistryError(f"zone {zone!r} is not in the registry (known: "
                                f"{', '.join(known) or 'none: run `dordt fleet registry init`'})")

    # -- nodes ------------------------------------------------------------------------

    def add_node(self, node: str, kind: str, zone: str, site: str, key: bytes, key_id: int = 0,
                 hardware: str = "", firmware: str = "", enrolled_at: str | None = None) -> None:
        """A new node with its first key, sealed.  Refuses a node id it has (a node id is
        enrolled once: docs/protocol.md §6.3)."""
        from fleet.bundle import fingerprint
        from hardware.sites import ZonesError, placement

        if len(node) != 8 or any(c not in "0123456789abcdef" for c in node):
            raise RegistryError(f"node {node!r}: a node id is 8 lower-case hex digits")
        if len(key) != 32:
            raise RegistryError(f"node {node}: a node key has 32 bytes")
        self._check_zone(zone)
        try:
            placement(zone, site, kind)
        except ZonesError as exc:
            raise RegistryError(str(exc)) from None
        if self.db.execute("SELECT 1 FROM nodes WHERE node = ?", (node,)).fetchone():
            raise RegistryError(f"node {node} is in the registry already: a node id is "
                                "enrolled once; retire or revoke the old board and give the "
                                "new one a new node id")
        nonce, sealed = self.seal_key(node, key_id, key)
        now = utc_now()
        with self.db:
            self.db.execute("INSERT INTO nodes(node, kind, zone, site, hardware, firmware, "
                            "enrolled_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (node, kind, zone, site, hardware, firmware, enrolled_at or now))
            self.db.execute("INSERT INTO node_keys(node, key_id, state, nonce, sealed, "
                            "fingerprint, created_at) VALUES (?, ?, 'current', ?, ?, ?, ?)",
                            (node, key_id, nonce, sealed, fingerprint(key), now))

    def import_bundle(self, opened: list[tuple[dict, bytes]]) -> tuple[list[str], list[str]]:
        """The entries of an opened enrolment bundle (fleet/bundle.py open_bundle): (added,
        already there).  All or nothing: one conflicting entry refuses the whole bundle."""
        from fleet.bundle import fingerprint

        added, present = [], []
        plan = []
        for entry, key in opened:
            node = entry["node"]
            row = self.db.execute("SELECT fingerprint FROM node_keys WHERE node = ? AND "
                                  "key_id = ?", (node, entry["key_id"])).fetchone()
            known = self.db.execute("SELECT 1 FROM nodes WHERE node = ?", (node,)).fetchone()
            if known and row is not None and row[0] == fingerprint(key):
                present.append(node)
                continue
            if known or node in (e["node"] for e, _ in plan):
                raise RegistryError(f"node {node} is in the registry already with another key: "
                                    "a node id is enrolled once; revoke the old board's entry "
                                    "and give the new board a new node id. Nothing was "
                                    "imported")
            plan.append((entry, key))
        with self.db:  # one transaction: every entry, or none on an error
            for entry, key in plan:
                self._add_node_in_tx(entry, key)
                added.append(entry["node"])
        return added, present

    def _add_node_in_tx(self, entry: dict, key: bytes) -> None:
        from fleet.bundle import fingerprint
        from hardware.sites import ZonesError, placement

        node = entry["node"]
        self._check_zone(entry["zone"])
        try:
            placement(entry["zone"], entry["site"], entry["kind"])
        except ZonesError as exc:
            raise RegistryError(f"{exc}. Nothing was imported") from None
        nonce, sealed = self.seal_key(node, entry["key_id"], key)
        self.db.execute("INSERT INTO nodes(node, kind, zone, site, hardware, enrolled_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (node, entry["kind"], entry["zone"],
                                                     entry["site"], entry.get("board", ""),
                                                     entry.get("enrolled_at") or utc_now()))
        self.db.execute("INSERT INTO node_keys(node, key_id, state, nonce, sealed, fingerprint, "
                        "created_at) VALUES (?, ?, 'current', ?, ?, ?, ?)",
                        (node, entry["key_id"], nonce, sealed, fingerprint(key), utc_now()))

    def import_keyring(self, ring) -> tuple[list[str], list[str]]:
        """The nodes of a plain keyring (fleet/keyring.py: today's keyring.json), to move a
        fleet into the registry: (added, already there with the same keys).  A node with
        several keys comes in mid-rotation: its lowest key id current, the others next.
        All or nothing, as import_bundle()."""
        from fleet.bundle import fingerprint

        added, present, plan = [], [], []
        for entry in sorted(ring, key=lambda e: e.node_id):
            node = entry.node
            have = {k["key_id"]: k["fingerprint"] for k in self._key_ids(node).get(node, [])}
            if have and have == {k: fingerprint(v) for k, v in entry.keys.items()}:
                present.append(node)
                continue
            if self.db.execute("SELECT 1 FROM nodes WHERE node = ?", (node,)).fetchone():
                raise RegistryError(f"node {node} is in the registry already with other keys; "
                                    "nothing was imported")
            plan.append(entry)
        with self.db:
            for entry in plan:
                first, *rest = sorted(entry.keys)
                self._add_node_in_tx({"node": entry.node, "kind": entry.kind,
                                      "zone": entry.zone, "site": entry.site, "key_id": first},
                                     entry.keys[first])
                for key_id in rest:
                    nonce, sealed = self.seal_key(entry.node, key_id, entry.keys[key_id])
                    self.db.execute(
                        "INSERT INTO node_keys(node, key_id, state, nonce, sealed, fingerprint, "
                        "created_at) VALUES (?, ?, 'next', ?, ?, ?, ?)",
                        (entry.node, key_id, nonce, sealed, fingerprint(entry.keys[key_id]),
                         utc_now()))
                if entry.revoked:
                    self.db.execute("UPDATE nodes SET state = 'revoked' WHERE node = ?",
                                    (entry.node,))
                added.append(entry.node)
        return added, present

    def set_state(self, node: str, state: str) -> dict:
        """retire (out of service: left out of keyrings) or revoke (listed as revoked, so
        gateways refuse its frames by name).  Revoked is final."""
        if state not in STATES:
            raise RegistryError(f"state {state!r}: use one of {', '.join(STATES)}")
        have = self.node(node)["state"]
        if have == "revoked" and state != "revoked":
            raise RegistryError(f"node {node} is revoked; a revoked node is not brought back: "
                                "enrol the board again under a new node id")
        with self.db:
            self.db.execute("UPDATE nodes SET state = ? WHERE node = ?", (state, node))
        return self.node(node)

    def note_seen(self, node: str, when: str, firmware: str | None = None) -> None:
        """Record that `node` was heard at `when` (ISO 8601 UTC; an older time does not move
        last_seen back) running `firmware` (None: unchanged).  For the parts that read the
        store or the rollouts (fleet health, OTA)."""
        with self.db:
            self.db.execute("UPDATE nodes SET last_seen = max(coalesce(last_seen, ''), ?), "
                            "firmware = coalesce(?, firmware) WHERE node = ?",
                            (when, firmware, node))

    # -- key rotation (docs/fleet.md "Key rotation"; docs/protocol.md §4, §6.3) --------

    def rotate_key(self, node: str) -> tuple[int, bytes]:
        """Start a rotation: a fresh key under the next key id, kept beside the current one
        (keyrings carry both) until finish_rotation().  (key id, key): the key is for the
        rekey file only (fleet/rekey.py), never for printing."""
        import secrets

        info = self.node(node)
        if info["state"] != "active":
            raise RegistryError(f"node {node} is {info['state']}; only an active node's key "
                                "is rotated")
        keys = info["keys"]
        if any(k["state"] == "next" for k in keys):
            nxt = next(k["key_id"] for k in keys if k["state"] == "next")
            raise RegistryError(f"node {node} is in a rotation to key {nxt} already: finish it "
                                "(`rotate-key --finish`) or take that key to the node")
        new_id = max(k["key_id"] for k in keys) + 1
        if new_id > 255:
            raise RegistryError(f"node {node} has used every key id (0..255): enrol the board "
                                "again under a new node id")
        from fleet.bundle import fingerprint

        key = secrets.token_bytes(32)
        nonce, sealed = self.seal_key(node, new_id, key)
        with self.db:
            self.db.execute("INSERT INTO node_keys(node, key_id, state, nonce, sealed, "
                            "fingerprint, created_at) VALUES (?, ?, 'next', ?, ?, ?, ?)",
                            (node, new_id, nonce, sealed, fingerprint(key), utc_now()))
        return new_id, key

    def finish_rotation(self, node: str) -> int:
        """End a rotation: the next key becomes the only one; the old ones are deleted, so
        the next keyrings stop accepting them.  The new current key id."""
        keys = self.node(node)["keys"]
        nxt = [k["key_id"] for k in keys if k["state"] == "next"]
        if not nxt:
            raise RegistryError(f"node {node} is not in a key rotation (start one with "
                                "`dordt fleet registry rotate-key`)")
        with self.db:
            self.db.execute("DELETE FROM node_keys WHERE node = ? AND state = 'current'",
                            (node,))
            self.db.execute("UPDATE node_keys SET state = 'current' WHERE node = ?", (node,))
        return nxt[0]

    def node_key(self, node: str, key_id: int) -> bytes:
        row = self.db.execute("SELECT nonce, sealed FROM node_keys WHERE node = ? AND "
                              "key_id = ?", (node, key_id)).fetchone()
        if row is None:
            raise RegistryError(f"node {node} has no key {key_id}")
        return self.open_key(node, key_id, row["nonce"], row["sealed"])

    # -- keyrings -----------------------------------------------------------------------

    def served(self, gateway: str) -> list[str]:
        """The nodes `gateway`'s keyring lists (no keys; no master key needed)."""
        gw = self.gateway(gateway)
        return [r[0] for r in self.db.execute(
            "SELECT node FROM nodes WHERE state != 'retired' AND (gateway = ? OR (gateway IS "
            "NULL AND zone = ?)) ORDER BY node", (gateway, gw["zone"]))]

    def keyring(self, gateway: str | None = None):
        """The keyring (fleet/keyring.py) of the nodes `gateway` serves (assigned to it, or
        unassigned in its zone), or of every node; retired nodes are left out, revoked ones
        are listed as revoked.  Needs the master key."""
        from fleet.keyring import Keyring, NodeEntry

        sql = "SELECT * FROM nodes WHERE state != 'retired'"
        rows = self.db.execute(sql + " ORDER BY node").fetchall()
        if gateway is not None:
            served = set(self.served(gateway))
            rows = [r for r in rows if r["node"] in served]
        ring = Keyring()
        for row in rows:
            keys = {}
            for k in self.db.execute("SELECT key_id, nonce, sealed FROM node_keys WHERE "
                                     "node = ?", (row["node"],)).fetchall():
                keys[k["key_id"]] = self.open_key(row["node"], k["key_id"], k["nonce"],
                                                  k["sealed"])
            ring.add(NodeEntry(int(row["node"], 16), row["kind"], row["zone"], row["site"],
                               keys, row["state"] == "revoked"))
        return ring

    def assign(self, node: str, gateway: str | None) -> None:
        """Serve `node` from `gateway` explicitly (None: from its zone's gateways)."""
        self.node(node)
        if gateway is not None:
            self.gateway(gateway)
        with self.db:
            self.db.execute("UPDATE nodes SET gateway = ? WHERE node = ?", (gateway, node))

    # -- gateways -----------------------------------------------------------------------

    def add_gateway(self, name: str, zone: str, keyring_pub: str | None = None,
                    hardware: str = "") -> dict:
        from fleet.keyring_file import GATEWAY_TAG, KeyringFileError, parse_public

        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", name):
            raise RegistryError(f"gateway name {name!r}: use letters, digits, '.', '_' or '-' "
                                "(at most 63), as in its config's [gateway] id")
        self._check_zone(zone)
        if keyring_pub is not None:
            try:
                parse_public(keyring_pub, GATEWAY_TAG, f"gateway {name} keyring key")
            except KeyringFileError as exc:
                raise RegistryError(str(exc)) from None
            keyring_pub = keyring_pub.strip()
        if self.db.execute("SELECT 1 FROM gateways WHERE name = ?", (name,)).fetchone():
            raise RegistryError(f"gateway {name} is in the registry already")
        with self.db:
            self.db.execute("INSERT INTO gateways(name, zone, hardware, keyring_pub, added_at) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (name, zone, hardware, keyring_pub, utc_now()))
        return self.gateway(name)

    def note_gateway_seen(self, name: str, when: str, software: str | None = None) -> None:
        """As note_seen(), for a gateway (its heartbeats, or balena's last seen)."""
        with self.db:
            self.db.execute("UPDATE gateways SET last_seen = max(coalesce(last_seen, ''), ?), "
                            "software = coalesce(?, software) WHERE name = ?",
                            (when, software, name))

    def set_gateway_key(self, name: str, keyring_pub: str) -> dict:
        """Give a gateway its (new) keyring key: its next keyring is sealed to it."""
        from fleet.keyring_file import GATEWAY_TAG, KeyringFileError, parse_public

        self.gateway(name)
        try:
            parse_public(keyring_pub, GATEWAY_TAG, f"gateway {name} keyring key")
        except KeyringFileError as exc:
            raise RegistryError(str(exc)) from None
        with self.db:
            self.db.execute("UPDATE gateways SET keyring_pub = ? WHERE name = ?",
                            (keyring_pub.strip(), name))
        return self.gateway(name)

    def set_gateway_state(self, name: str, state: str) -> dict:
        if state not in STATES:
            raise RegistryError(f"state {state!r}: use one of {', '.join(STATES)}")
        self.gateway(name)
        with self.db:
            self.db.execute("UPDATE gateways SET state = ? WHERE name = ?", (state, name))
        return self.gateway(name)

    def issue_keyring(self, gateway: str, signer, above_serial: int = 0) -> tuple[bytes, int]:
        """The signed keyring file for `gateway` (fleet/keyring_file.py) and its serial; the
        serial is counted up in the same transaction, so two issues never share one, and
        is above `above_serial` (after a restore, the serial the gateway last took)."""
        from fleet import keyring_file

        gw = self.gateway(gateway)
        if gw["state"] != "active":
            raise RegistryError(f"gateway {gateway} is {gw['state']}: no keyring for it")
        if not gw["keyring_pub"]:
            raise RegistryError(f"gateway {gateway} has no keyring key: run `dordt gateway "
                                "keyring-key init` on it and give the .pub to `dordt fleet "
                                "gateway set-key`")
        recipient = keyring_file.parse_public(gw["keyring_pub"], keyring_file.GATEWAY_TAG,
                                              f"gateway {gateway}")
        ring = self.keyring(gateway)
        issued_at = utc_now()
        with self.db:
            serial = self.db.execute(
                "UPDATE gateways SET keyring_serial = max(keyring_serial, ?) + 1, "
                "keyring_issued_at = ? WHERE name = ? RETURNING keyring_serial",
                (above_serial, issued_at, gateway)).fetchone()[0]
        return keyring_file.issue(ring, gateway, serial, issued_at, recipient, signer), serial

    # -- backup -------------------------------------------------------------------------

    def backup(self, dest: str | Path) -> Path:
        """A consistent copy through SQLite's online backup API (the registry may be in use);
        mode 0600.  Restore: stop writers, copy the backup over the registry file (and delete
        its -wal and -shm files)."""
        dest = Path(dest)
        if dest.exists():
            raise RegistryError(f"{dest} exists already; give a new file name for the backup")
        os.close(os.open(dest, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
        try:
            target = sqlite3.connect(dest)
            try:
                self.db.backup(target)
            finally:
                target.close()
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return dest


def _node_dict(row: sqlite3.Row, keys: list[dict]) -> dict:
    return {"node": row["node"], "kind": row["kind"], "zone": row["zone"], "site": row["site"],
            "hardware": row["hardware"], "firmware": row["firmware"], "state": row["state"],
            "key_ids": [k["key_id"] for k in keys], "keys": keys,
            "last_seen": row["last_seen"], "gateway": row["gateway"],
            "enrolled_at": row["enrolled_at"]}


def _gateway_dict(row: sqlite3.Row) -> dict:
    return {"name": row["name"], "zone": row["zone"], "state": row["state"],
            "hardware": row["hardware"], "software": row["software"],
            "keyring_pub": row["keyring_pub"], "keyring_serial": row["keyring_serial"],
            "keyring_issued_at": row["keyring_issued_at"], "added_at": row["added_at"],
            "last_seen": row["last_seen"]}


# -- command-line plumbing shared by every `dordt fleet` module -----------------------------


def add_registry_argument(parser) -> None:
    parser.add_argument("--registry", metavar="PATH",
                        help=f"the registry file (default: ${ENV_PATH}, else ./{DEFAULT_PATH})")


def add_master_key_argument(parser) -> None:
    parser.add_argument("--master-key", metavar="FILE",
                        help=f"file holding the registry's master key (default: "
                        f"${ENV_MASTER_KEY_FILE}, else ${ENV_MASTER_KEY})")


def registry_path(args) -> Path:
    return Path(getattr(args, "registry", None) or os.environ.get(ENV_PATH) or DEFAULT_PATH)


def open_from_args(args, create: bool = False, need_master_key: bool = False) -> Registry:
    """The registry the command line names; RegistryError becomes UserError (exit 2)."""
    from dordt.errors import UserError

    try:
        master_key = load_master_key(getattr(args, "master_key", None))
        if need_master_key and master_key is None:
            raise RegistryError("this needs the registry's master key: give --master-key FILE "
                                f"or set ${ENV_MASTER_KEY_FILE} or ${ENV_MASTER_KEY}")
        return Registry.open(registry_path(args), master_key, create=create)
    except RegistryError as exc:
        raise UserError(str(exc), 2) from None
