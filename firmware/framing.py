# Link framing (docs/protocol.md §5.2, §5.3): how one frame of §2 travels on a serial line
# (COBS with 0x00 delimiters and a CRC-16) and in a BLE 5 extended advertisement (one
# manufacturer-specific AD structure).  Written once, in the MicroPython subset: the node
# frames with it before uart.write() / gap_advertise(), the gateway deframes with it after
# pyserial's read() / bleak's detection callback.
#
# On the wire, one frame of §2 is:   00 | COBS(frame | crc16_be(frame)) | 00
# CRC-16/GENIBUS (poly 0x1021, init 0xffff, not reflected, final xor 0xffff; check value
# of "123456789" is 0xd64e), appended big-endian.  COBS is Cheshire & Baker, IEEE/ACM
# Trans. Networking 7(2), 1999: the stuffed bytes contain no 0x00, so 0x00 only ever
# delimits, and a receiver that starts in the middle of a stream (or after line noise)
# is back in step at the next 0x00.
#
# In:  frame bytes (encode) / any bytes read from the line (Deframer.feed).
# Out: wire bytes / the frames whose CRC checks, in order.
# On failure: encode() raises ValueError for an empty or oversized frame; feed() never
# raises for any bytes: a bad frame increments one of its counters and is dropped.
#
# BLE: ble_adv_data(frame) is the advertising data; ble_frame(value) takes the value bleak
# reports under BLE_COMPANY_ID and returns the frame, or None when it is not ours.
#
# RAM: a Deframer holds one bytearray of 203 bytes (the largest stuffed 200-byte frame
# with its CRC) allocated once; each good frame costs one bytes object; no tables.
# encode_into() writes into a caller's buffer of max_wire() = 205 bytes.

try:  # CPython's C implementation of this CRC's register; MicroPython has none
    from binascii import crc_hqx as _crc_hqx  # type: ignore
except ImportError:
    _crc_hqx = None

from firmware.protocol import MAX_FRAME

DELIMITER = 0x00
CRC_LEN = 2
CRC_INIT = 0xFFFF
# Without this final inversion a damaged end delimiter (00 -> 01, which COBS decodes as
# one more 00 byte) would turn every frame into a "valid" one a byte longer: for a CRC
# without output xor, CRC(M | crc_hi) == crc_lo | 00.  With it, that damage is always
# detected (docs/protocol.md §5.2).
CRC_XOROUT = 0xFFFF
_POLY = 0x1021
_COBS_BLOCK = 0xFF  # a code byte of 0xff: 254 data bytes follow and no zero is implied


def crc16(data):
    """The link CRC of `data` (bytes, bytearray or memoryview), §5.2: CRC-16/GENIBUS,
    that is CRC-16/CCITT-FALSE with its result inverted."""
    if _crc_hqx is not None:
        return _crc_hqx(data, CRC_INIT) ^ CRC_XOROUT
    crc = CRC_INIT
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            if crc & 0x8000:
                crc = ((crc << 1) ^ _POLY) & 0xFFFF
            else:
                crc = (crc << 1) & 0xFFFF
    return crc ^ CRC_XOROUT


def max_stuffed(n):
    """Largest COBS encoding of `n` bytes: one code byte per started 254-byte block."""
    return n + n // 254 + 1


def max_wire(max_frame=MAX_FRAME):
    """Bytes on the wire for the largest frame: both delimiters, COBS and the CRC."""
    return max_stuffed(max_frame + CRC_LEN) + 2


def stuff_into(buf, pos, data, tail=b""):
    """COBS-encode `data` followed by `tail` (two parts, so a CRC needs no copy of the
    frame) into `buf` from `pos`; return the position after the last byte written.
    Standard COBS: a block that ends the input exactly at 254 bytes gets no extra code
    byte.  `buf` needs max_stuffed(len(data) + len(tail)) bytes from `pos`."""
    n = len(data)
    total = n + len(tail)
    code_pos = pos  # where the current block's code byte goes
    pos += 1
    code = 1
    for i in range(total):
        b = data[i] if i < n else tail[i - n]
        if b == 0:
            buf[code_pos] = code
            code_pos = pos
            pos += 1
            code = 1
        else:
            buf[pos] = b
            pos += 1
            code += 1
            if code == _COBS_BLOCK:
                buf[code_pos] = code
                code = 1
                if i == total - 1:
                    return pos
                code_pos = pos
                pos += 1
    buf[code_pos] = code
    return pos


def unstuff_into(buf, n):
    """COBS-decode buf[0:n] in place (the output is never longer than the input).
    Returns the decoded length, or -1 when the input is not valid COBS (a 0x00, or a
    code byte that points past the end)."""
    read = 0
    write = 0
    while read < n:
        code = buf[read]
        if code == 0:
            return -1
        read += 1
        end = read + code - 1
        if end > n:
            return -1
        while read < end:
            buf[write] = buf[read]
            write += 1
            read += 1
        if code != _COBS_BLOCK and read < n:
            buf[write] = 0
            write += 1
    return write


