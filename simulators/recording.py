"""Recordings: a stream of (time, topic, payload) messages, and its compact file format.

The `Message` is the seam between every producer and consumer of simulated traffic:

    frame-level fleet (framegen) ─┐                         ┌─► RecordingWriter (file)
    sample-level nodes (node_host)├─► Message stream ─► faults ─► replay.Publisher (MQTT)
    RecordingReader (a file)     ─┤                         └─► a test's list
    broker capture (BrokerRecorder)┘

A *source* is any iterable of `Message` in non-decreasing `t_ms` (`MessageSource`);
`merge()` interleaves several (a few sample-level nodes among thousands of frame-level
ones).  Control events (a broker or gateway outage that a harness acts on) travel in the
same stream as messages with `qos == CONTROL`.

File format (docs/simulators.md has the byte tables):

    header:  "DORDTREC" | version u8 (1) | flags u8 (0) | varint meta length | meta JSON |
             varint topic count | per topic: varint length, UTF-8
    chunks:  "CK" | flags u8 | reserved u8 | raw length u32 | stored length u32 |
             record count u32 | base time u64 (ms) | CRC-32 of the stored bytes u32 |
             stored bytes (zlib of the records; flags bit 0 clear: stored as is)
    end:     "EN" | 0 u8 | 0 u8 | total records u64 | chunk count u32
    record:  zigzag varint dt (ms since the previous record; the first of a chunk: since
             its base time) | varint head = topic index << 4 | new << 3 | retain << 2 | qos
             | if new: varint length + UTF-8 topic | varint payload length | payload

Integers in headers are big-endian.  Each chunk decodes on its own given the topics
defined before it, so a file can be read while it is written, and a file cut short loses
only its last chunk: the reader stops there and reports it in `problem`.

In: Messages.  Out: a file, and Messages back.  On failure: `RecordingError` naming the
file and the byte offset; a damaged or cut-short tail is reported, not raised.
"""

from __future__ import annotations

import heapq
import io
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

MAGIC = b"DORDTREC"
VERSION = 1
CHUNK_MAGIC = b"CK"
END_MAGIC = b"EN"
CONTROL = 3  # `qos` of a control event: not an MQTT message, an instruction to a harness
FLAG_ZLIB = 0x01

_CHUNK = struct.Struct(">2sBBIIIQI")  # magic, flags, reserved, raw, stored, count, base, crc
_END = struct.Struct(">2sBBQI")  # magic, 0, 0, total records, chunks
CHUNK_HEADER_LEN = _CHUNK.size
END_LEN = _END.size
DEFAULT_CHUNK_BYTES = 256 * 1024
MAX_CHUNK_BYTES = 64 * 1024 * 1024


class Message(NamedTuple):
    """One message of a stream: publish `payload` on `topic` at `t_ms` (Unix time, ms).

    With `qos == CONTROL` it is a control event instead: `topic` names the action
    ("broker.stop", "broker.start", "gateway.stop", "gateway.start") and `payload` is a
    JSON object with its details."""

    t_ms: int
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False

    @property
    def is_control(self) -> bool:
        return self.qos == CONTROL

    @property
    def t_s(self) -> float:
        return self.t_ms / 1000


class MessageSource(Protocol):
    """Anything that yields Messages in non-decreasing time: FrameGenerator.messages(),
    RecordingReader, a fault pipeline, the sample-level node host."""

    def __iter__(self) -> Iterator[Message]: ...


class MessageLog:
    """A MessageSource filled one message at a time by a producer that publishes as it
    runs — the sample-level node host (simulators/node_host.py: hand `deliver` to its
    broker stand-in), a test — stamped by `clock` (Unix seconds; for a simulated node,
    the simulation's own time).  Iterating yields them in time order (stable)."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.messages: list[Message] = []

    def deliver(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.messages.append(Message(int(self.clock() * 1000), topic, bytes(payload), qos,
                                     retain))

    def __iter__(self) -> Iterator[Message]:
        return iter(sorted(self.messages, key=lambda m: m.t_ms))

    def __len__(self) -> int:
        return len(self.messages)


def control(t_ms: int, action: str, **details) -> Message:
    """A control event for the harness (see Message)."""
    return Message(t_ms, action, json.dumps(details, sort_keys=True).encode(), CONTROL)


def merge(*sources: Iterable[Message]) -> Iterator[Message]:
    """Interleave time-ordered sources into one, by time; ties keep the sources' order."""
    return heapq.merge(*sources, key=lambda m: m.t_ms)


