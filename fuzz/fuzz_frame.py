"""Fuzz target: the frame decoder and verifier, every path against the others.

Input: a mode byte, then a frame.  Mode bit 0: re-sign the frame with its node's key (the
last 16 bytes replaced by the right tag), so the checks behind the tag are reached;
bit 1: send it on another node's topic; bit 2: on an empty topic (serial, BLE).
Each input goes through four verifiers, fresh: the compiled path (gateway/_speedups.c,
the ASan build under make fuzz), Python's fast path with the compiled metric decoder,
Python's fast path alone, and the reference path (firmware/protocol.py).  All must give
the same Reading or the same Rejected; firmware.protocol.decode must agree on whether
the structure is sound.  A difference or any exception is a finding.
"""

from __future__ import annotations

import sys

import harness

harness.load_speedups()
with harness.instrumented():
    from firmware import metrics, protocol
    from fleet.keyring import Keyring, NodeEntry
    from gateway import verify as verify_module
    from gateway.model import Envelope, Reading, Rejected
    from gateway.verify import Verifier

NOW = 1764331200.5
_KEYS = {}
for _v in harness.vectors()["good"]:
    f = _v["fields"]
    if f["kind"] in metrics.KIND_NAMES:
        _KEYS.setdefault((f["node_id"], f["key_id"]), (f["kind"], bytes.fromhex(_v["key"])))
RING = Keyring()
for (_node, _key_id), (_kind, _key) in _KEYS.items():
    if RING.get(_node) is None:
        RING.add(NodeEntry(_node, metrics.KIND_NAMES[_kind], "spoorzone", "spz 1,a=b",
                           {_key_id: _key}))
    else:
        RING.get(_node).keys[_key_id] = _key
NODES = sorted({n for n, _ in _KEYS})


class _PythonTables(dict):  # the fast path without the compiled metric decoder
    def __missing__(self, key):
        value = self[key] = (verify_module._ALLOWED[key], None)
        return value


def _check(path: str, env: Envelope):
    saved = verify_module._verify_c, verify_module._TABLES
    try:
        if path != "compiled":
            verify_module._verify_c = None
        if path == "python":
            verify_module._TABLES = _PythonTables()
        verifier = Verifier(RING, clock=lambda: NOW)
        if path == "reference":
            verifier._fast = lambda env: None
        first = verifier.check(env)
        again = verifier.check(env)  # the same frame twice: now a replay, or as before
        return first, again
    finally:
        verify_module._verify_c, verify_module._TABLES = saved


def make_envelope(data: bytes) -> Envelope:
    mode, frame = (data[0], data[1:]) if data else (0, b"")
    node = int.from_bytes(frame[4:8], "big") if len(frame) >= 8 else NODES[0]
    entry = RING.get(node)
    if mode & 1 and entry is not None and len(frame) >= 3 + protocol.TAG_LEN and \
            len(frame) > 3 and frame[3] in entry.keys:
        signed = frame[:-protocol.TAG_LEN]
        frame = signed + protocol.tag_of(entry.keys[frame[3]], signed)
    if mode & 4:
        topic = ""
    elif mode & 2:
        topic = protocol.topic_up("maasterras", NODES[(mode >> 3) % len(NODES)])
    else:
        topic = protocol.topic_up("spoorzone", node)
    return Envelope("mqtt", topic, bytes(frame), NOW)


def one_input(data: bytes) -> None:
    env = make_envelope(data)
    results = {path: _check(path, env)
               for path in ("compiled", "compiled_metrics", "python", "reference")}
    want = results["reference"]
    for path, got in results.items():
        if got != want:
            raise AssertionError(f"{path} gives {got}, the reference path {want}")
    first = want[0]
    assert isinstance(first, (Reading, Rejected)), first
    try:
        protocol.decode(env.payload)
        structural = None
    except protocol.FrameError as exc:
        structural = exc.reason
    if isinstance(first, Reading):
        assert structural is None
    elif structural is not None and first.reason not in ("topic_mismatch",):
        assert first.reason == structural, (first.reason, structural)


def seeds():
    v = harness.vectors()
    for vector in v["good"] + v["bad"]:
        frame = bytes.fromhex(vector["frame"])
        for mode in (0, 1, 2, 4):
            yield bytes([mode]) + frame


if __name__ == "__main__":
    harness.run(one_input, seeds, "frame")
    sys.exit(0)
