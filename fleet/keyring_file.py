"""A gateway's signed keyring: the nodes one gateway serves, sealed to that gateway and
signed by the fleet.

This module *is* the file format, shared by `dordt fleet keyring issue` (which writes it)
and the gateway (gateway/keyring_source.py, which takes it while running); docs/fleet.md
describes it for people.

Keys:
- the fleet's keyring-signing key, Ed25519 (`dordt fleet keyring signer init --dir DIR`):
  `keyring-signer.pem` (private, 0600, stays with the fleet) and `keyring-signer.pub` (one
  line "dordt-keyring-ed25519 <64 hex digits>", copied to every gateway);
- each gateway's keyring key, X25519 (`dordt gateway keyring-key init`): `keyring-x25519.pem`
  (private, 0600, never leaves the gateway's data dir) and `keyring-x25519.pub` (one line
  "dordt-gateway-x25519 <64 hex digits>", given to `dordt fleet gateway add --keyring-pub`).

File (JSON, UTF-8)::

    {"format": "dordt-gateway-keyring", "version": 1,
     "gateway": "gw-spoorzone-01", "serial": 7, "issued_at": "2026-12-04T18:00:00Z",
     "signer": "<16 hex: signer key id>", "recipient": "<16 hex: gateway key id>",
     "epk": "<64 hex>", "nonce": "<24 hex>", "sealed": "<hex>",
     "signature": "<128 hex>"}

- `sealed` is the inner keyring (fleet/keyring.py's JSON document plus "gateway", "serial"
  and "issued_at", which must equal the outer ones) sealed to the gateway's X25519 key with
  fleet/bundle.py's construction (ephemeral X25519, HKDF-SHA256 with info
  "dordt gateway keyring v1", AES-256-GCM); the associated data is the header: the
  canonical JSON of every field but epk, nonce, sealed and signature.
- `signature` is Ed25519 by the signing key over the canonical JSON (sorted keys, no
  spaces, UTF-8) of every other field: encrypt, then sign, so a gateway checks who made a
  file before it decrypts anything.
- `serial` grows strictly per gateway (the registry counts); a gateway takes only a serial
  above the last one it took, so an old keyring (one that still lists a revoked node's key)
  cannot be replayed to it.

Checks on open, in order, each with its own reason (the gateway counts refusals by it):
"format" (not this format, or malformed), "signer" (signed by another key, or the
signature does not verify), "gateway" (issued to another gateway), "older" (serial not
above the last one taken), "decrypt" (does not open with this gateway's key), "content"
(the inner keyring is not valid).  Messages never hold key material.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fleet import bundle
from fleet.files import write_key_pair
from fleet.keyring import Keyring, KeyringError

FORMAT = "dordt-gateway-keyring"
VERSION = 1
SIGNER_TAG = "dordt-keyring-ed25519"
GATEWAY_TAG = "dordt-gateway-x25519"
SIGNER_PRIVATE_NAME = "keyring-signer.pem"
SIGNER_PUBLIC_NAME = "keyring-signer.pub"
GATEWAY_PRIVATE_NAME = "keyring-x25519.pem"
GATEWAY_PUBLIC_NAME = "keyring-x25519.pub"
_INFO = b"dordt gateway keyring v1"
_HEADER = ("format", "version", "gateway", "serial", "issued_at", "signer", "recipient")
_SEALED = ("epk", "nonce", "sealed")


class KeyringFileError(ValueError):
    """A signed keyring or key file that cannot be used.  `reason` is one word (see the
    module docstring) for counters; the message names the file and never holds a key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SignedKeyring:
    keyring: Keyring
    gateway: str
    serial: int
    issued_at: str


def canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _raw(public) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey | X25519PublicKey) -> str:
    return hashlib.sha256(_raw(public)).hexdigest()[:16]


# -- key files ----------------------------------------------------------------------------


def _init_pair(private, directory: Path, private_name: str, public_name: str,
               tag: str, what: str) -> tuple[Path, Path]:
    private_path, public_path = directory / private_name, directory / public_name
    if private_path.exists():
        raise KeyringFileError("exists", f"{private_path} exists already: this {what} has a "
                               "key; use it (or move it away first to replace it)")
    write_key_pair(private, private_path, public_path,
                   f"{tag} {_raw(private.public_key()).hex()}\n")
    return private_path, public_path


def init_signer(directory: Path) -> tuple[Path, Path]:
    """The fleet's keyring-signing key pair in `directory`; refuses to overwrite one."""
    return _init_pair(Ed25519PrivateKey.generate(), directory, SIGNER_PRIVATE_NAME,
                      SIGNER_PUBLIC_NAME, SIGNER_TAG, "fleet")


def init_gateway_key(data_dir: Path) -> tuple[Path, Path]:
    """A gateway's keyring key pair in its data dir; refuses to overwrite one."""
    return _init_pair(X25519PrivateKey.generate(), data_dir, GATEWAY_PRIVATE_NAME,
                      GATEWAY_PUBLIC_NAME, GATEWAY_TAG, "gateway")


