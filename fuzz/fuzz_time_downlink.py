"""Fuzz target: the node's downlink time message (firmware side, docs/protocol.md §5.1.1).

Input: a message on the node's `down` topic.  firmware.uplink.mqtt.decode_time never
raises, and accepts a message only when it is exactly what encode_time makes for this
node, key id and key (so the first 14 bytes of an accepted message re-sign to it).
"""

from __future__ import annotations

import sys

import harness

with harness.instrumented():
    from firmware.uplink import mqtt as uplink

KEY = bytes(range(32))
NODE = 0x0D0A0001


def one_input(data: bytes) -> None:
    for msg in (data, bytearray(data), memoryview(data)):
        got = uplink.decode_time(msg, KEY, NODE)
        if got is not None:
            counter, unix_s = got
            assert uplink.encode_time(KEY, NODE, counter, unix_s) == bytes(data)
    # the same bytes, re-signed, must be taken when they have the right shape
    if len(data) == uplink.TIME_MSG_LEN:
        signed = bytes(data[:14])
        from firmware import protocol

        msg = signed + protocol.hmac_sha256(KEY, signed)[:protocol.TAG_LEN]
        uplink.decode_time(msg, KEY, NODE)


def seeds():
    yield uplink.encode_time(KEY, NODE, 5, 1764331200)
    yield uplink.encode_time(KEY, NODE, 2**32 - 1, 2**32 - 1)
    yield uplink.encode_time(KEY, NODE + 1, 5, 1764331200)
    yield uplink.encode_time(KEY, NODE, 5, 10)
    yield b""


if __name__ == "__main__":
    harness.run(one_input, seeds, "time_downlink")
    sys.exit(0)
