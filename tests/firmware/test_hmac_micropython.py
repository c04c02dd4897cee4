"""firmware.protocol's own HMAC-SHA256 (the path a node uses: MicroPython has no
hmac.digest) against RFC 4231, under real MicroPython and under CPython with the pure path
forced; and its constant-time comparison."""

import json

import pytest

from firmware import protocol

# RFC 4231 §4.2-§4.8, HMAC-SHA-256 rows: (key, data, expected MAC in hex).  Case 5 is the
# truncation case: its expected value is the first 128 bits, which is exactly our tag
# length (protocol.TAG_LEN), so it is checked through tag_of().
_BIG_KEY = "aa" * 131
RFC4231 = {
    1: (
        "0b" * 20,
        b"Hi There".hex(),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    ),
    2: (
        b"Jefe".hex(),
        b"what do ya want for nothing?".hex(),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    3: ("aa" * 20, "dd" * 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    4: (
        bytes(range(1, 26)).hex(),
        "cd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
    ),
    6: (
        _BIG_KEY,
        b"Test Using Larger Than Block-Size Key - Hash Key First".hex(),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    7: (
        _BIG_KEY,
        b"This is a test using a larger than block-size key and a larger than block-size "
        b"data. The key needs to be hashed before being used by the HMAC algorithm.".hex(),
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
}
RFC4231_TRUNCATED = ("0c" * 20, b"Test With Truncation".hex(), "a3b6167473100ee06e0c796c2955552b")

# Runs under MicroPython: reads (key hex, data hex) pairs, prints the MACs and whether the
# pure path was the one taken.
_MP_HMAC = """
import json, binascii
from firmware import protocol
cases = json.loads(%r)
out = {"pure": protocol._hmac_digest is None, "macs": [], "tags": []}
for key_hex, data_hex in cases:
    key = binascii.unhexlify(key_hex)
    data = binascii.unhexlify(data_hex)
    out["macs"].append(binascii.hexlify(protocol.hmac_sha256(key, data)).decode())
    out["tags"].append(binascii.hexlify(protocol.tag_of(key, data)).decode())
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def micropython_macs(micropython):
    """All RFC 4231 inputs through firmware.protocol in one MicroPython run."""
    inputs = [[key, data] for key, data, _ in RFC4231.values()]
    inputs.append(list(RFC4231_TRUNCATED[:2]))
    result = micropython.run_json(_MP_HMAC % json.dumps(inputs))
    assert result["pure"], "under MicroPython protocol.hmac_sha256 must take the pure path"
    return dict(zip(list(RFC4231) + [5], zip(result["macs"], result["tags"])))


@pytest.mark.parametrize("case", sorted(RFC4231))
def test_rfc4231_under_micropython(micropython_macs, case):
    mac, tag = micropython_macs[case]
    assert mac == RFC4231[case][2]
    assert tag == RFC4231[case][2][: 2 * protocol.TAG_LEN]


def test_rfc4231_truncation_case_is_our_tag_under_micropython(micropython_macs):
    assert micropython_macs[5][1] == RFC4231_TRUNCATED[2]


@pytest.fixture
def pure_protocol(monkeypatch):
    """firmware.protocol under CPython, with the C fast paths switched off."""
    monkeypatch.setattr(protocol, "_hmac_digest", None)
    monkeypatch.setattr(protocol, "_compare_digest", None)
    return protocol


@pytest.mark.parametrize("case", sorted(RFC4231))
def test_rfc4231_under_cpython_pure_path(pure_protocol, case):
    key_hex, data_hex, expected = RFC4231[case]
    mac = pure_protocol.hmac_sha256(bytes.fromhex(key_hex), bytes.fromhex(data_hex))
    assert mac.hex() == expected


def test_rfc4231_truncation_case_under_cpython_pure_path(pure_protocol):
    key_hex, data_hex, expected = RFC4231_TRUNCATED
    assert pure_protocol.tag_of(bytes.fromhex(key_hex), bytes.fromhex(data_hex)).hex() == expected


@pytest.mark.parametrize("case", sorted(RFC4231))
def test_rfc4231_under_cpython_fast_path(case):
    key_hex, data_hex, expected = RFC4231[case]
    assert protocol._hmac_digest is not None
    assert protocol.hmac_sha256(bytes.fromhex(key_hex), bytes.fromhex(data_hex)).hex() == expected


_MP_EQUAL_CT = """
import json
from firmware import protocol
a = bytes(range(16))
b = bytearray(a)
c = bytes(range(15)) + b"\\xff"
print(json.dumps({
    "pure": protocol._compare_digest is None,
    "same": protocol.equal_ct(a, bytes(a)),
    "bytearray": protocol.equal_ct(a, b),
    "memoryview": protocol.equal_ct(memoryview(a), a),
    "last_byte": protocol.equal_ct(a, c),
    "first_byte": protocol.equal_ct(b"\\x01" + a[1:], a),
    "shorter": protocol.equal_ct(a, a[:15]),
    "longer": protocol.equal_ct(a, a + b"\\x00"),
    "empty": protocol.equal_ct(b"", b""),
}))
"""


def test_equal_ct_under_micropython(micropython):
    result = micropython.run_json(_MP_EQUAL_CT)
    assert result == {
        "pure": True,
        "same": True,
        "bytearray": True,
        "memoryview": True,
        "last_byte": False,
        "first_byte": False,
        "shorter": False,
        "longer": False,
        "empty": True,
    }


def test_equal_ct_under_cpython_pure_path(pure_protocol):
    a = bytes(range(16))
    assert pure_protocol.equal_ct(a, bytearray(a))
    assert not pure_protocol.equal_ct(a, a[:15] + b"\xff")
    assert not pure_protocol.equal_ct(a, a[:15])
    assert pure_protocol.equal_ct(b"", b"")
