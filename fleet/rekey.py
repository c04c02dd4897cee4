"""The rekey file: a rotated node key on its way to the node, sealed under the node's current
key, so it may travel on a technician's laptop (or any link) without giving the key away.

Only the node (and the fleet) hold the current key, so only they can open it.  The
construction uses HMAC-SHA256 alone, which the node already runs for every frame
(docs/protocol.md §4), so a node needs no new primitive to open it:

    info   = node id (4 bytes, big-endian) || from key id (1) || key id (1) || nonce (16)
    pad    = HMAC-SHA256(current key, "dordt rekey v1 pad" || info)          (32 bytes)
    wrapped = new key XOR pad
    tag    = HMAC-SHA256(current key, "dordt rekey v1 tag" || info || wrapped)

The pad is used once (a fresh random nonce per file); the tag is checked before the key
is used.  File (JSON, mode 0600)::

    {"format": "dordt-rekey", "version": 1, "node": "0001001a", "from_key_id": 0,
     "key_id": 1, "nonce": "<32 hex>", "wrapped": "<64 hex>", "tag": "<64 hex>",
     "fingerprint": "<16 hex: fleet/bundle.py fingerprint of the new key>"}

`unwrap()` is what the node must do (the fleet's tests use it as the reference).  The
node's own side (opening the file over USB and replacing node.key and the config's key id)
is not built yet: docs/fleet.md "Key rotation" says how the key gets there meanwhile.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

FORMAT = "dordt-rekey"
VERSION = 1
_PAD = b"dordt rekey v1 pad"
_TAG = b"dordt rekey v1 tag"


class RekeyError(ValueError):
    """A rekey file that cannot be used; never holds key material."""


def _info(node: str, from_key_id: int, key_id: int, nonce: bytes) -> bytes:
    return int(node, 16).to_bytes(4, "big") + bytes((from_key_id, key_id)) + nonce


def wrap(node: str, from_key_id: int, current_key: bytes, key_id: int,
         new_key: bytes) -> dict:
    from fleet.bundle import fingerprint

    nonce = os.urandom(16)
    info = _info(node, from_key_id, key_id, nonce)
    pad = hmac.new(current_key, _PAD + info, hashlib.sha256).digest()
    wrapped = bytes(a ^ b for a, b in zip(new_key, pad, strict=True))
    tag = hmac.new(current_key, _TAG + info + wrapped, hashlib.sha256).digest()
    return {"format": FORMAT, "version": VERSION, "node": node, "from_key_id": from_key_id,
            "key_id": key_id, "nonce": nonce.hex(), "wrapped": wrapped.hex(), "tag": tag.hex(),
            "fingerprint": fingerprint(new_key)}


def unwrap(doc: dict, current_key: bytes) -> tuple[int, bytes]:
    """(new key id, new key) from a rekey document, for the node holding `current_key`."""
    try:
        if doc["format"] != FORMAT or doc["version"] != VERSION:
            raise RekeyError("not a dordt rekey file of version 1")
        nonce = bytes.fromhex(doc["nonce"])
        wrapped = bytes.fromhex(doc["wrapped"])
        tag = bytes.fromhex(doc["tag"])
        info = _info(doc["node"], doc["from_key_id"], doc["key_id"], nonce)
    except (KeyError, TypeError, ValueError, OverflowError):
        raise RekeyError("not a well-formed rekey file") from None
    if len(wrapped) != 32 or len(nonce) != 16:
        raise RekeyError("not a well-formed rekey file")
    want = hmac.new(current_key, _TAG + info + wrapped, hashlib.sha256).digest()
    if not hmac.compare_digest(want, tag):
        raise RekeyError(f"rekey file for node {doc['node']} does not open with its key "
                         f"{doc['from_key_id']} (another node, another key, or changed)")
    pad = hmac.new(current_key, _PAD + info, hashlib.sha256).digest()
    return doc["key_id"], bytes(a ^ b for a, b in zip(wrapped, pad, strict=True))


def save(doc: dict, path: Path) -> None:
    from fleet.files import write_file_atomic

    write_file_atomic(path, (json.dumps(doc, indent=1) + "\n").encode(), 0o600)