def stuff(data):
    """COBS encoding of `data` (no delimiters)."""
    buf = bytearray(max_stuffed(len(data)))
    return bytes(buf[: stuff_into(buf, 0, data)])


def unstuff(data):
    """COBS decoding of `data` (no delimiters), or None when it is not valid COBS."""
    buf = bytearray(data)
    n = unstuff_into(buf, len(buf))
    return None if n < 0 else bytes(buf[:n])


def encode_into(buf, frame):
    """Write the wire form of `frame` into `buf` (a bytearray of at least
    max_wire(len(frame)) bytes, allocated once by the caller); return its length."""
    n = len(frame)
    if n == 0:
        raise ValueError("an empty frame cannot be sent")
    if len(buf) < max_wire(n):
        raise ValueError("buffer of %d bytes is too small for a %d-byte frame (need %d)" % (
            len(buf), n, max_wire(n)))
    crc = crc16(frame)
    buf[0] = DELIMITER
    pos = stuff_into(buf, 1, frame, bytes((crc >> 8, crc & 0xFF)))
    buf[pos] = DELIMITER
    return pos + 1


def encode(frame, max_frame=MAX_FRAME):
    """The wire bytes of one frame: 00, COBS(frame + CRC-16 big-endian), 00."""
    if len(frame) > max_frame:
        raise ValueError("frame is %d bytes, the serial link carries at most %d" % (
            len(frame), max_frame))
    buf = bytearray(max_wire(len(frame)))
    return bytes(buf[: encode_into(buf, frame)])


class Deframer:
    """Turns a byte stream from the line into frames, §5.2.

    feed() may be given any number of bytes at a time (a frame split over many reads,
    many frames in one read); it returns the complete frames whose CRC checks.  Counters,
    never reset: `frames` (good), `crc_errors` (checksum mismatch), `oversized` (more
    bytes between delimiters than the largest frame stuffs to: 203), `malformed` (bad
    stuffing, or too short to hold a CRC and one byte).  Bytes before the first 0x00
    after reset() are the tail of a frame whose start was missed; they are skipped, not
    counted.
    """

    def __init__(self, max_frame=MAX_FRAME):
        self.max_frame = max_frame
        self._limit = max_stuffed(max_frame + CRC_LEN)
        self._buf = bytearray(self._limit)
        self._len = 0
        self._skipping = True
        self.frames = 0
        self.crc_errors = 0
        self.oversized = 0
        self.malformed = 0

    def reset(self):
        """Forget a partial frame (the port was closed and reopened): wait for a 0x00."""
        self._len = 0
        self._skipping = True

    def feed(self, data):
        out = []
        buf = self._buf
        limit = self._limit
        for b in data:
            if b == DELIMITER:
                if not self._skipping and self._len:
                    frame = self._finish()
                    if frame is not None:
                        out.append(frame)
                self._len = 0
                self._skipping = False
            elif self._skipping:
                continue
            elif self._len == limit:
                self.oversized += 1
                self._skipping = True
            else:
                buf[self._len] = b
                self._len += 1
        return out

    def _finish(self):
        n = unstuff_into(self._buf, self._len)
        if n < CRC_LEN + 1:
            self.malformed += 1
            return None
        body = n - CRC_LEN
        view = memoryview(self._buf)
        if crc16(view[:body]) != (self._buf[body] << 8) | self._buf[body + 1]:
            self.crc_errors += 1
            return None
        if body > self.max_frame:  # a long run of non-zero bytes stuffs with less overhead
            self.oversized += 1
            return None
        self.frames += 1
        return bytes(view[:body])


# -- BLE 5 extended advertisement, §5.3 ----------------------------------------------------

AD_MANUFACTURER_DATA = 0xFF  # Core Specification Supplement, Part A, §1.4
# 0xffff is the Bluetooth SIG's id "for internal use / testing": it MUST be replaced by a
# company id the city registers with the SIG before nodes advertise outside the test zones.
BLE_COMPANY_ID = 0xFFFF
BLE_MARKER = 0xD1  # 0xd_: a dordt frame; _1: this carrier layout, version 1
BLE_HEADER_LEN = 5  # AD length, AD type, company id (2, little-endian), marker


def ble_adv_data(frame, max_frame=MAX_FRAME):
    """The advertising data that carries `frame`: one AD structure, §5.3."""
    n = len(frame)
    if n == 0 or n > max_frame:
        raise ValueError("frame is %d bytes, a BLE advertisement carries 1 to %d" % (
            n, max_frame))
    head = bytes((n + BLE_HEADER_LEN - 1, AD_MANUFACTURER_DATA, BLE_COMPANY_ID & 0xFF,
                  BLE_COMPANY_ID >> 8, BLE_MARKER))
    return head + bytes(frame)


def ble_frame(value, max_frame=MAX_FRAME):
    """The frame inside the manufacturer data `value` reported under BLE_COMPANY_ID
    (company id already stripped, as bleak and BlueZ give it), or None when the value
    is not a dordt frame carrier.  Never raises for any bytes."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        return None
    if len(value) < 2 or len(value) > max_frame + 1 or value[0] != BLE_MARKER:
        return None
    return bytes(value[1:])
