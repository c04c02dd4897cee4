"""The node keyring file: which nodes exist, where they stand, and their HMAC keys.

This module *is* the file format shared by `fleet/` (which writes it at enrolment) and
the gateway (which reads it to verify frames); neither reaches into the other's code.

Format (JSON, UTF-8, mode 0600 because it holds secrets)::

    {"format": "dordt-keyring", "version": 1,
     "nodes": [{"node": "0001001a", "kind": "air", "zone": "spoorzone",
                "site": "spz-01", "revoked": false,
                "keys": {"0": "<64 hex digits>"}}]}

Keys never appear in repr(), logs or error messages.
"""

from __future__ import annotations

import json
import secrets
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from firmware import metrics, protocol
from fleet.files import write_file_atomic

FORMAT = "dordt-keyring"
VERSION = 1


class KeyringError(ValueError):
    """A keyring file that cannot be used; the message names the file and the entry."""


@dataclass(slots=True)
class NodeEntry:
    node_id: int
    kind: str
    zone: str
    site: str
    keys: dict[int, bytes] = field(repr=False)
    revoked: bool = False

    @property
    def node(self) -> str:
        return protocol.node_name(self.node_id)

    @property
    def kind_id(self) -> int:
        return metrics.KIND_IDS[self.kind]

    def to_json(self) -> dict:
        return {
            "node": self.node,
            "kind": self.kind,
            "zone": self.zone,
            "site": self.site,
            "revoked": self.revoked,
            "keys": {str(k): v.hex() for k, v in sorted(self.keys.items())},
        }


class Keyring:
    def __init__(self, entries: list[NodeEntry] | None = None):
        self._by_id: dict[int, NodeEntry] = {}
        for entry in entries or []:
            self.add(entry)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self):
        return iter(self._by_id.values())

    def get(self, node_id: int) -> NodeEntry | None:
        return self._by_id.get(node_id)

    def add(self, entry: NodeEntry) -> NodeEntry:
        if entry.node_id in self._by_id:
            raise KeyringError(f"node {entry.node} is already in the keyring")
        self._by_id[entry.node_id] = entry
        return entry

    def enrol(self, node_id: int, kind: str, zone: str, site: str) -> NodeEntry:
        """Add a node with a fresh random 256-bit key (key id 0)."""
        where = f"node {protocol.node_name(node_id)}"
        _check_kind(kind, where)
        _check_place(zone, "zone", where)
        _check_place(site, "site", where)
        return self.add(NodeEntry(node_id, kind, zone, site, {0: secrets.token_bytes(32)}))

    def revoke(self, node_id: int) -> None:
        entry = self.get(node_id)
        if entry is None:
            raise KeyringError(f"node {protocol.node_name(node_id)} is not in the keyring")
        entry.revoked = True

    # -- file ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Keyring:
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KeyringError(
                f"{path}: keyring not found (make one with `dordt fleet` or `dordt demo`)"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KeyringError(f"{path}: not a readable keyring: {exc}") from None
        return cls.from_doc(doc, str(path))

    @classmethod
    def from_doc(cls, doc: object, where: str) -> Keyring:
        """A keyring from its parsed JSON document (a file, or the inside of a gateway's
        signed keyring: fleet/keyring_file.py); `where` names it in errors."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise KeyringError(f"{where}: not a dordt keyring (\"format\" must be \"{FORMAT}\")")
        if doc.get("version") != VERSION:
            raise KeyringError(
                f"{where}: keyring version {doc.get('version')!r}, this tool reads {VERSION}"
            )
        nodes = doc.get("nodes")
        if not isinstance(nodes, list):
            raise KeyringError(f"{where}: \"nodes\" must be a list")
        ring = cls()
        for i, raw in enumerate(nodes):
            entry_where = f"{where}: nodes[{i}]"
            entry = _entry_from_json(raw, entry_where)
            if ring.get(entry.node_id) is not None:  # found by fuzz/fuzz_loaders.py keyring
                raise KeyringError(f"{entry_where}: node {entry.node} is listed twice; keep one")
            ring.add(entry)
        return ring

    @staticmethod
    def check_private(path: str | Path) -> None:
        """Refuse a keyring file that other users may read or write: it holds every node's
        key (as ssh refuses a private key with loose permissions).  A missing file is left
        to load() to report."""
        import os
        import stat

        try:
            st = os.stat(path)
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode):
            return
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyringError(
                f"{path}: the keyring holds node keys but other users may read or change it "
                f"(mode {mode:04o}); run `chmod 600 {path}`")

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file, fsync, rename) with mode 0600."""
        write_file_atomic(Path(path), (json.dumps(self.to_doc(), indent=1) + "\n").encode(),
                          0o600)

    def to_doc(self) -> dict:
        """The file's JSON document (it holds the keys: for files of mode 0600 and sealed
        keyrings only)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "nodes": [e.to_json() for e in sorted(self, key=lambda e: e.node_id)],
        }


def _check_kind(kind: object, where: str) -> None:
    # a JSON object or list is unhashable: test the type first (a fuzzer found it), and do
    # not echo it (in a botched file it may hold a key)
    if not isinstance(kind, str):
        raise KeyringError(f"{where}: \"kind\" must be one of {sorted(metrics.KIND_IDS)}")
    if kind not in metrics.KIND_IDS:
        raise KeyringError(f"{where}: kind {kind!r} is not one of {sorted(metrics.KIND_IDS)}")


def _check_place(value: object, key: str, where: str) -> None:
    """A zone or site name becomes a tag in every line the node's readings make: no
    control characters (a line break would end the line; line protocol has no escape for
    it), and short enough to read."""
    if not isinstance(value, str) or not value:
        raise KeyringError(f"{where}: \"{key}\" must be a non-empty string")
    bad = next((c for c in value if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise KeyringError(f"{where}: \"{key}\" {value!r} holds the control character "
                           f"{bad!r}: use letters, digits, '-' or '_'")
    if len(value) > 64:
        raise KeyringError(f"{where}: \"{key}\" is {len(value)} characters long; the most "
                           f"is 64")


def _entry_from_json(raw: object, where: str) -> NodeEntry:
    if not isinstance(raw, dict):
        raise KeyringError(f"{where}: must be an object")
    name = raw.get("node")
    if protocol.parse_topic_up(f"{protocol.TOPIC_ROOT}/z/{name}/up") is None:
        raise KeyringError(f"{where}: \"node\" must be 8 lower-case hex digits, got {name!r}")
    _check_kind(raw.get("kind"), where)
    for key in ("zone", "site"):
        _check_place(raw.get(key), key, where)
    keys_raw = raw.get("keys")
    if not isinstance(keys_raw, dict) or not keys_raw:
        raise KeyringError(f"{where}: \"keys\" must map key ids to keys")
    keys: dict[int, bytes] = {}
    for key_id, hexkey in keys_raw.items():
        try:
            kid = int(key_id)
            key = bytes.fromhex(hexkey)
        except (TypeError, ValueError):
            # never echo the value: it is (or resembles) a secret
            raise KeyringError(f"{where}: key {key_id!r} is not a key id with a hex key") from None
        if not 0 <= kid <= 255 or len(key) != protocol.KEY_LEN:
            raise KeyringError(
                f"{where}: key {key_id!r} must have an id 0..255 and {protocol.KEY_LEN} bytes"
            )
        keys[kid] = key
    return NodeEntry(
        int(name, 16), raw["kind"], raw["zone"], raw["site"], keys, bool(raw.get("revoked"))
    )
