"""Fuzz targets: the loaders of files an operator or the fleet hands the gateway.

    python fuzz/fuzz_loaders.py keyring|policy|config [libFuzzer arguments]

Input: the file's bytes.  Keyring.load raises KeyringError, load_policy PolicyError and
load_config ConfigError for anything they do not take (each a ValueError with the path
in its message), and nothing else; a keyring that loads saves and loads back equal.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import harness

with harness.instrumented():
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


TARGETS = {"keyring": keyring, "policy": policy, "config": config}


def seeds(name: str):
    if name == "keyring":
        ring = Keyring()
        for i, zone in enumerate(("spoorzone", "maasterras", "spuiboulevard")):
            ring.enrol(0x0D0A0001 + i, "air", zone, f"site-{i}")
        ring.save(WORK / "seed.json")
        yield (WORK / "seed.json").read_bytes()
        yield b'{"format": "dordt-keyring", "version": 1, "nodes": []}'
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
