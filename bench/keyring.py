"""Signed keyrings at fleet scale: what `dordt fleet keyring issue` costs for a gateway that
serves N nodes, and how long a running gateway's pipeline thread pauses to take the file.

Steps, all on this machine, into a temporary directory deleted afterwards:

1. a registry (fleet/registry.py) with N nodes in one zone, keys sealed under a master key
   (written straight to the tables: the import path is not what is measured);
2. timed: `issue_keyring` (open N sealed keys, seal the keyring to the gateway, sign it),
   and the gateway's `open_signed` (verify, decrypt, parse) of the file.

Baseline, same run: `Keyring.load` of the same nodes as a plain keyring JSON file, which
is what a gateway read before (once, at start).  Printed: each figure in milliseconds, the
file size, and the ratio of the gateway's open to the baseline.  Bounded: at most 20,000
nodes.  Last line: one JSON object.

    .venv/bin/python bench/keyring.py [--nodes 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402

from fleet import keyring_file  # noqa: E402
from fleet.keyring import Keyring  # noqa: E402
from fleet.registry import Registry  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    args = ap.parse_args()
    if not 1 <= args.nodes <= 20_000:
        ap.error("--nodes: 1 to 20000")
    with tempfile.TemporaryDirectory(prefix="dordt-bench-keyring-") as tmp:
        root = Path(tmp)
        reg = Registry.open(root / "fleet.sqlite", os.urandom(32), create=True)
        reg.sync_zones()
        _, pub = keyring_file.init_gateway_key(root / "gw")
        gateway_key = keyring_file.load_private(root / "gw" / keyring_file.GATEWAY_PRIVATE_NAME,
                                                X25519PrivateKey)
        reg.add_gateway("gw-bench", "spoorzone", pub.read_text())
        with reg.db:
            for i in range(args.nodes):
                node = f"{0x00100000 + i:08x}"
                reg.db.execute("INSERT INTO nodes(node, kind, zone, site, enrolled_at) VALUES "
                               "(?, 'air', 'spoorzone', 'spz-01', 'bench')", (node,))
                nonce, sealed = reg.seal_key(node, 0, os.urandom(32))
                reg.db.execute("INSERT INTO node_keys VALUES (?, 0, 'current', ?, ?, '', '')",
                               (node, nonce, sealed))
        signer = Ed25519PrivateKey.generate()
        t = time.perf_counter()
        data, _ = reg.issue_keyring("gw-bench", signer)
        issue_s = time.perf_counter() - t
        t = time.perf_counter()
        got = keyring_file.open_signed(data, "bench", signer.public_key(), "gw-bench",
                                       gateway_key)
        open_s = time.perf_counter() - t
        assert len(got.keyring) == args.nodes
        got.keyring.save(root / "plain.json")
        t = time.perf_counter()
        Keyring.load(root / "plain.json")
        plain_s = time.perf_counter() - t
        reg.close()
    print(f"{args.nodes} nodes: keyring issue {issue_s * 1000:.1f} ms, file {len(data):,} "
          f"bytes")
    print(f"gateway takes it (verify, decrypt, parse): {open_s * 1000:.1f} ms; plain keyring "
          f"load (baseline): {plain_s * 1000:.1f} ms; ratio {open_s / plain_s:.2f}")
    print(json.dumps({"nodes": args.nodes, "issue_s": round(issue_s, 4),
                      "gateway_open_s": round(open_s, 4), "plain_load_s": round(plain_s, 4),
                      "open_vs_plain": round(open_s / plain_s, 2), "file_bytes": len(data)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
