"""Fuzz target: the DORDTREC reader (simulators/recording.py).

Input: a recording file's bytes.  Opening raises RecordingError or nothing; iterating
never raises (a damaged or cut-short tail ends the stream and is named in `problem`);
what was read re-encodes and reads back as the same messages.
"""

from __future__ import annotations

import io
import sys

import harness

with harness.instrumented():
    from simulators.recording import Message, RecordingError, RecordingReader, RecordingWriter


def one_input(data: bytes) -> None:
    try:
        reader = RecordingReader(data)
    except RecordingError:
        return
    messages = list(reader)
    assert reader.complete or reader.problem, "an incomplete recording names its problem"
    assert len(messages) == reader.count
    if not messages or any(m.t_ms < 0 or m.t_ms >= 2**63 for m in messages):
        return
    out = io.BytesIO()
    writer = RecordingWriter(out, reader.meta, reader.topics)
    for m in messages:
        writer.write(m)
    writer.close()
    assert list(RecordingReader(out.getvalue())) == messages


def seeds():
    for level in (0, 6):
        out = io.BytesIO()
        with RecordingWriter(out, {"source": "seed"}, ["dordt/v1/spoorzone/0d0a0001/up"],
                             chunk_bytes=256, level=level) as w:
            for i in range(40):
                w.write(Message(1764331200000 + 10_000 * i, "dordt/v1/spoorzone/0d0a0001/up",
                                bytes([i]) * 40, 1))
            w.write(Message(1764331900000, "gateway.stop", b'{"for_s": 5}', 3))
        whole = out.getvalue()
        yield whole
        yield whole[: len(whole) // 2]
        yield whole[:12]


if __name__ == "__main__":
    harness.run(one_input, seeds, "recording")
    sys.exit(0)
