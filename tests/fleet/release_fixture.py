"""TEST FIXTURE, not the release build: a small release directory in docs/ota.md §1's
layout (a slot MANIFEST.json naming two stand-in .mpy files of a few bytes), signed with
`cryptography`'s Ed25519, so rollout tests publish and plan releases in milliseconds.
Publishing checks it with fleet/release.py's verify_release, the same rules as a release
that `dordt fleet release build` compiles with mpy-cross (tests/fleet/test_release.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def make_release(root: Path, key: Ed25519PrivateKey, serial: int, version: str = "1.2.0",
                 kinds=("air", "noise", "crowd"),
                 hardware=("esp32-s3-devkitc-1", "pico-w"), rollback: bool = False,
                 created: int = 1_790_000_000) -> Path:
    files = {
        "firmware/node.mpy": b"M\x06\x00\x1f" + version.encode() * 20,
        "firmware/protocol.mpy": b"M\x06\x00\x1f" + bytes(range(256)),
    }
    slot = {"format": 1, "version": version, "arch": None,
            "files": [{"path": rel, "sha256": hashlib.sha256(data).hexdigest(),
                       "size": len(data)} for rel, data in sorted(files.items())]}
    files["MANIFEST.json"] = json.dumps(slot, sort_keys=True, separators=(",", ":")).encode()
    for rel, data in files.items():
        path = root / "files" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    entries = [{"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
               for rel, data in sorted(files.items())]
    manifest = {"format": "dordt-release", "format_version": 1, "version": version,
                "serial": serial, "rollback": rollback, "kinds": list(kinds), "arch": None,
                "min_firmware": "0.1.0", "hardware": list(hardware), "files": entries,
                "size": sum(e["size"] for e in entries), "created": created}
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    (root / "release.json").write_bytes(body)
    (root / "release.sig").write_text(key.sign(body).hex() + "\n")
    return root


def write_public_key(path: Path, key: Ed25519PrivateKey) -> Path:
    """The public key as a node keeps it (/release.pub): 64 hex digits."""
    path.write_text(key.public_key().public_bytes_raw().hex() + "\n")
    return path
