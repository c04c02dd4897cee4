# Rekey: a rotated node key, arrived sealed under the node's current key (`dordt fleet
# registry rotate-key` writes the file with fleet/rekey.py; docs/fleet.md "Key rotation"),
# opened here and switched to in one atomic step.  This module is the construction's one
# implementation: the fleet's side imports it to seal.
#
#   info    = node id (4 bytes, big-endian) || from key id (1) || key id (1) || nonce (16)
#   pad     = HMAC-SHA256(current key, "dordt rekey v1 pad" || info)
#   wrapped = new key XOR pad
#   tag     = HMAC-SHA256(current key, "dordt rekey v1 tag" || info || wrapped)
#
# Only HMAC-SHA256 (protocol.hmac_sha256), which the node runs for every frame.
#
# In:  hal.Flash holding config.json and the current key; the rekey document (a dict).
# Out: apply() switches the node to the new key id and returns it.
# On failure: RekeyError (a message without key material); nothing on flash has changed.
# Power cuts: the new key goes to a file of its own (node-<key id>.key) first; then one
# Flash.replace of config.json switches key_id and key_file together, so the node boots
# with the old pair or the new one, never a mix; the old key file is removed last.  The
# frame counter is left alone: a new key id continues it (docs/protocol.md §6.3).
#
# RAM: the document and a few 32-byte strings; imported only for a rekey.

import binascii
import json
import struct

from firmware import config, protocol

FORMAT = "dordt-rekey"
VERSION = 1
NONCE_LEN = 16
_PAD = b"dordt rekey v1 pad"
_TAG = b"dordt rekey v1 tag"


class RekeyError(ValueError):
    pass


def info(node_id, from_key_id, key_id, nonce):
    return struct.pack(">IBB", node_id, from_key_id, key_id) + nonce


def pad(current_key, info_bytes):
    return protocol.hmac_sha256(current_key, _PAD + info_bytes)


def tag(current_key, info_bytes, wrapped):
    return protocol.hmac_sha256(current_key, _TAG + info_bytes + wrapped)


def xor(a, b):
    return bytes(a[i] ^ b[i] for i in range(len(a)))


def unwrap(doc, current_key):
    """(new key id, new key) from a rekey document, checked with the current key."""
    try:
        if doc["format"] != FORMAT or doc["version"] != VERSION:
            raise RekeyError("not a dordt rekey document of version 1")
        node_id = int(doc["node"], 16)
        from_key_id = doc["from_key_id"]
        key_id = doc["key_id"]
        nonce = binascii.unhexlify(doc["nonce"])
        wrapped = binascii.unhexlify(doc["wrapped"])
        got_tag = binascii.unhexlify(doc["tag"])
        if (len(nonce) != NONCE_LEN or len(wrapped) != protocol.KEY_LEN
                or not 0 <= from_key_id < key_id <= 255 or not 0 <= node_id <= 0xFFFFFFFF):
            raise ValueError
        inf = info(node_id, from_key_id, key_id, nonce)
    except RekeyError:
        raise
    except Exception:
        raise RekeyError("not a well-formed rekey document") from None
    if not protocol.equal_ct(tag(current_key, inf, wrapped), got_tag):
        raise RekeyError("the rekey document does not open with key %d of node %s (another "
                         "node or key, or changed)" % (from_key_id, doc["node"]))
    return key_id, xor(wrapped, pad(current_key, inf))


def apply(flash, doc):
    """Switch the node on `flash` to the key in `doc`; the new key id."""
    cfg = config.load(flash)
    if doc.get("node") != cfg.node:
        raise RekeyError("the rekey document is for node %s, this is node %s"
                         % (doc.get("node"), cfg.node))
    if doc.get("from_key_id") != cfg.key_id:
        raise RekeyError("the rekey document replaces key %s, this node holds key %d: take "
                         "the newest rekey file" % (doc.get("from_key_id"), cfg.key_id))
    key_id, key = unwrap(doc, cfg.key)
    raw = config.peek(flash)
    if raw is None:  # load() just read it: only a flash failing between the two reads
        raise RekeyError("config.json could not be read again; nothing was changed")
    key_file = "node-%d.key" % key_id
    raw["key_id"] = key_id
    raw["key_file"] = key_file
    key_text = binascii.hexlify(key) + b"\n"
    config.parse(raw, lambda name: key_text if name == key_file else flash.read(name))
    flash.replace(key_file, key_text)
    flash.replace(config.CONFIG_FILE, json.dumps(raw).encode())
    if cfg.key_file != key_file:
        flash.remove(cfg.key_file)
    return key_id
