"""Enrolment bundles for fleet tests, sealed as `dordt provision enrol` seals them
(fleet/bundle.py), with node keys the test knows."""

from __future__ import annotations

import secrets
from pathlib import Path

from fleet import bundle as bundles


def make_bundle(root: Path, nodes: list[tuple[str, str, str, str]]
                ) -> tuple[Path, Path, dict[str, bytes]]:
    """A fleet enrolment key in root/enrol and root/bundle.json holding `nodes` (node, kind,
    zone, site): (bundle, enrolment private key, node -> key)."""
    private, public = bundles.init_enrol_key(root / "enrol")
    recipient = bundles.load_public_key(public)
    b = bundles.Bundle.load_or_new(root / "bundle.json", recipient)
    keys = {}
    for node, kind, zone, site in nodes:
        key = keys[node] = secrets.token_bytes(32)
        b.entries.append(bundles.seal(
            {"node": node, "kind": kind, "zone": zone, "site": site,
             "board": "esp32-s3-devkitc-1", "key_id": 0, "enrolled_at": "2026-12-04T10:00:00Z",
             "fingerprint": bundles.fingerprint(key)}, key, recipient))
    b.save(root / "bundle.json")
    return root / "bundle.json", private, keys
