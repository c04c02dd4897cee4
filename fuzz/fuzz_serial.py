"""Fuzz target: serial framing (COBS + CRC-16, docs/protocol.md §5.2).

Input: a byte stream from the line.  The gateway's Deframer must never raise; every frame
it returns has a good CRC and at most MAX_FRAME bytes; feeding the stream in pieces (cut
where byte 0 says) gives the same frames as feeding it at once; and each frame it returns
encodes back to a line form that decodes to the same frame.
"""

from __future__ import annotations

import sys

import harness

with harness.instrumented():
    from firmware import framing


def one_input(data: bytes) -> None:
    whole = framing.Deframer()
    frames = whole.feed(data)
    step = (data[0] % 17 + 1) if data else 1
    pieces = framing.Deframer()
    split = []
    for i in range(0, len(data), step):
        split += pieces.feed(data[i:i + step])
    assert split == frames, (split, frames)
    counters = ("frames", "crc_errors", "oversized", "malformed")
    assert [getattr(whole, c) for c in counters] == [getattr(pieces, c) for c in counters]
    for frame in frames:
        assert 1 <= len(frame) <= framing.MAX_FRAME
        again = framing.Deframer().feed(b"\x00" + framing.encode(frame))
        assert again == [frame], (again, frame)


def seeds():
    v = harness.vectors()
    frames = [bytes.fromhex(x["frame"]) for x in v["good"] + v["bad"]]
    yield b"".join(b"\x00" + framing.encode(f) for f in frames[:5] if 0 < len(f) <= 200)
    for f in frames:
        if 0 < len(f) <= framing.MAX_FRAME:
            wire = framing.encode(f)
            yield b"\x00" + wire
            yield b"\x00" + wire[:-3] + bytes([wire[-3] ^ 1]) + wire[-2:]  # CRC error
            yield b"\x00" + wire[: len(wire) // 2]  # cut short
    yield b"\x00" + b"\x01" * 300  # oversized


if __name__ == "__main__":
    harness.run(one_input, seeds, "serial")
    sys.exit(0)
