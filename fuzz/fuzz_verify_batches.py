"""Fuzz target: `dordt gateway verify` reading stored batches back.

Input: what a store answers: byte 0 chooses the reader, the rest is a VictoriaMetrics
/api/v1/export body (odd byte 0) or line-protocol text stored in a local store file
(even).  The reader raises ValueError or returns points; verify_batches never raises
for any points and never counts a batch as verified unless its record is signed by the
gateway's key (the fuzzer has no key, so batches_ok stays 0 unless a seed's own batch).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import harness

with harness.instrumented():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.forward import PermanentStoreError, line_protocol
    from gateway.forward.local import LocalStore
    from gateway.provenance import (
        GatewayIdentity,
        ProvenanceRecord,
        batch_digest,
        canonical_line,
        parse_victoriametrics_export,
        read_local,
        verify_batches,
    )

WORK = Path(tempfile.mkdtemp(prefix="dordt-fuzz-"))
IDENTITY = GatewayIdentity("gw-fuzz", Ed25519PrivateKey.from_private_bytes(bytes(32)))
KEY = IDENTITY.public_key


def one_input(data: bytes) -> None:
    mode, body = (data[0], data[1:]) if data else (1, b"")
    if mode & 1:
        try:
            points = parse_victoriametrics_export(body)
        except ValueError:
            return
    else:
        path = WORK / f"store-{mode}.sqlite"
        path.unlink(missing_ok=True)
        store = LocalStore(path)
        try:
            store.write_lines([body.decode("utf-8", "replace")])
        except (PermanentStoreError, OverflowError):
            return
        finally:
            store.close()
        points = read_local(path, 0, 2**62)
    report = verify_batches(points, KEY, "gw-fuzz")
    assert report.batches_ok >= 0
    for problem in report.problems:
        assert isinstance(problem, str)


def _seed_batch() -> tuple[list[str], str]:
    """A real signed batch of two readings, as lines and as an export body."""
    readings = [("air", {"kind": "air", "node": "0d0a0001", "site": "s", "zone": "z"},
                 1764331200 + 10 * i, {"pm25_ugm3": 12.3 + i, "batch": 7.0}) for i in range(2)]
    lines = [canonical_line(m, t, ts, f) for m, t, ts, f in readings]
    rec = ProvenanceRecord("gw-fuzz", 7, 2, 1764331200, 1764331210, batch_digest(lines), 1,
                           bytes(32)).signed_by(IDENTITY)
    point = rec.to_point()
    text = [line.replace(" 17643", ",batch=7.0 17643") for line in lines]
    text.append(line_protocol(point))
    export = []
    for m, tags, ts, fields in readings:
        for name, value in fields.items():
            export.append(json.dumps({"metric": {"__name__": f"{m}_{name}", **tags},
                                      "values": [value], "timestamps": [ts * 1000]}))
    for name, value in point.fields.items():
        export.append(json.dumps({"metric": {"__name__": f"provenance_{name}",
                                             "gateway": "gw-fuzz", "slot": str(point.slot)},
                                  "values": [value], "timestamps": [point.time_s * 1000]}))
    return text, "\n".join(export)


def seeds():
    text, export = _seed_batch()
    yield b"\x01" + export.encode()
    yield b"\x00" + "\n".join(text).encode()
    yield b"\x01" + b'{"metric": {"__name__": "provenance_seq"}, "values": [1], ' \
                    b'"timestamps": [1]}'


if __name__ == "__main__":
    harness.run(one_input, seeds, "verify_batches")
    sys.exit(0)
