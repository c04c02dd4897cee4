# Wire protocol v1: frame codec, HMAC tag, topics.  docs/protocol.md is the specification;
# section numbers below (§) refer to it.  Written once, in the MicroPython subset: the node
# signs with it, the gateway verifies with it, the simulators generate with it.
#
# In:  a node key (32 bytes) and the fields of a reading.  Out: frame bytes.  And back.
# On failure: encode() raises ValueError naming the field; decode() raises FrameError
# with a stable `reason` ("truncated", "oversized", "version", "malformed", "bad_tag") and
# a message for people, never any other exception for any byte string given to it.
#
# RAM: encode() builds one bytearray per frame (<= MAX_FRAME bytes); no tables.  The
# receiving side (decode, verify, open_frame, Frame, PreparedKey, ReplayWindow,
# parse_topic_up) and what only it uses (FrameError and its reasons, HEADER_LEN,
# MIN_FRAME, REPLAY_WINDOW, REPLAY, TOO_OLD) are in protocol_decode.py and are named from
# here too (__getattr__ below): a node, which only sends, never loads it (~4 KB of heap as
# an .mpy file, and their names: docs/firmware-image.md).

import struct

from firmware import use_module

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
TAG_LEN = 16  # §2: HMAC-SHA256 truncated to 128 bits
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
    if isinstance(key, (bytes, bytearray, memoryview)):
        return hmac_sha256(key, signed)[:TAG_LEN]
    return key.tag(signed)  # a PreparedKey (protocol_decode.py)


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


# -- topics, §5 ----------------------------------------------------------------------------


def node_name(node_id):
    """The node id as written in topics, keyrings and store tags: 8 lower-case hex digits."""
    return "%08x" % node_id


def topic_up(zone, node_id):
    return "%s/%s/%s/up" % (TOPIC_ROOT, zone, node_name(node_id))


# -- the receiving side, protocol_decode.py --------------------------------------------------

_RECEIVING = "firmware.protocol_decode"


def __getattr__(name):
    """protocol.decode, protocol.ReplayWindow, ...: the receiving side, imported on first
    use and then kept as an attribute of this module (one lookup per name)."""
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        value = getattr(use_module(_RECEIVING), name)
    except AttributeError:
        raise AttributeError("module %r has no attribute %r" % (__name__, name)) from None
    globals()[name] = value
    return value
