"""Fuzz target: the metric-section decoder (compiled `_speedups.metrics` and Python's).

Input: byte 0 picks the kind and the status flag and byte 1 the metric count; the rest is
the metric section.  The frame is built around it with a good header and the right tag,
so every input reaches the metric decoder.  The compiled decoder, Python's fast path and
the reference path must agree on the Reading (fields and line text) or the rejection.
"""

from __future__ import annotations

import sys

import harness

harness.load_speedups()
with harness.instrumented():
    from firmware import metrics, protocol
    from gateway.model import Envelope

import fuzz_frame  # noqa: E402 - after the C module is in place

HEADER = protocol._HEADER


def frame_of(data: bytes) -> bytes:
    pick = data[0] if data else 0
    count = data[1] if len(data) > 1 else 1
    section = data[2:2 + protocol.MAX_FRAME]
    node = fuzz_frame.NODES[pick % len(fuzz_frame.NODES)]
    entry = fuzz_frame.RING.get(node)
    key_id = min(entry.keys)
    flags = protocol.FLAG_STATUS if pick & 0x80 else 0
    import struct

    signed = struct.pack(HEADER, protocol.VERSION, entry.kind_id, flags, key_id, node, 1042,
                         1764331200, 60, count) + section
    return signed + protocol.tag_of(entry.keys[key_id], signed)


def one_input(data: bytes) -> None:
    frame = frame_of(data)
    node = int.from_bytes(frame[4:8], "big")
    env = Envelope("mqtt", protocol.topic_up("spoorzone", node), frame, fuzz_frame.NOW)
    results = {path: fuzz_frame._check(path, env)
               for path in ("compiled", "compiled_metrics", "python", "reference")}
    want = results["reference"]
    for path, got in results.items():
        if got != want:
            raise AssertionError(f"{path} gives {got}, the reference path {want}")


def seeds():
    for vector in harness.vectors()["good"]:
        frame = bytes.fromhex(vector["frame"])
        f = vector["fields"]
        if f["kind"] not in metrics.KIND_NAMES:
            continue
        kind_pick = fuzz_frame.NODES.index(f["node_id"]) if f["node_id"] in \
            fuzz_frame.NODES else 0
        pick = kind_pick | (0x80 if f["flags"] & protocol.FLAG_STATUS else 0)
        yield bytes([pick, len(f["metrics"])]) + frame[protocol.HEADER_LEN:-protocol.TAG_LEN]


if __name__ == "__main__":
    harness.run(one_input, seeds, "metrics")
    sys.exit(0)