def parse_public(text: str, tag: str, where: str):
    """A public key from its one-line text ("<tag> <64 hex digits>")."""
    got_tag, _, hexkey = text.strip().partition(" ")
    try:
        raw = bytes.fromhex(hexkey)
    except ValueError:
        raw = b""
    if got_tag != tag or len(raw) != 32:
        raise KeyringFileError("format", f"{where}: not a {tag} public key (one line "
                               f"\"{tag} <64 hex digits>\")")
    return (Ed25519PublicKey if tag == SIGNER_TAG else X25519PublicKey).from_public_bytes(raw)


def load_public(path: Path, tag: str):
    try:
        text = Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyringFileError("missing", f"{path}: no public key file there") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not text"
        raise KeyringFileError("format", f"{path}: cannot read it ({reason})") from None
    return parse_public(text, tag, str(path))


def load_private(path: Path, kind: type):
    """A PEM private key of `kind` (Ed25519PrivateKey or X25519PrivateKey)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyringFileError("missing", f"{path}: no private key there") from None
    except OSError as exc:
        raise KeyringFileError("format", f"{path}: cannot read it ({exc.strerror}); check its "
                               "owner and mode (0600)") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyringFileError("format", f"{path}: not a PEM private key") from None
    if not isinstance(key, kind):
        have = type(key).__name__.removeprefix("_").removesuffix("PrivateKey")
        raise KeyringFileError("format", f"{path}: holds an {have} key, not an "
                               f"{kind.__name__.removesuffix('PrivateKey')} key")
    return key


# -- issuing and opening ------------------------------------------------------------------


def issue(keyring: Keyring, gateway: str, serial: int, issued_at: str,
          recipient: X25519PublicKey, signer: Ed25519PrivateKey) -> bytes:
    """The file's bytes: `keyring` sealed to `recipient` and signed by `signer`."""
    header = {"format": FORMAT, "version": VERSION, "gateway": gateway, "serial": serial,
              "issued_at": issued_at, "signer": key_id(signer.public_key()),
              "recipient": key_id(recipient)}
    inner = keyring.to_doc()
    inner.update(gateway=gateway, serial=serial, issued_at=issued_at)
    doc = dict(header)
    doc.update(bundle.seal_bytes(canonical(inner), canonical(header), recipient, _INFO))
    doc["signature"] = signer.sign(canonical(doc)).hex()
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def is_signed_keyring(data: bytes) -> bool:
    """True when `data` claims this format (so a plain keyring is told apart cheaply)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def open_signed(data: bytes, where: str, signer: Ed25519PublicKey, gateway: str,
                private: X25519PrivateKey, after_serial: int = 0) -> SignedKeyring:
    """Check and open a signed keyring; KeyringFileError (with its reason) otherwise."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise KeyringFileError("format", f"{where}: not a signed keyring (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise KeyringFileError("format", f"{where}: not a signed keyring (\"format\" must be "
                               f"\"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise KeyringFileError("format", f"{where}: signed keyring version "
                               f"{doc.get('version')!r}; this dordt reads {VERSION}: update it")
    if set(doc) != set(_HEADER + _SEALED + ("signature",)) or not all(
            isinstance(doc[k], str) for k in _SEALED + ("signature", "gateway", "issued_at")) \
            or type(doc["serial"]) is not int:
        raise KeyringFileError("format", f"{where}: not a well-formed signed keyring")
    signed = {k: v for k, v in doc.items() if k != "signature"}
    try:
        signer.verify(bytes.fromhex(doc["signature"]), canonical(signed))
    except (ValueError, InvalidSignature):
        raise KeyringFileError("signer", f"{where}: signature does not verify with the "
                               f"fleet's keyring-signing key {key_id(signer)} (signed by "
                               f"{doc['signer']!r} or changed): refused") from None
    if doc["gateway"] != gateway:
        raise KeyringFileError("gateway", f"{where}: issued to gateway {doc['gateway']!r}, "
                               f"this is {gateway!r}: refused")
    if doc["serial"] <= after_serial:
        raise KeyringFileError("older", f"{where}: serial {doc['serial']} is not newer than "
                               f"serial {after_serial} taken already: refused")
    header = {k: doc[k] for k in _HEADER}
    try:
        plain = bundle.open_bytes(doc, canonical(header), private, _INFO)
    except (KeyError, TypeError, ValueError, InvalidTag):
        raise KeyringFileError("decrypt", f"{where}: does not open with this gateway's "
                               f"keyring key {key_id(private.public_key())} (sealed to "
                               f"{doc['recipient']!r}): refused") from None
    try:
        inner = json.loads(plain)
        if not isinstance(inner, dict) or any(
                inner.get(k) != doc[k] for k in ("gateway", "serial", "issued_at")):
            raise KeyringError(f"{where}: inner gateway, serial or issue time differs from "
                               "the signed header")
        ring = Keyring.from_doc(inner, where)
    except (ValueError, UnicodeDecodeError, KeyringError) as exc:
        detail = str(exc) if isinstance(exc, KeyringError) else "inner keyring is not JSON"
        raise KeyringFileError("content", f"{detail}: refused") from None
    return SignedKeyring(ring, doc["gateway"], doc["serial"], doc["issued_at"])


def peek_serial(data: bytes) -> int | None:
    """The serial a file claims (unverified: for messages and picking a copy only)."""
    try:
        doc = json.loads(data)
        return doc["serial"] if type(doc.get("serial")) is int else None
    except (ValueError, UnicodeDecodeError, TypeError, KeyError, AttributeError):
        return None
