"""The rekey file: a rotated node key on its way to the node, sealed under the node's current
key, so it may travel on a technician's laptop (or any link) without giving the key away.

The construction (HMAC-SHA256 only: a pad XORed onto the key and a tag over everything) is
firmware/rekey.py's, which the node runs to open the file and switch keys; this side
seals with the same functions.  File (JSON, mode 0600)::

    {"format": "dordt-rekey", "version": 1, "node": "0001001a", "from_key_id": 0,
     "key_id": 1, "nonce": "<32 hex>", "wrapped": "<64 hex>", "tag": "<64 hex>",
     "fingerprint": "<16 hex: fleet/bundle.py fingerprint of the new key>"}
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from firmware import rekey as node_rekey
from firmware.rekey import RekeyError, unwrap  # noqa: F401  (the fleet's names for them)

FORMAT = node_rekey.FORMAT
VERSION = node_rekey.VERSION


def wrap(node: str, from_key_id: int, current_key: bytes, key_id: int,
         new_key: bytes) -> dict:
    from fleet.bundle import fingerprint

    nonce = os.urandom(node_rekey.NONCE_LEN)
    info = node_rekey.info(int(node, 16), from_key_id, key_id, nonce)
    wrapped = node_rekey.xor(new_key, node_rekey.pad(current_key, info))
    return {"format": FORMAT, "version": VERSION, "node": node, "from_key_id": from_key_id,
            "key_id": key_id, "nonce": nonce.hex(), "wrapped": wrapped.hex(),
            "tag": node_rekey.tag(current_key, info, wrapped).hex(),
            "fingerprint": fingerprint(new_key)}


def save(doc: dict, path: Path) -> None:
    from fleet.files import write_file_atomic

    write_file_atomic(path, (json.dumps(doc, indent=1) + "\n").encode(), 0o600)
