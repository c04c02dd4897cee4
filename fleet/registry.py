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
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"{path}: not a registry database ({exc})") from None
        reg = cls(db, path, master_key)
        try:
            migrate(db, path)
            reg._check_master_key()
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
