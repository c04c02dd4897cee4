"""Link framing (firmware/framing.py, docs/protocol.md §5.2 serial and §5.3 BLE).

The same program runs under real MicroPython and under CPython (with the C CRC and
with the pure one) and must print the same bytes; hypothesis then checks the round trip
and the deframer's resilience to noise, split writes and corruption on CPython.
"""

import json
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import framing, protocol

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
VECTORS = json.loads((REPO / "tests" / "vectors" / "frames.json").read_text(encoding="utf-8"))
GOOD = {v["name"]: bytes.fromhex(v["frame"]) for v in VECTORS["good"]}
AIR = GOOD["air_typical"]  # the worked example of §2.5


# -- one program, two interpreters -----------------------------------------------------------

# Plain Python that MicroPython 1.27 and CPython both run: results(inputs) → JSON-able dict.
_PROGRAM = r"""
from firmware import framing


def attempt(fn):
    try:
        return {"ok": fn()}
    except Exception as exc:
        return {"error": type(exc).__name__}


def deframe(stream, chunks):
    d = framing.Deframer()
    out = []
    pos = 0
    i = 0
    while pos < len(stream):
        size = chunks[i % len(chunks)]
        out.extend(f.hex() for f in d.feed(stream[pos:pos + size]))
        pos += size
        i += 1
    return {"frames": out, "counts": [d.frames, d.crc_errors, d.oversized, d.malformed]}


def results(inputs):
    frames = [bytes.fromhex(h) for h in inputs["frames"]]
    stuffed = [framing.stuff(bytes.fromhex(h)) for h in inputs["stuff"]]
    buf = bytearray(framing.max_wire())
    return {
        "check": framing.crc16(b"123456789"),
        "crc": [framing.crc16(f) for f in frames],
        "wire": [framing.encode(f).hex() for f in frames],
        "wire_into": [bytes(buf[:framing.encode_into(buf, f)]).hex() for f in frames],
        "stuff": [s.hex() for s in stuffed],
        "unstuff": [framing.unstuff(s).hex() for s in stuffed],
        "unstuff_bad": [framing.unstuff(bytes.fromhex(h)) for h in inputs["unstuff_bad"]],
        "stream": deframe(bytes.fromhex(inputs["stream"]), inputs["chunks"]),
        "ble": [framing.ble_adv_data(f).hex() for f in frames],
        "ble_frame": [
            None if framing.ble_frame(bytes.fromhex(h)) is None
            else framing.ble_frame(bytes.fromhex(h)).hex()
            for h in inputs["ble_values"]
        ],
        "errors": [
            attempt(lambda: framing.encode(b"")),
            attempt(lambda: framing.encode(bytes(201))),
            attempt(lambda: framing.encode_into(bytearray(10), frames[0])),
            attempt(lambda: framing.ble_adv_data(bytes(201))),
        ],
        "max_wire": framing.max_wire(),
    }
"""

_MICROPYTHON_TAIL = r"""
import json
import sys
with open("/inputs.json") as f:
    out = results(json.load(f))
out["implementation"] = sys.implementation.name
print(json.dumps(out))
"""

GARBAGE_RNG = random.Random(5)
STREAM_PARTS = [
    ("garbage", bytes(GARBAGE_RNG.randrange(256) for _ in range(50))),  # joined mid-frame
    ("frame", AIR),
    ("garbage", bytes(GARBAGE_RNG.randrange(256) for _ in range(97))),
    ("frame", GOOD["noise_typical"]),
    ("corrupt", AIR),  # one byte of the stuffed body changed: a CRC error
    ("raw", b"\x00" + b"\x55" * 300 + b"\x00"),  # oversized
    ("raw", b"\x00\x05\x11\x22\x00"),  # a code byte past the end: malformed
    ("raw", b"\x00\x02\x11\x00"),  # one byte: too short for a CRC, malformed
    ("raw", b"\x00\x00\x00\x00"),  # empty candidates: skipped silently
    ("frame", max(GOOD.values(), key=len)),  # a 200-byte frame
]


def _stream():
    out = bytearray()
    expected = []
    for what, data in STREAM_PARTS:
        if what == "frame":
            out += framing.encode(data)
            expected.append(data.hex())
        elif what == "corrupt":
            wire = bytearray(framing.encode(data))
            wire[20] = wire[20] ^ 0x40 or 0x01  # stays non-zero, so still one candidate
            out += wire
        else:
            out += data
    return bytes(out), expected


STREAM, STREAM_FRAMES = _stream()
INPUTS = {
    "frames": [f.hex() for f in GOOD.values()],
    "stuff": [
        "", "00", "0000", "11220033", "11223344", "11000000",
        bytes(range(1, 255)).hex(), bytes(range(1, 256)).hex(), bytes(range(256)).hex(),
        (bytes(range(1, 255)) + b"\x00").hex(), (b"\x07" * 600).hex(),
    ],
    "unstuff_bad": ["05112233", "00", "0311", "ff0102"],
    "stream": STREAM.hex(),
    "chunks": [1, 2, 3, 7, 64, 5, 200, 1, 13],
    "ble_values": [
        "d1" + AIR.hex(), "d1", "d2" + AIR.hex(), "", "d1" + "00" * 201, "d1" + "00" * 200,
    ],
}


