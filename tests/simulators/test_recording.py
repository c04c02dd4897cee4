"""Recordings: reproducible byte for byte, lossless, and honest about a damaged tail."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from simulators.framegen import FrameGenerator, record, scaled_placements
from simulators.recording import (
    CONTROL,
    Message,
    MessageLog,
    RecordingError,
    RecordingReader,
    RecordingWriter,
    control,
    merge,
    read_recording,
    write_recording,
)
from simulators.zonemodel import local_to_utc

START = local_to_utc(dt.date(2026, 3, 14), 10)


def make(path, seed, workers=1, hours=1.5, nodes=27):
    gen = FrameGenerator(scaled_placements(nodes), seed=seed, cadence_s=10, status_every=30)
    return record(gen, path, START, START + int(hours * 3600), {"note": "test"},
                  workers=workers, chunk_bytes_max=64 * 1024)


def test_same_seed_gives_a_byte_identical_recording_whatever_the_workers(tmp_path):
    n = make(tmp_path / "a.rec", seed=11)
    make(tmp_path / "b.rec", seed=11)
    make(tmp_path / "c.rec", seed=11, workers=2)
    make(tmp_path / "d.rec", seed=12)
    a = (tmp_path / "a.rec").read_bytes()
    assert n == 540 * 27 + 540 * 27 // 30
    assert a == (tmp_path / "b.rec").read_bytes() == (tmp_path / "c.rec").read_bytes()
    assert a != (tmp_path / "d.rec").read_bytes()
    assert len(a) < 40 * n  # compact: ~30 bytes per ~60-byte frame


def test_a_recording_gives_back_exactly_the_messages_written(tmp_path):
    gen = FrameGenerator(seed=3, cadence_s=10)
    messages = list(merge(gen.messages(START, START + 600),
                          [control(START * 1000 + 300_000, "broker.stop", why="test")]))
    messages.append(Message(START * 1000 + 599_000, "elsewhere/retained", b"", 0, True))
    messages.append(Message(START * 1000 + 598_000, "dordt/v1/x/00000001/up", b"\x00" * 300, 2))
    path = tmp_path / "r.rec"
    assert write_recording(path, messages, {"seed": 3}, gen.topics[:5], chunk_bytes=4096) == (
        len(messages))
    reader = RecordingReader(path)
    assert reader.meta == {"seed": 3} and reader.topics == gen.topics[:5]
    assert list(reader) == messages
    assert reader.complete and reader.problem is None and reader.chunks > 3
    assert sum(m.qos == CONTROL for m in reader) == 1


def test_a_recording_cut_short_is_reported_and_read_up_to_the_cut(tmp_path):
    gen = FrameGenerator(seed=3, cadence_s=10)
    messages = list(gen.messages(START, START + 1800))
    path = tmp_path / "r.rec"
    write_recording(path, messages, chunk_bytes=16 * 1024)
    data = path.read_bytes()
    for cut in (len(data) - 5, len(data) - 200, len(data) // 2):
        reader = RecordingReader(data[:cut])
        got = list(reader)
        assert got == messages[:len(got)]
        assert not reader.complete and reader.problem
        assert "cut short" in reader.problem or "no end marker" in reader.problem
    reader = RecordingReader(data[:len(data) // 2])
    list(reader)
    assert "messages are lost" in reader.problem


def test_a_damaged_chunk_and_an_unclosed_file_are_reported(tmp_path):
    gen = FrameGenerator(seed=3, cadence_s=10)
    messages = list(gen.messages(START, START + 600))
    path = tmp_path / "r.rec"
    writer = RecordingWriter(path, {}, chunk_bytes=4096)
    writer.write_all(messages)
    writer.flush()  # a recorder that was killed: chunks on disk, no end marker
    reader = RecordingReader(path)
    got = list(reader)
    assert got == messages[:len(got)] and len(got) > len(messages) // 2
    assert "no end marker" in reader.problem
    writer.close()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    reader = RecordingReader(bytes(data))
    got = list(reader)
    assert got == messages[:len(got)] and "damaged" in reader.problem


def test_other_files_are_refused_with_the_reason(tmp_path):
    (tmp_path / "x").write_bytes(b"hello world")
    with pytest.raises(RecordingError, match="not a dordt recording"):
        RecordingReader(tmp_path / "x")
    (tmp_path / "v").write_bytes(b"DORDTREC\x02\x00\x00\x00")
    with pytest.raises(RecordingError, match="version 2"):
        RecordingReader(tmp_path / "v")


def test_a_message_log_is_a_source_like_any_other(tmp_path):
    """The seam for the sample-level node host: it publishes one message at a time on its
    simulated clock; the log turns that into a time-ordered source."""
    now = [START + 5.0]
    log = MessageLog(clock=lambda: now[0])
    log.deliver("dordt/v1/spoorzone/00010011/up", b"late", 1)
    now[0] = START + 1.5
    log.deliver("dordt/v1/spoorzone/00010011/up", bytearray(b"early"), 0)
    gen = FrameGenerator(seed=3, cadence_s=1, status_every=0)
    mixed = list(merge(gen.messages(START, START + 3), log))
    assert [m.payload for m in mixed if m.topic.endswith("00010011/up") and len(m.payload) < 9
            ] == [b"early", b"late"]
    assert [m.t_ms for m in mixed] == sorted(m.t_ms for m in mixed)
    write_recording(tmp_path / "m.rec", mixed)
    assert read_recording(tmp_path / "m.rec") == mixed


def test_an_end_marker_with_bytes_after_it_is_a_problem_not_a_crash():
    # Found by fuzz/fuzz_recording.py: the reader read a chunk header's worth of bytes,
    # saw the end marker's magic and unpacked all of them as the 16-byte marker.
    data = (Path(__file__).resolve().parents[1] / "fuzz" / "regressions" / "recording" /
            "end-marker-then-more-bytes").read_bytes()
    reader = RecordingReader(data)
    list(reader)
    assert not reader.complete and "end marker" in reader.problem
