# Wire protocol v1, the receiving side: decode a frame, check its tag, keep a node's replay
# window, parse an uplink topic.  docs/protocol.md is the specification (§ below); the
# sending side and everything shared (constants, the HMAC, encode, topics) is in
# protocol.py, which also names everything here (protocol.decode, protocol.FrameError,
# protocol.REPLAY, ...).
#
# In:  frame bytes, a node key.  Out: a Frame, or FrameError with a stable `reason`
# ("truncated", "oversized", "version", "malformed", "bad_tag") and a message for people;
# never any other exception for any byte string given to decode().
#
# RAM: for gateways and simulators; a node, which only sends, does not load this module.

import struct

try:
    import hashlib
except ImportError:  # pragma: no cover - some MicroPython ports name it uhashlib
    import uhashlib as hashlib  # type: ignore

from firmware.protocol import (
    _HEADER,
    _IPAD,
    _OPAD,
    FLAG_STATUS,
    FLAG_TIME_UNSYNCED,
    FLAGS_KNOWN,
    KEY_LEN,
    MAX_FRAME,
    MAX_METRICS,
    TAG_LEN,
    TOPIC_ROOT,
    VERSION,
    _xor,
    equal_ct,
    hmac_sha256,
    tag_of,
)

HEADER_LEN = 19  # §2: version .. metric count
MIN_FRAME = HEADER_LEN + 2 + TAG_LEN  # one metric with a one-byte value

# Reasons a frame can fail, as counted by the gateway.
TRUNCATED = "truncated"
OVERSIZED = "oversized"
BAD_VERSION = "version"
MALFORMED = "malformed"
BAD_TAG = "bad_tag"


class FrameError(ValueError):
    """A frame that cannot be accepted.  `reason` is one of the constants above."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self):
        return self.message


# Counters and replay, §6
REPLAY_WINDOW = 64  # counters below the highest seen that may still arrive (reordering)
REPLAY = "replay"  # this counter was already accepted
TOO_OLD = "too_old"  # older than the window: cannot tell, so refuse


class Frame:
    """A decoded frame.  `metrics` is a list of (metric id, raw fixed-point int), in
    ascending id order; `signed` is the byte string the tag covers."""

    def __init__(
        self, kind, node_id, counter, timestamp, window_s, metrics, key_id=0, flags=0,
        version=VERSION, tag=b"", signed=b"",
    ):
        self.version = version
        self.kind = kind
        self.flags = flags
        self.key_id = key_id
        self.node_id = node_id
        self.counter = counter
        self.timestamp = timestamp
        self.window_s = window_s
        self.metrics = metrics
        self.tag = tag
        self.signed = signed

    @property
    def time_synced(self):
        return not self.flags & FLAG_TIME_UNSYNCED

    @property
    def is_status(self):
        return bool(self.flags & FLAG_STATUS)

    def __repr__(self):
        return "Frame(node=%08x kind=%d ctr=%d ts=%d n=%d)" % (
            self.node_id, self.kind, self.counter, self.timestamp, len(self.metrics)
        )



class PreparedKey:
    """A node key with its HMAC pads hashed once (RFC 2104 §4: the keyed inner and outer
    states can be precomputed), so a tag costs two sha256 copies instead of two extra
    compressions: about 2x faster for gateways and simulators that tag many frames.
    Where sha256 objects cannot be copied (MicroPython) it falls back to hmac_sha256.
    Accepted wherever a key is (encode, verify, open_frame, tag_of)."""

    def __init__(self, key):
        if len(key) != KEY_LEN:
            raise ValueError("node key must be %d bytes, got %d" % (KEY_LEN, len(key)))
        self.key = bytes(key)
        padded = self.key + bytes(64 - KEY_LEN)
        inner = hashlib.sha256(_xor(padded, _IPAD))
        if not hasattr(inner, "copy"):
            self._inner = self._outer = None
            return
        self._inner = inner
        self._outer = hashlib.sha256(_xor(padded, _OPAD))

    def __len__(self):
        return KEY_LEN

    def __repr__(self):
        return "PreparedKey(<secret>)"

    def tag(self, signed):
        inner_state, outer_state = self._inner, self._outer
        if inner_state is None or outer_state is None:
            return hmac_sha256(self.key, signed)[:TAG_LEN]
        # copy() exists only where __init__ found it (CPython); MicroPython's stubs lack it
        inner = inner_state.copy()  # pyright: ignore[reportAttributeAccessIssue]
        inner.update(signed)
        outer = outer_state.copy()  # pyright: ignore[reportAttributeAccessIssue]
        outer.update(inner.digest())
        return outer.digest()[:TAG_LEN]



def _get_varint(data, pos, end):
    z = 0
    shift = 0
    while True:
        if pos >= end:
            raise FrameError(TRUNCATED, "frame ends inside a metric value at byte %d" % pos)
        b = data[pos]
        pos += 1
        if shift == 28 and b > 0x0F:
            raise FrameError(MALFORMED, "metric value longer than 32 bits at byte %d" % pos)
        z |= (b & 0x7F) << shift
        if not b & 0x80:
            if b == 0 and shift:
                raise FrameError(MALFORMED, "non-minimal varint at byte %d" % (pos - 1))
            break
        shift += 7
    raw = (z >> 1) if not z & 1 else -((z + 1) >> 1)
    return raw, pos


def decode(data):
    """Parse a frame's structure without checking its tag (see verify()).  Any input
    either returns a Frame or raises FrameError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError(MALFORMED, "frame must be bytes, got %s" % type(data).__name__)
    n = len(data)
    if n > MAX_FRAME:
        raise FrameError(OVERSIZED, "frame is %d bytes, the limit is %d" % (n, MAX_FRAME))
    if n >= 1 and data[0] != VERSION:
        raise FrameError(BAD_VERSION, "frame version %d, this decoder speaks %d" % (
            data[0], VERSION))
    if n < MIN_FRAME:
        raise FrameError(TRUNCATED, "frame is %d bytes, the minimum is %d" % (n, MIN_FRAME))
    version, kind, flags, key_id, node_id, counter, ts, window_s, count = struct.unpack_from(
        _HEADER, data, 0
    )
    if flags & ~FLAGS_KNOWN:
        raise FrameError(MALFORMED, "unknown flag bits 0x%02x" % (flags & ~FLAGS_KNOWN))
    if count == 0 or count > MAX_METRICS:
        raise FrameError(MALFORMED, "metric count %d outside 1..%d" % (count, MAX_METRICS))
    end = n - TAG_LEN
    pos = HEADER_LEN
    metrics = []
    last = -1
    for _ in range(count):
        if pos >= end:
            raise FrameError(TRUNCATED, "frame holds fewer than the %d metrics it announces"
                             % count)
        metric_id = data[pos]
        if metric_id <= last:
            raise FrameError(MALFORMED, "metric ids not strictly ascending at byte %d" % pos)
        last = metric_id
        pos += 1
        # the varint inline (no call per metric); every irregular case goes through
        # _get_varint, which raises the right error
        z = 0
        shift = 0
        start = pos
        while pos < end and shift < 28:
            b = data[pos]
            pos += 1
            z |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
        else:
            raw, pos = _get_varint(data, start, end)
            metrics.append((metric_id, raw))
            continue
        if b == 0 and shift:
            _get_varint(data, start, end)  # raises: non-minimal
        metrics.append((metric_id, (z >> 1) if not z & 1 else -((z + 1) >> 1)))
    if pos != end:
        raise FrameError(MALFORMED, "%d stray bytes after the last metric" % (end - pos))
    return Frame(
        kind, node_id, counter, ts, window_s, metrics, key_id, flags, version,
        bytes(data[end:]), bytes(data[:end]),
    )


