"""Fuzz targets: the loaders of files an operator or the fleet hands the gateway.

    python fuzz/fuzz_loaders.py keyring|policy|config|signed_keyring|rekey [libFuzzer args]

Input: the file's bytes.  Keyring.load raises KeyringError, load_policy PolicyError and
load_config ConfigError for anything they do not take (each a ValueError with the path
in its message), and nothing else; a keyring that loads saves and loads back equal.
signed_keyring: a gateway's signed keyring (fleet/keyring_file.py open_signed) raises
KeyringFileError with a known reason and nothing else; with the first byte odd, the rest
is the inner keyring, sealed and signed here, so the checks behind the signature are
reached too.  rekey: a rekey document (firmware/rekey.py unwrap) raises RekeyError only.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import harness

with harness.instrumented():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from firmware import rekey as node_rekey
    from fleet import keyring_file
    from fleet.keyring import Keyring, KeyringError
    from gateway.anonymise import PolicyError, default_policy_path, load_policy
    from gateway.config import ConfigError, load_config

WORK = Path(tempfile.mkdtemp(prefix="dordt-fuzz-"))
FILE = WORK / "input"
SAMPLE_CONFIG = harness.REPO / "gateway" / "gateway.sample.toml"


def _write(data: bytes) -> Path:
    FILE.write_bytes(data)
    os.chmod(FILE, 0o600)
    return FILE


def keyring(data: bytes) -> None:
    try:
        ring = Keyring.load(_write(data))
    except KeyringError as exc:
        assert str(FILE) in str(exc)
        return
    ring.save(WORK / "again.json")
    again = Keyring.load(WORK / "again.json")
    def entries(r):  # save() writes nodes in id order; a file may list them in any
        return sorted((e.node_id, e.kind, e.zone, e.site, sorted(e.keys.items()), e.revoked)
                      for e in r)

    assert entries(again) == entries(ring)


def policy(data: bytes) -> None:
    known = {"spoorzone", "maasterras", "spuiboulevard"} if data[:1] == b"#" else None
    try:
        load_policy(_write(data), known_zones=known)
    except PolicyError:
        return


def config(data: bytes) -> None:
    try:
        load_config(_write(data))
    except ConfigError:
        return


_SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
_GATEWAY = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
_REASONS = {"format", "signer", "gateway", "older", "decrypt", "content"}


def _sealed(inner: bytes) -> bytes:
    """`inner` as the plaintext of a correctly sealed and signed keyring (serial 2)."""
    import json

    from fleet import bundle

    header = {"format": keyring_file.FORMAT, "version": 1, "gateway": "gw-fuzz", "serial": 2,
              "issued_at": "2026-12-04T00:00:00Z",
              "signer": keyring_file.key_id(_SIGNER.public_key()),
              "recipient": keyring_file.key_id(_GATEWAY.public_key())}
    doc = dict(header)
    doc.update(bundle.seal_bytes(inner, keyring_file.canonical(header),
                                 _GATEWAY.public_key(), b"dordt gateway keyring v1"))
    doc["signature"] = _SIGNER.sign(keyring_file.canonical(doc)).hex()
    return json.dumps(doc).encode()


def signed_keyring(data: bytes) -> None:
    if data[:1] and data[0] & 1:
        data = _sealed(data[1:])
    try:
        got = keyring_file.open_signed(data, "fuzz", _SIGNER.public_key(), "gw-fuzz",
                                       _GATEWAY, after_serial=1)
    except keyring_file.KeyringFileError as exc:
        assert exc.reason in _REASONS, exc.reason
        return
    assert got.gateway == "gw-fuzz" and got.serial > 1


def rekey(data: bytes) -> None:
    import json

    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return
    if not isinstance(doc, dict):
        return
    try:
        node_rekey.unwrap(doc, bytes(32))
    except node_rekey.RekeyError:
        return


TARGETS = {"keyring": keyring, "policy": policy, "config": config,
           "signed_keyring": signed_keyring, "rekey": rekey}


def seeds(name: str):
    if name == "keyring":
        ring = Keyring()
        for i, zone in enumerate(("spoorzone", "maasterras", "spuiboulevard")):
            ring.enrol(0x0D0A0001 + i, "air", zone, f"site-{i}")
        ring.save(WORK / "seed.json")
        yield (WORK / "seed.json").read_bytes()
        yield b'{"format": "dordt-keyring", "version": 1, "nodes": []}'
    elif name == "signed_keyring":
        ring = Keyring()
        ring.enrol(0x0D0A0001, "air", "spoorzone", "site-0")
        yield keyring_file.issue(ring, "gw-fuzz", 2, "2026-12-04T00:00:00Z",
                                 _GATEWAY.public_key(), _SIGNER)
        yield b'\x01{"format": "dordt-keyring", "version": 1, "nodes": []}'
        import json

        inner = ring.to_doc()
        inner.update(gateway="gw-fuzz", serial=2, issued_at="2026-12-04T00:00:00Z")
        yield b"\x01" + json.dumps(inner).encode()
    elif name == "rekey":
        import json

        from fleet.rekey import wrap

        yield json.dumps(wrap("0d0a0001", 0, bytes(32), 1, bytes(range(32)))).encode()
    elif name == "policy":
        yield Path(default_policy_path()).read_bytes()
        yield (harness.REPO / "tests" / "data" / "policy-passthrough.toml").read_bytes()
    else:
        yield SAMPLE_CONFIG.read_bytes()
        yield b'[gateway]\nid = "gw"\ndata_dir = "/tmp/x"\nkeyring = "/tmp/k.json"\n' \
              b'[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n[store]\nurl = "sqlite:/tmp/s.sqlite"\n'


if __name__ == "__main__":
    target = sys.argv.pop(1)
    harness.run(TARGETS[target], lambda: seeds(target), target)
    sys.exit(0)
