"""Fuzz target: a firmware release's manifest and signature (docs/ota.md §1-§2).

Input: bytes taken three ways.
- As release.json, unsigned: firmware.ota_verify.check_document (what the gateway and the
  fleet load releases with) returns a document or raises ReleaseRefused with a known
  reason, nothing else.
- As release.json signed with the fleet's key: check_release (the node's checks) returns
  a document or refuses with a known reason other than a bad signature, nothing else.
- As public key (32 bytes), signature (64) and message (the rest): firmware/ed25519.py's
  verify never raises and accepts nothing `cryptography` (OpenSSL) refuses; and the message
  signed by `cryptography` verifies, with any one bit of the signature flipped it does not.
"""

from __future__ import annotations

import json
import sys

import harness
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

with harness.instrumented():
    from firmware import ed25519, ota_verify

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = KEY.public_key().public_bytes(serialization.Encoding.Raw,
                                    serialization.PublicFormat.Raw)
NODE = {"kind": "air", "board": "pico-w", "version": (0, 1, 0), "serial": 3}
DOCUMENT_REASONS = {"too_large", "malformed", "unknown_format"}
NODE_REASONS = DOCUMENT_REASONS | {"wrong_kind", "wrong_hardware", "replayed", "downgrade",
                                   "too_old"}


def _openssl_verifies(public: bytes, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def one_input(data: bytes) -> None:
    try:
        assert isinstance(ota_verify.check_document(data), dict)
    except ota_verify.ReleaseRefused as exc:
        assert exc.reason in DOCUMENT_REASONS, exc.reason
    signature = KEY.sign(data)
    try:
        assert isinstance(ota_verify.check_release(data, signature.hex(), PUB, NODE), dict)
    except ota_verify.ReleaseRefused as exc:
        assert exc.reason in NODE_REASONS, exc.reason
    if len(data) >= 96:
        public, sig, message = data[:32], data[32:96], data[96:]
        # What this verifier accepts, OpenSSL accepts; it refuses more: a public key whose
        # y is not below p (RFC 8032 §5.1.3), which OpenSSL reduces and takes.
        if ed25519.verify(public, message, sig):
            assert _openssl_verifies(public, message, sig)
    assert ed25519.verify(PUB, data, signature)
    flip = len(data) % (64 * 8)
    bad = bytearray(signature)
    bad[flip // 8] ^= 1 << (flip % 8)
    assert not ed25519.verify(PUB, data, bytes(bad))


def _document(**changes) -> bytes:
    doc = {"format": "dordt-release", "format_version": 1, "version": "0.2.0", "serial": 9,
           "rollback": False, "kinds": ["air", "noise"], "arch": None,
           "min_firmware": "0.0.0", "hardware": ["pico-w"], "created": 1764331200,
           "size": 13, "files": [{"path": "MANIFEST.json", "sha256": "ab" * 32, "size": 10},
                                 {"path": "firmware/node.mpy", "sha256": "cd" * 32,
                                  "size": 3}]}
    doc.update(changes)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def seeds():
    yield _document()
    yield _document(rollback=True, version="0.0.9")
    yield _document(serial=2)
    yield _document(kinds=["crowd"], hardware=["esp32-s3-devkitc-1"], min_firmware="0.2.0")
    yield _document(format_version=2)
    yield b"{}"
    yield b""
    for v in json.loads((harness.REPO / "tests" / "vectors" / "ed25519_rfc8032.json")
                        .read_text())["vectors"]:
        yield bytes.fromhex(v["public_key"] + v["signature"] + v["message"])


if __name__ == "__main__":
    harness.run(one_input, seeds, "release")
    sys.exit(0)