def verify(frame, key):
    """True when the frame's tag is right for `key`."""
    return equal_ct(tag_of(key, frame.signed), frame.tag)


def open_frame(data, key):
    """decode() and verify() in one step: a Frame, or FrameError(BAD_TAG)."""
    frame = decode(data)
    if not verify(frame, key):
        raise FrameError(BAD_TAG, "tag does not match node %08x key %d" % (
            frame.node_id, frame.key_id))
    return frame


def parse_topic_up(topic):
    """(zone, node id) from an uplink topic, or None when it is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] + "/" + parts[1] != TOPIC_ROOT or parts[4] != "up":
        return None
    name = parts[3]
    if len(name) != 8 or not parts[2]:
        return None
    for ch in name:
        if ch not in "0123456789abcdef":
            return None
    return parts[2], int(name, 16)



class ReplayWindow:
    """Sliding-window replay check for one node (the IPsec/DTLS anti-replay window).

    `highest` is the highest counter accepted, `seen` a bitmap: bit d set means counter
    highest - d was accepted.  check() only looks; accept() records, so a frame whose
    reading is not yet durable can be refused again later without a false "replay".
    """

    def __init__(self, highest=-1, seen=0, size=REPLAY_WINDOW):
        self.highest = highest
        self.seen = seen
        self.size = size

    def check(self, counter):
        """None when `counter` is new, else REPLAY or TOO_OLD."""
        if counter > self.highest:
            return None
        behind = self.highest - counter
        if behind >= self.size:
            return TOO_OLD
        if (self.seen >> behind) & 1:
            return REPLAY
        return None

    def accept(self, counter):
        """Record `counter`; the caller has checked it."""
        if counter > self.highest:
            shift = counter - self.highest
            if self.highest < 0 or shift >= self.size:
                self.seen = 1
            else:
                self.seen = ((self.seen << shift) | 1) & ((1 << self.size) - 1)
            self.highest = counter
        else:
            self.seen |= 1 << (self.highest - counter)