class RecordingError(ValueError):
    """A file that is not a readable recording; the message names it and the offset."""


# -- varints (LEB128, as the wire protocol's; zigzag for signed) ---------------------------


def put_varint(buf: bytearray, n: int) -> None:
    while n >= 0x80:
        buf.append((n & 0x7F) | 0x80)
        n >>= 7
    buf.append(n)


def varint_bytes(n: int) -> bytes:
    buf = bytearray()
    put_varint(buf, n)
    return bytes(buf)


def zigzag(n: int) -> int:
    return n << 1 if n >= 0 else (-n << 1) - 1


def _get_varint(data, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


# -- chunks ------------------------------------------------------------------------------


def chunk_bytes(records: bytes | bytearray, count: int, base_ms: int, level: int = 6) -> bytes:
    """Frame `count` encoded records (starting from `base_ms`) as one chunk."""
    if level:
        stored = zlib.compress(records, level)
        flags = FLAG_ZLIB
    else:
        stored = bytes(records)
        flags = 0
    return _CHUNK.pack(CHUNK_MAGIC, flags, 0, len(records), len(stored), count, base_ms,
                       zlib.crc32(stored)) + stored


class ChunkEncoder:
    """Encodes Messages into chunk records.  Topic indexes come from `topics`; a topic not
    in it is defined in the stream on first use when `define_new`, else it is an error
    (parallel writers must agree on the table up front)."""

    def __init__(self, topics: dict[str, int], define_new: bool = True):
        self.topics = topics
        self.define_new = define_new
        self.buf = bytearray()
        self.count = 0
        self.base_ms = 0
        self.last_ms = 0

    def add(self, msg: Message) -> None:
        buf = self.buf
        if not self.count:
            self.base_ms = self.last_ms = msg.t_ms
        put_varint(buf, zigzag(msg.t_ms - self.last_ms))
        self.last_ms = msg.t_ms
        qos = msg.qos
        if not 0 <= qos <= CONTROL:
            raise ValueError(f"qos must be 0, 1, 2 or CONTROL (3), got {qos!r}")
        index = self.topics.get(msg.topic)
        if index is None:
            if not self.define_new:
                raise RecordingError(f"topic {msg.topic!r} is not in the recording's table")
            index = self.topics[msg.topic] = len(self.topics)
            put_varint(buf, index << 4 | 8 | bool(msg.retain) << 2 | qos)
            name = msg.topic.encode()
            put_varint(buf, len(name))
            buf += name
        else:
            put_varint(buf, index << 4 | bool(msg.retain) << 2 | qos)
        put_varint(buf, len(msg.payload))
        buf += msg.payload
        self.count += 1

    def take(self, level: int = 6) -> bytes:
        """The chunk so far (b"" when empty); starts a new one."""
        if not self.count:
            return b""
        out = chunk_bytes(self.buf, self.count, self.base_ms, level)
        self.buf = bytearray()
        self.count = 0
        return out


def header_bytes(meta: dict, topics: list[str]) -> bytes:
    buf = bytearray(MAGIC)
    buf += bytes([VERSION, 0])
    meta_json = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    put_varint(buf, len(meta_json))
    buf += meta_json
    put_varint(buf, len(topics))
    for topic in topics:
        name = topic.encode()
        put_varint(buf, len(name))
        buf += name
    return bytes(buf)


def end_bytes(total: int, chunks: int) -> bytes:
    return _END.pack(END_MAGIC, 0, 0, total, chunks)


# -- writer ------------------------------------------------------------------------------


class RecordingWriter:
    """Writes a recording, streaming: records are collected into a chunk and the chunk is
    compressed and written when it reaches `chunk_bytes` (or on flush()).  close() writes
    the end marker; a file without one was not closed (a crash, or still being written).

    `meta` is a JSON-able dict (seed, source, ...; keep wall-clock times out of it when
    recordings must be reproducible); `topics` seeds the topic table (optional)."""

    def __init__(self, target: str | os.PathLike[str] | BinaryIO, meta: dict | None = None,
                 topics: Iterable[str] = (), chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 level: int = 6):
        if not 0 <= level <= 9:
            raise ValueError(f"zlib level must be 0..9, got {level}")
        if not 256 <= chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be 256..{MAX_CHUNK_BYTES}, got {chunk_bytes}")
        self.path = None if hasattr(target, "write") else Path(target)
        self._file: BinaryIO = (target if self.path is None  # type: ignore[assignment]
                                else open(self.path, "wb"))  # noqa: SIM115 - closed in close()
        self.meta = dict(meta or {})
        self.topic_list = list(dict.fromkeys(topics))
        self._encoder = ChunkEncoder({t: i for i, t in enumerate(self.topic_list)})
        self.chunk_limit = chunk_bytes
        self.level = level
        self.count = 0
        self.chunks = 0
        self.closed = False
        self._file.write(header_bytes(self.meta, self.topic_list))

    def write(self, msg: Message) -> None:
        self._encoder.add(msg)
        self.count += 1
        if len(self._encoder.buf) >= self.chunk_limit:
            self.flush()

    def write_all(self, messages: Iterable[Message]) -> int:
        n = 0
        for msg in messages:
            self.write(msg)
            n += 1
        return n

    def write_chunk(self, chunk: bytes, count: int) -> None:
        """Append a chunk encoded elsewhere (a parallel worker) with the same topic table."""
        self.flush()
        self._file.write(chunk)
        self.count += count
        self.chunks += 1

    def flush(self) -> None:
        """End the current chunk and write it (readers see it from now on)."""
        chunk = self._encoder.take(self.level)
        if chunk:
            self._file.write(chunk)
            self.chunks += 1
        self._file.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        self._file.write(end_bytes(self.count, self.chunks))
        self._file.flush()
        self.closed = True
        if self.path is not None:
            self._file.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_recording(path: str | os.PathLike[str], messages: Iterable[Message],
                    meta: dict | None = None, topics: Iterable[str] = (), **options) -> int:
    """Write `messages` to a new recording at `path`; returns how many were written."""
    with RecordingWriter(path, meta, topics, **options) as writer:
        return writer.write_all(messages)


# -- reader ------------------------------------------------------------------------------


class RecordingReader:
    """Reads a recording as Messages, streaming, one chunk in memory at a time.

    After iteration: `count` messages read, `complete` (the end marker was found and its
    totals match), `problem` (None, or what was wrong with the tail: cut short, damaged,
    not closed).  Iterating again starts over."""

    def __init__(self, path: str | os.PathLike[str] | bytes):
        if isinstance(path, (bytes, bytearray)):
            self.path = Path("<bytes>")
            self._data: bytes | None = bytes(path)
        else:
            self.path = Path(path)
            self._data = None
        with self._open() as f:
            self.meta, self.topics, self._body_offset = self._read_header(f)
        self.count = 0
        self.chunks = 0
        self.complete = False
        self.problem: str | None = None

    def _open(self) -> BinaryIO:
        if self._data is not None:
            return io.BytesIO(self._data)
        try:
            return open(self.path, "rb")  # noqa: SIM115 - callers close it
        except OSError as exc:
            raise RecordingError(f"{self.path}: cannot open: {exc.strerror}") from None

    def _read_header(self, f: BinaryIO) -> tuple[dict, list[str], int]:
        head = f.read(10)
        if len(head) < 10 or head[:8] != MAGIC:
            raise RecordingError(f"{self.path}: not a dordt recording (no {MAGIC.decode()} "
                                 "header)")
        if head[8] != VERSION:
            raise RecordingError(f"{self.path}: recording format version {head[8]}, this "
                                 f"tool reads {VERSION}")
        rest = f.read(1 << 20)  # header: meta and topics, far below 1 MiB
        try:
            n, pos = _get_varint(rest, 0)
            meta = json.loads(rest[pos:pos + n])
            pos += n
            count, pos = _get_varint(rest, pos)
            topics = []
            for _ in range(count):
                n, pos = _get_varint(rest, pos)
                if pos + n > len(rest):
                    raise IndexError
                topics.append(rest[pos:pos + n].decode())
                pos += n
        except (IndexError, ValueError, UnicodeDecodeError):
            raise RecordingError(f"{self.path}: the header is cut short or damaged") from None
        if not isinstance(meta, dict):
            raise RecordingError(f"{self.path}: the header's metadata is not an object")
        return meta, topics, 10 + pos

    def __iter__(self) -> Iterator[Message]:
        self.count = self.chunks = 0
        self.complete = False
        self.problem = None
        topics = list(self.topics)
        with self._open() as f:
            f.seek(self._body_offset)
            offset = self._body_offset
            while True:
                head = f.read(CHUNK_HEADER_LEN)
                if not head:
                    self.problem = (f"{self.path}: no end marker after {self.chunks} chunks: "
                                    "the recorder did not close the file (stopped, or still "
                                    "writing)")
                    return
                if head[:2] == END_MAGIC:
                    # A chunk header is longer than the end marker: `head` may hold the
                    # marker and what follows it (found by fuzzing, fuzz/fuzz_recording.py).
                    data = head + f.read(max(0, END_LEN - len(head)))
                    self._end(data[:END_LEN], offset, stray=len(data) > END_LEN or
                              bool(f.read(1)))
                    return
                if len(head) < CHUNK_HEADER_LEN:
                    self.problem = (f"{self.path}: cut short inside the header of chunk "
                                    f"{self.chunks + 1} at byte {offset}")
                    return
                magic, flags, _, raw_len, stored_len, count, base_ms, crc = _CHUNK.unpack(head)
                if magic != CHUNK_MAGIC or stored_len > MAX_CHUNK_BYTES * 2:
                    self.problem = (f"{self.path}: damaged at byte {offset}: expected a chunk "
                                    "header; the rest is skipped")
                    return
                stored = f.read(stored_len)
                if len(stored) < stored_len:
                    self.problem = (f"{self.path}: cut short in chunk {self.chunks + 1} at "
                                    f"byte {offset}: {len(stored)} of {stored_len} bytes; its "
                                    f"{count} messages are lost")
                    return
                offset += CHUNK_HEADER_LEN + stored_len
                if zlib.crc32(stored) != crc:
                    self.problem = (f"{self.path}: chunk {self.chunks + 1} at byte "
                                    f"{offset - stored_len - CHUNK_HEADER_LEN} is damaged "
                                    f"(CRC mismatch); stopped there, {count} messages lost")
                    return
                try:
                    raw = zlib.decompress(stored) if flags & FLAG_ZLIB else stored
                    if len(raw) != raw_len:
                        raise ValueError("length")
                    messages = _decode_records(raw, count, base_ms, topics)
                except (zlib.error, ValueError, IndexError, UnicodeDecodeError) as exc:
                    self.problem = (f"{self.path}: chunk {self.chunks + 1} does not decode "
                                    f"({exc}); stopped there")
                    return
                self.chunks += 1
                for msg in messages:
                    self.count += 1
                    yield msg

    def _end(self, data: bytes, offset: int, stray: bool = False) -> None:
        if len(data) < END_LEN:
            self.problem = f"{self.path}: cut short inside the end marker at byte {offset}"
            return
        _, _, _, total, chunks = _END.unpack(data)
        if total != self.count or chunks != self.chunks:
            self.problem = (f"{self.path}: the end marker counts {total} messages in {chunks} "
                            f"chunks, the file holds {self.count} in {self.chunks}")
            return
        if stray:
            self.problem = (f"{self.path}: bytes after the end marker at byte {offset}: "
                            "something was appended to a closed recording")
            return
        self.complete = True

    def messages(self) -> list[Message]:
        return list(self)


def _decode_records(raw: bytes, count: int, base_ms: int, topics: list[str]) -> list[Message]:
    out = []
    pos = 0
    t = base_ms
    get = _get_varint
    for _ in range(count):
        z, pos = get(raw, pos)
        t += (z >> 1) if not z & 1 else -((z + 1) >> 1)
        head, pos = get(raw, pos)
        index = head >> 4
        if head & 8:
            if index != len(topics):
                raise ValueError(f"topic {index} defined out of order")
            n, pos = get(raw, pos)
            topics.append(raw[pos:pos + n].decode())
            pos += n
        elif index >= len(topics):
            raise ValueError(f"topic {index} used before it is defined")
        n, pos = get(raw, pos)
        if pos + n > len(raw):
            raise ValueError("record runs past the chunk")
        out.append(Message(t, topics[index], raw[pos:pos + n], head & 3, bool(head & 4)))
        pos += n
    if pos != len(raw):
        raise ValueError(f"{len(raw) - pos} stray bytes after the last record")
    return out


def read_recording(path: str | os.PathLike[str]) -> list[Message]:
    return RecordingReader(path).messages()