def _cpython(pure_crc=False, monkeypatch=None):
    namespace = {}
    exec(_PROGRAM, namespace)  # noqa: S102 - our own test program, as MicroPython runs it
    if pure_crc:
        monkeypatch.setattr(framing, "_crc_hqx", None)
    return json.loads(json.dumps(namespace["results"](INPUTS)))


@pytest.fixture(scope="module")
def under_micropython(micropython):
    return micropython.run_json(
        _PROGRAM + _MICROPYTHON_TAIL, files={"/inputs.json": json.dumps(INPUTS)}, timeout_s=120
    )


@pytest.fixture(scope="module")
def under_cpython():
    return _cpython()


def test_micropython_gives_the_same_bytes_as_cpython(under_micropython, under_cpython):
    got = dict(under_micropython)
    assert got.pop("implementation") == "micropython"
    assert got.keys() == under_cpython.keys()
    for key in under_cpython:
        assert got[key] == under_cpython[key], key


def test_pure_crc_gives_the_same_bytes_as_the_c_one(under_cpython, monkeypatch):
    assert _cpython(pure_crc=True, monkeypatch=monkeypatch) == under_cpython


def test_results_are_right(under_cpython):
    r = under_cpython
    assert r["check"] == 0xD64E  # the CRC catalogue's check value for CRC-16/GENIBUS
    assert r["wire"] == r["wire_into"]
    assert r["stuff"][:6] == ["01", "0101", "010101", "0311220233", "0511223344", "0211010101"]
    assert r["unstuff"] == INPUTS["stuff"]
    assert r["unstuff_bad"] == [None, None, None, None]
    assert r["stream"]["frames"] == STREAM_FRAMES
    # frames, crc_errors, oversized, malformed: the garbage runs count as they fall
    frames, crc_errors, oversized, malformed = r["stream"]["counts"]
    assert frames == len(STREAM_FRAMES)
    assert oversized == 1 and crc_errors >= 1 and malformed >= 2
    assert r["ble_frame"] == [AIR.hex(), None, None, None, None, "00" * 200]
    assert r["errors"] == [{"error": "ValueError"}] * 4
    assert r["max_wire"] == 205


def test_cobs_matches_the_published_examples():
    # Cheshire & Baker's scheme as usually tabulated (e.g. Wikipedia's examples 1-10)
    assert framing.stuff(b"") == b"\x01"
    assert framing.stuff(b"\x00") == b"\x01\x01"
    assert framing.stuff(b"\x00\x00") == b"\x01\x01\x01"
    assert framing.stuff(bytes.fromhex("11220033")) == bytes.fromhex("0311220233")
    assert framing.stuff(bytes.fromhex("11000000")) == bytes.fromhex("0211010101")
    assert framing.stuff(bytes(range(1, 255))) == b"\xff" + bytes(range(1, 255))
    assert framing.stuff(bytes(range(256))) == (
        b"\x01\xff" + bytes(range(1, 255)) + b"\x02\xff"
    )
    assert framing.stuff(bytes(range(2, 256)) + b"\x00") == (
        b"\xff" + bytes(range(2, 256)) + b"\x01\x01"
    )


# -- the documented examples -----------------------------------------------------------------


def _doc_dump(section):
    """The hex dump (lines `0000  xx xx ...`) in a §5 subsection of docs/protocol.md."""
    start = DOC.index(f"### {section} ")
    end = DOC.index("\n### ", start + 1) if section != "5.3" else DOC.index("\n## 6.", start)
    lines = re.findall(r"^[0-9a-f]{4}  ((?:[0-9a-f]{2} ?)+)$", DOC[start:end], re.M)
    return bytes.fromhex("".join(lines))


def test_serial_example_in_the_spec_is_what_the_code_sends():
    assert _doc_dump("5.2") == framing.encode(AIR)
    assert framing.crc16(AIR) == 0x7F4F  # stated in §5.2


def test_ble_example_in_the_spec_is_what_the_code_advertises():
    adv = _doc_dump("5.3")
    assert adv == framing.ble_adv_data(AIR)
    assert adv[:5] == bytes.fromhex("3effffffd1") and len(adv) == 63
    assert framing.ble_frame(adv[4:]) == AIR  # bleak's value: the company id stripped


def test_ble_structure_layout():
    biggest = max(GOOD.values(), key=len)
    adv = framing.ble_adv_data(biggest)
    assert len(adv) == 205 == adv[0] + 1
    assert adv[1] == 0xFF and adv[2:4] == framing.BLE_COMPANY_ID.to_bytes(2, "little")
    assert adv[4] == framing.BLE_MARKER == 0xD1 and adv[5:] == biggest


# -- properties on CPython -------------------------------------------------------------------


