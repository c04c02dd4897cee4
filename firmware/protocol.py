# Wire protocol v1: frame codec, HMAC tag, topics.  docs/protocol.md is the specification;
# section numbers below (§) refer to it.  Written once, in the MicroPython subset: the node
# signs with it, the gateway verifies with it, the simulators generate with it.
#
# In:  a node key (32 bytes) and the fields of a reading.  Out: frame bytes.  And back.
# On failure: FrameError with a stable `reason` ("truncated", "oversized", "version",
# "malformed", "bad_tag") and a message for people; never any other exception for any
# byte string given to decode().
#
# RAM: encode() builds one bytearray per frame (<= MAX_FRAME bytes); no tables.

import struct

try:
    import hashlib
except ImportError:  # pragma: no cover - some MicroPython ports name it uhashlib
    import uhashlib as hashlib  # type: ignore

try:  # CPython's C implementations: much faster than the pure loops below
    from hmac import compare_digest as _compare_digest  # type: ignore
    from hmac import digest as _hmac_digest  # type: ignore
except ImportError:
    _hmac_digest = None
    _compare_digest = None

VERSION = 1
HEADER_LEN = 19  # §2: version .. metric count
TAG_LEN = 16  # §2: HMAC-SHA256 truncated to 128 bits
MIN_FRAME = HEADER_LEN + 2 + TAG_LEN  # one metric with a one-byte value
MAX_FRAME = 200  # §2: fits one BLE 5 extended advertisement with room for AD headers
MAX_METRICS = 48
KEY_LEN = 32

FLAG_TIME_UNSYNCED = 0x01  # §3: timestamp counts seconds since boot, not Unix time
FLAG_STATUS = 0x02  # §3: the frame carries status metrics only
FLAGS_KNOWN = FLAG_TIME_UNSYNCED | FLAG_STATUS

RAW_MIN = -(1 << 31)
RAW_MAX = (1 << 31) - 1
U32_MAX = 0xFFFFFFFF

TOPIC_ROOT = "dordt/v1"

# Header layout, big-endian (§2): version, kind, flags, key id, node id, counter,
# timestamp, window, metric count.
_HEADER = ">BBBBIIIHB"

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


# -- HMAC-SHA256 (RFC 2104), §4 ------------------------------------------------------------

_IPAD = bytes([0x36] * 64)
_OPAD = bytes([0x5C] * 64)


def _xor(a, b):
    return bytes(a[i] ^ b[i] for i in range(len(a)))


def hmac_sha256(key, msg):
    """HMAC-SHA256 of `msg` under `key`; our own so a node needs only hashlib."""
    if _hmac_digest is not None:
        return _hmac_digest(key, msg, "sha256")
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = bytes(key) + bytes(64 - len(key))
    inner = hashlib.sha256(_xor(key, _IPAD))
    inner.update(msg)
    outer = hashlib.sha256(_xor(key, _OPAD))
    outer.update(inner.digest())
    return outer.digest()


def tag_of(key, signed):
    """The frame tag of `signed` under `key` (bytes, or a PreparedKey)."""
    if isinstance(key, PreparedKey):
        return key.tag(signed)
    return hmac_sha256(key, signed)[:TAG_LEN]


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


def equal_ct(a, b):
    """Constant-time comparison (MicroPython's hmac has no compare_digest)."""
    if _compare_digest is not None:
        return _compare_digest(a, b)
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


# -- varints, §2.1 -------------------------------------------------------------------------


def _put_varint(buf, raw):
    # zigzag (protobuf sint32): small magnitudes of either sign take one byte
    z = (raw << 1) if raw >= 0 else ((-raw << 1) - 1)
    while z >= 0x80:
        buf.append((z & 0x7F) | 0x80)
        z >>= 7
    buf.append(z)


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


# -- encode / decode -----------------------------------------------------------------------


def encode(key, kind, node_id, counter, timestamp, window_s, metrics, key_id=0, flags=0):
    """Build and sign a frame.  `metrics` is an iterable of (metric id, raw int); it is
    sorted by id.  Raises ValueError naming the field when a value does not fit."""
    if len(key) != KEY_LEN:
        raise ValueError("node key must be %d bytes, got %d" % (KEY_LEN, len(key)))
    pairs = sorted(metrics)
    if not pairs or len(pairs) > MAX_METRICS:
        raise ValueError("a frame carries 1 to %d metrics, got %d" % (MAX_METRICS, len(pairs)))
    _check_range("kind", kind, 1, 255)
    _check_range("flags", flags, 0, FLAGS_KNOWN)
    _check_range("key_id", key_id, 0, 255)
    _check_range("node_id", node_id, 0, U32_MAX)
    _check_range("counter", counter, 0, U32_MAX)
    _check_range("timestamp", timestamp, 0, U32_MAX)
    _check_range("window_s", window_s, 0, 0xFFFF)
    buf = bytearray(
        struct.pack(
            _HEADER, VERSION, kind, flags, key_id, node_id, counter, timestamp, window_s,
            len(pairs),
        )
    )
    last = -1
    for metric_id, raw in pairs:
        _check_range("metric id", metric_id, 0, 255)
        if metric_id == last:
            raise ValueError("metric 0x%02x appears twice" % metric_id)
        last = metric_id
        _check_range("metric 0x%02x value" % metric_id, raw, RAW_MIN, RAW_MAX)
        buf.append(metric_id)
        _put_varint(buf, raw)
    if len(buf) + TAG_LEN > MAX_FRAME:
        raise ValueError("frame would be %d bytes, over %d" % (len(buf) + TAG_LEN, MAX_FRAME))
    buf.extend(tag_of(key, buf))
    return bytes(buf)


def _check_range(name, value, lo, hi):
    if not isinstance(value, int) or value < lo or value > hi:
        raise ValueError("%s must be an integer in %d..%d, got %r" % (name, lo, hi, value))


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


# -- topics, §5 ----------------------------------------------------------------------------


def node_name(node_id):
    """The node id as written in topics, keyrings and store tags: 8 lower-case hex digits."""
    return "%08x" % node_id


def topic_up(zone, node_id):
    return "%s/%s/%s/up" % (TOPIC_ROOT, zone, node_name(node_id))


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


# -- counters and replay, §6 ---------------------------------------------------------------

REPLAY_WINDOW = 64  # counters below the highest seen that may still arrive (reordering)
REPLAY = "replay"  # this counter was already accepted
TOO_OLD = "too_old"  # older than the window: cannot tell, so refuse


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
