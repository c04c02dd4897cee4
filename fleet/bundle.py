"""Enrolment bundles: what a technician's laptop hands the fleet, with every node key sealed
to the fleet's enrolment key, so a lost laptop gives away no node key.

This module *is* the file format, shared by provisioning (which appends to a bundle at each
enrolment) and `dordt fleet import` (which opens it into the keyring).

The fleet's enrolment key is an X25519 key pair: the private half stays with the fleet
(`dordt fleet enrol-key init`), the public half (`enrol-x25519.pub`, one line
"dordt-enrol-x25519 <64 hex digits>") goes to technicians.

Sealing one node key (an ECIES construction from `cryptography`'s primitives):
  ephemeral X25519 key pair per entry; shared = X25519(ephemeral, fleet public);
  aead key = HKDF-SHA256(shared, salt none, info "dordt enrolment bundle v1" ||
  ephemeral public || fleet public, 32 bytes); sealed = AES-256-GCM(aead key, 12-byte
  random nonce, node key, associated data = the entry's public fields as canonical JSON).
So changing any public field (node, kind, zone, site, ...) of an entry makes it fail to
open: a tampered bundle is refused as a whole, with the entry named.

Bundle file (JSON, written atomically, mode 0600)::

    {"format": "dordt-enrolment-bundle", "version": 1, "recipient": "<fleet key id>",
     "entries": [{"node": "0001001a", "kind": "air", "zone": "spoorzone", "site": "spz-01",
                  "board": "esp32-s3-devkitc-1", "key_id": 0, "enrolled_at": "...Z",
                  "fingerprint": "<16 hex>", "epk": "<64 hex>", "nonce": "<24 hex>",
                  "sealed": "<96 hex>"}]}

`fingerprint` is HMAC-SHA256(node key, "dordt key fingerprint"), first 8 bytes: it lets
the self-test check that a board holds the key that was sealed, and tells a re-import of
the same enrolment from a conflicting one, without revealing the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fleet.files import write_file_atomic, write_key_pair

FORMAT = "dordt-enrolment-bundle"
VERSION = 1
PUBLIC_KEY_TAG = "dordt-enrol-x25519"
PRIVATE_KEY_NAME = "enrol-x25519.pem"
PUBLIC_KEY_NAME = "enrol-x25519.pub"
_INFO = b"dordt enrolment bundle v1"
PUBLIC_FIELDS = ("node", "kind", "zone", "site", "board", "key_id", "enrolled_at",
                 "fingerprint")
_SEAL_FIELDS = ("epk", "nonce", "sealed")
KEY_LEN = 32


class BundleError(ValueError):
    """A bundle or enrolment key that cannot be used; the message names the file and entry
    and never holds key material."""


def fingerprint(node_key: bytes) -> str:
    return hmac.new(node_key, b"dordt key fingerprint", hashlib.sha256).hexdigest()[:16]


# -- the fleet's enrolment key ------------------------------------------------------------


def init_enrol_key(directory: Path) -> tuple[Path, Path]:
    """Make the fleet's enrolment key pair in `directory`; refuses to overwrite one."""
    private_path = directory / PRIVATE_KEY_NAME
    public_path = directory / PUBLIC_KEY_NAME
    if private_path.exists():
        raise BundleError(f"{private_path} exists already: the fleet has an enrolment key; "
                          "use it (or move it away first if it is to be replaced)")
    private = X25519PrivateKey.generate()
    write_key_pair(private, private_path, public_path, public_key_text(private.public_key()))
    return private_path, public_path