@given(st.binary(max_size=800))
def test_cobs_round_trip_and_no_zero(data):
    stuffed = framing.stuff(data)
    assert 0 not in stuffed
    assert len(stuffed) <= framing.max_stuffed(len(data))
    if len(data) <= 253:
        assert len(stuffed) == len(data) + 1
    assert framing.unstuff(stuffed) == data


@given(st.binary(max_size=300))
def test_pure_crc_equals_the_c_one(data):
    import binascii

    expected = binascii.crc_hqx(data, 0xFFFF) ^ 0xFFFF  # CRC-16/GENIBUS
    saved, framing._crc_hqx = framing._crc_hqx, None
    try:
        assert framing.crc16(data) == expected
    finally:
        framing._crc_hqx = saved


frames_st = st.lists(st.binary(min_size=1, max_size=protocol.MAX_FRAME), min_size=1, max_size=6)


@settings(max_examples=200)
@given(
    frames_st,
    st.lists(st.binary(max_size=400), min_size=7, max_size=7),
    st.lists(st.integers(1, 90), min_size=1, max_size=10),
)
def test_every_whole_frame_survives_any_garbage_between_and_any_split(frames, garbage, sizes):
    stream = bytearray(garbage[0])
    for i, frame in enumerate(frames):
        stream += framing.encode(frame) + garbage[i + 1]
    d = framing.Deframer()
    out, pos, i = [], 0, 0
    while pos < len(stream):
        out += d.feed(bytes(stream[pos : pos + sizes[i % len(sizes)]]))
        pos += sizes[i % len(sizes)]
        i += 1
    # Garbage may, once in 65536, pass its own CRC; it can never hide or alter a frame.
    assert [f for f in out if f in frames] == frames
    assert d.frames == len(out)


@given(st.binary(max_size=2000), st.integers(1, 300))
def test_deframer_never_raises_and_never_buffers_more_than_a_frame(data, size):
    d = framing.Deframer()
    for pos in range(0, len(data), size):
        for frame in d.feed(data[pos : pos + size]):
            assert 1 <= len(frame) <= protocol.MAX_FRAME
        assert d._len <= framing.max_stuffed(protocol.MAX_FRAME + framing.CRC_LEN)


def test_no_single_bit_error_delivers_a_wrong_frame():
    before, after = GOOD["noise_typical"], AIR
    wire = framing.encode(AIR)
    for byte in range(len(wire)):
        for bit in range(8):
            bad = bytearray(wire)
            bad[byte] ^= 1 << bit
            d = framing.Deframer()
            out = d.feed(framing.encode(before) + bytes(bad) + framing.encode(after))
            assert out == [before, after], (byte, bit)
            assert d.crc_errors + d.malformed + d.oversized >= 1, (byte, bit)


def test_a_damaged_end_delimiter_never_passes_as_a_longer_frame():
    # 00 -> 01 at the end: COBS decodes one more 00 after the CRC (§5.2, why the CRC is
    # inverted).  Checked over many frames, since without the inversion every one passes.
    rng = random.Random(3)
    for _ in range(2000):
        frame = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 201)))
        wire = bytearray(framing.encode(frame))
        wire[-1] = 0x01
        d = framing.Deframer()
        assert d.feed(bytes(wire) + b"\x00") == []
        assert d.crc_errors + d.oversized == 1  # oversized: a 200-byte frame without 00s


def test_oversize_boundary():
    limit = framing.max_stuffed(protocol.MAX_FRAME + framing.CRC_LEN)  # 203
    d = framing.Deframer()
    assert d.feed(b"\x00" + b"\x33" * limit + b"\x00") == []
    assert d.oversized == 0 and d.crc_errors + d.malformed == 1
    assert d.feed(b"\x00" + b"\x33" * (limit + 1) + b"\x00" + framing.encode(AIR)) == [AIR]
    assert d.oversized == 1


def test_bytes_before_the_first_delimiter_are_skipped_and_reset_forgets_a_partial_frame():
    wire = framing.encode(AIR)
    d = framing.Deframer()
    assert d.feed(wire[5:]) == []  # joined halfway: the tail is not a frame, not an error
    assert (d.crc_errors, d.malformed, d.oversized) == (0, 0, 0)
    d.feed(wire[:30])
    d.reset()  # the port was reopened: the half frame is forgotten, silently
    assert d.feed(wire[30:] + wire) == [AIR]
    assert (d.crc_errors, d.malformed, d.oversized) == (0, 0, 0)


def test_encode_refuses_what_the_link_cannot_carry():
    with pytest.raises(ValueError, match="empty"):
        framing.encode(b"")
    with pytest.raises(ValueError, match="201 bytes"):
        framing.encode(bytes(201))
    with pytest.raises(ValueError, match="too small"):
        framing.encode_into(bytearray(framing.max_wire() - 1), max(GOOD.values(), key=len))
    assert len(framing.encode(max(GOOD.values(), key=len))) == framing.max_wire() == 205