def public_key_text(public: X25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{PUBLIC_KEY_TAG} {raw.hex()}\n"


def load_public_key(path: Path) -> X25519PublicKey:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise BundleError(f"{path}: no fleet enrolment public key there; ask the fleet "
                          f"operator for {PUBLIC_KEY_NAME} (`dordt fleet enrol-key init`)"
                          ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: cannot read the fleet enrolment key ({exc})") from None
    tag, _, hexkey = text.partition(" ")
    try:
        raw = bytes.fromhex(hexkey)
    except ValueError:
        raw = b""
    if tag != PUBLIC_KEY_TAG or len(raw) != 32:
        raise BundleError(f"{path}: not a fleet enrolment public key (one line "
                          f"\"{PUBLIC_KEY_TAG} <64 hex digits>\")")
    return X25519PublicKey.from_public_bytes(raw)


def load_private_key(path: Path) -> X25519PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: no fleet enrolment private key there") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the fleet enrolment key ({exc.strerror}); "
                          "check its permissions (it should be 0600, owned by you)") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise BundleError(f"{path}: not a PEM X25519 private key") from None
    if not isinstance(key, X25519PrivateKey):
        raise BundleError(f"{path}: holds a {type(key).__name__}, not an X25519 key")
    return key


def key_id(public: X25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- sealing ------------------------------------------------------------------------------


def _aad(public_fields: dict) -> bytes:
    return json.dumps({k: public_fields[k] for k in PUBLIC_FIELDS}, sort_keys=True,
                      separators=(",", ":")).encode()


def _aead_key(shared: bytes, epk: bytes, rpk: bytes, info: bytes = _INFO) -> bytes:
    return HKDF(hashes.SHA256(), 32, None, info + epk + rpk).derive(shared)


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def seal_bytes(plaintext: bytes, aad: bytes, recipient: X25519PublicKey,
               info: bytes) -> dict:
    """The sealing construction above, for any plaintext: {"epk", "nonce", "sealed"} in hex.
    `info` separates the uses (enrolment bundles, gateway keyrings: fleet/keyring_file.py),
    so a sealed value of one can never be opened as the other."""
    ephemeral = X25519PrivateKey.generate()
    epk = _raw(ephemeral.public_key())
    key = _aead_key(ephemeral.exchange(recipient), epk, _raw(recipient), info)
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext, aad)
    return {"epk": epk.hex(), "nonce": nonce.hex(), "sealed": sealed.hex()}


def open_bytes(fields: dict, aad: bytes, private: X25519PrivateKey, info: bytes) -> bytes:
    """Open what seal_bytes() made.  ValueError (KeyError, TypeError) for a malformed value,
    cryptography's InvalidTag when it was changed or sealed to another key."""
    epk = bytes.fromhex(fields["epk"])
    nonce = bytes.fromhex(fields["nonce"])
    sealed = bytes.fromhex(fields["sealed"])
    peer = X25519PublicKey.from_public_bytes(epk)
    key = _aead_key(private.exchange(peer), epk, _raw(private.public_key()), info)
    return AESGCM(key).decrypt(nonce, sealed, aad)


def seal(public_fields: dict, node_key: bytes, recipient: X25519PublicKey) -> dict:
    """An entry: the public fields plus the node key sealed to `recipient`."""
    if len(node_key) != KEY_LEN:
        raise BundleError(f"a node key has {KEY_LEN} bytes")
    missing = [k for k in PUBLIC_FIELDS if k not in public_fields]
    if missing:
        raise BundleError(f"entry lacks {', '.join(missing)}")
    entry = {k: public_fields[k] for k in PUBLIC_FIELDS}
    entry.update(seal_bytes(node_key, _aad(public_fields), recipient, _INFO))
    return entry


def open_entry(entry: dict, private: X25519PrivateKey, where: str) -> bytes:
    """The node key of one entry; BundleError when it was changed or is not for us."""
    try:
        node_key = open_bytes(entry, _aad(entry), private, _INFO)
    except (KeyError, TypeError, ValueError):
        raise BundleError(f"{where}: not a well-formed sealed entry") from None
    except InvalidTag:
        raise BundleError(f"{where}: does not open: the entry was changed after enrolment "
                          "(tampered or damaged) or was sealed to another fleet key; nothing "
                          "was imported") from None
    if len(node_key) != KEY_LEN or fingerprint(node_key) != entry.get("fingerprint"):
        raise BundleError(f"{where}: the sealed key does not match its fingerprint; nothing "
                          "was imported")
    return node_key


# -- the file -----------------------------------------------------------------------------


@dataclass
class Bundle:
    recipient: str
    entries: list[dict] = field(default_factory=list)

    def nodes(self) -> set[str]:
        return {e["node"] for e in self.entries}

    def find(self, node: str) -> dict | None:
        for entry in self.entries:
            if entry["node"] == node:
                return entry
        return None

    def to_bytes(self) -> bytes:
        doc = {"format": FORMAT, "version": VERSION, "recipient": self.recipient,
               "entries": self.entries}
        return (json.dumps(doc, indent=1) + "\n").encode()

    def save(self, path: Path) -> None:
        write_file_atomic(path, self.to_bytes(), 0o600)

    @classmethod
    def load(cls, path: Path) -> Bundle:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BundleError(f"{path}: no enrolment bundle there") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{path}: not a readable enrolment bundle ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise BundleError(f"{path}: not a dordt enrolment bundle")
        if doc.get("version") != VERSION:
            raise BundleError(f"{path}: bundle version {doc.get('version')!r}; this tool "
                              f"reads version {VERSION}: update dordt")
        entries = doc.get("entries")
        if not isinstance(entries, list) or not isinstance(doc.get("recipient"), str):
            raise BundleError(f"{path}: needs \"recipient\" and a list of \"entries\"")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or any(
                    k not in entry for k in PUBLIC_FIELDS + _SEAL_FIELDS):
                raise BundleError(f"{path}: entries[{i}] is not a complete entry")
        return cls(doc["recipient"], entries)

    @classmethod
    def load_or_new(cls, path: Path, recipient: X25519PublicKey) -> Bundle:
        if not path.exists():
            return cls(key_id(recipient))
        bundle = cls.load(path)
        if bundle.recipient != key_id(recipient):
            raise BundleError(f"{path}: sealed to another fleet key ({bundle.recipient}); "
                              f"start a new bundle file for this fleet key")
        return bundle


def open_bundle(path: Path, private: X25519PrivateKey) -> list[tuple[dict, bytes]]:
    """Every entry with its node key; all or nothing (BundleError names the first bad one)."""
    bundle = Bundle.load(path)
    if bundle.recipient != key_id(private.public_key()):
        raise BundleError(f"{path}: sealed to fleet key {bundle.recipient}, not to this one "
                          f"({key_id(private.public_key())}); use that fleet's key")
    out = []
    for i, entry in enumerate(bundle.entries):
        out.append((entry, open_entry(entry, private,
                                      f"{path}: entries[{i}] (node {entry.get('node')})")))
    return out
