"""firmware/ed25519.py and firmware/sha512.py (issue 12): Ed25519 verification in pure
MicroPython.  RFC 8032's test vectors and signatures made by `cryptography` (OpenSSL, what
the fleet signs releases with) verify, under CPython and under real MicroPython 1.27; a
changed message, key or signature, a non-canonical S (S >= L), a non-canonical or
off-curve public key and a non-canonical R are refused."""

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import ed25519, sha512

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" /
                      "ed25519_rfc8032.json").read_text())["vectors"]
P = ed25519.P
L = ed25519.L


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def _signed(seed: int, message: bytes) -> tuple[bytes, bytes]:
    key = Ed25519PrivateKey.from_private_bytes(seed.to_bytes(32, "little"))
    return _raw_public(key), key.sign(message)


def _bad_cases() -> list[tuple[str, str, str, str]]:
    """(name, public key hex, message hex, signature hex) that must be refused."""
    v = VECTORS[1]
    pk, msg, sig = bytes.fromhex(v["public_key"]), bytes.fromhex(v["message"]), \
        bytes.fromhex(v["signature"])
    s = int.from_bytes(sig[32:], "little")
    y_over_p = (P + 1).to_bytes(32, "little")  # y >= p: y = 1 encoded non-canonically
    minus_zero = (1 | (1 << 255)).to_bytes(32, "little")  # y = 1 (x = 0) with the sign bit
    y_two = (2).to_bytes(32, "little")  # y = 2 is on no point of the curve
    cases = [
        ("changed message", pk, msg + b"\0", sig),
        ("changed signature R", pk, msg, bytes([sig[0] ^ 1]) + sig[1:]),
        ("changed signature S", pk, msg, sig[:32] + bytes([sig[32] ^ 1]) + sig[33:]),
        ("other key", bytes.fromhex(VECTORS[0]["public_key"]), msg, sig),
        ("S + L (non-canonical S)", pk, msg, sig[:32] + (s + L).to_bytes(32, "little")),
        ("S = L", pk, msg, sig[:32] + L.to_bytes(32, "little")),
        ("key y >= p", y_over_p, msg, sig),
        ("key -0", minus_zero, msg, sig),
        ("key off the curve", y_two, msg, sig),
        ("R with its sign bit flipped", pk, msg, sig[:31] + bytes([sig[31] ^ 0x80]) + sig[32:]),
        ("short signature", pk, msg, sig[:63]),
        ("short key", pk[:31], msg, sig),
        ("empty", b"", msg, b""),
    ]
    return [(n, a.hex(), m.hex(), b.hex()) for n, a, m, b in cases]


def test_the_curve_constants_are_rfc_8032s():
    assert ed25519.D == -121665 * pow(121666, P - 2, P) % P
    assert pow(ed25519.SQRT_M1, 2, P) == P - 1
    assert ed25519.B[1] == 4 * pow(5, P - 2, P) % P  # RFC 8032 §5.1: B's y is 4/5
    assert ed25519.B[0] % 2 == 0  # and its x is the even ("positive") root


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_rfc_8032_vectors_verify_under_cpython(vector):
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["secret_key"]))
    message = bytes.fromhex(vector["message"])
    # the file is RFC 8032 §7.1 as transcribed: cryptography's signer agrees with it
    assert _raw_public(key).hex() == vector["public_key"]
    assert key.sign(message).hex() == vector["signature"]
    assert ed25519.verify(bytes.fromhex(vector["public_key"]), message,
                          bytes.fromhex(vector["signature"]))


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_signatures_and_keys_are_refused_under_cpython(case):
    _, pk, msg, sig = case
    assert ed25519.verify(bytes.fromhex(pk), bytes.fromhex(msg), bytes.fromhex(sig)) is False


def _openssl_verifies(public: bytes, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def test_small_order_and_non_canonical_keys_against_openssl():
    """Cofactorless, as OpenSSL: a signature (R = [S]B, S) holds for the identity as public
    key, in both.  A key encoded with y >= p (the identity as p + 1): OpenSSL reduces it
    and accepts, this verifier refuses it (RFC 8032 §5.1.3).  Neither matters for a node,
    whose one key is the fleet's, but the difference is on record."""
    s = 12345
    r = ed25519._encode_point(ed25519._double_scalar_mult(s, 0, ed25519.B))
    signature = r + s.to_bytes(32, "little")
    identity = (1).to_bytes(32, "little")
    assert ed25519.verify(identity, b"any", signature)
    assert _openssl_verifies(identity, b"any", signature)
    non_canonical = (P + 1).to_bytes(32, "little")
    assert not ed25519.verify(non_canonical, b"any", signature)
    assert _openssl_verifies(non_canonical, b"any", signature)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**256 - 1), message=st.binary(max_size=300),
       flip=st.integers(0, 64 * 8 - 1))
def test_cryptography_signatures_verify_and_a_flipped_bit_does_not(seed, message, flip):
    public, signature = _signed(seed, message)
    assert ed25519.verify(public, message, signature)
    bad = bytearray(signature)
    bad[flip // 8] ^= 1 << (flip % 8)
    assert not ed25519.verify(public, message, bytes(bad))
    assert not ed25519.verify(public, message + b"x", signature)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=4))
def test_pure_sha512_is_hashlibs(parts):
    h = sha512.sha512()
    for part in parts:
        h.update(part)
    assert h.digest() == hashlib.sha512(b"".join(parts)).digest()


def test_under_micropython_vectors_cryptography_signatures_and_bad_cases(micropython):
    """One interpreter run: every RFC vector, 12 cryptography signatures (messages of 0 to
    2,000 bytes, so SHA-512 crosses block edges), the bad cases, and the pure SHA-512 against
    CPython's hashlib."""
    good = [(v["public_key"], v["message"], v["signature"]) for v in VECTORS]
    for i, size in enumerate((0, 1, 63, 64, 111, 112, 127, 128, 129, 255, 1000, 2000)):
        message = hashlib.sha256(b"m%d" % i).digest() * (size // 32 + 1)
        public, signature = _signed(1000 + i, message[:size])
        good.append((public.hex(), message[:size].hex(), signature.hex()))
    bad = [c[1:] for c in _bad_cases()]
    data = bytes(range(256)) * 9
    hashes = [(n, hashlib.sha512(data[:n]).hexdigest())
              for n in (0, 3, 111, 112, 127, 128, 129, 256, 2000)]
    code = f"""
import json
from binascii import unhexlify as u
from firmware import ed25519, sha512
good = {good!r}
bad = {bad!r}
out = {{"good": [ed25519.verify(u(a), u(m), u(s)) for a, m, s in good],
       "bad": [ed25519.verify(u(a), u(m), u(s)) for a, m, s in bad]}}
data = bytes(range(256)) * 9
sh = []
for n, want in {hashes!r}:
    h = sha512.sha512()
    h.update(data[:n // 3])
    h.update(data[n // 3:n])
    sh.append(h.digest() == u(want))
out["sha512"] = sh
print(json.dumps(out))
"""
    out = micropython.run_json(code, timeout_s=120)
    assert out["good"] == [True] * len(good)
    assert out["bad"] == [False] * len(bad)
    assert out["sha512"] == [True] * len(hashes)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2**256 - 1), st.binary(max_size=400),
                          st.integers(0, 64 * 8 - 1)), min_size=1, max_size=4))
def test_cryptography_signatures_under_micropython(micropython, cases):
    """Hypothesis' keys and messages, signed by cryptography, each checked under MicroPython
    as made and with one bit of its signature flipped (a batch per interpreter run)."""
    rows = []
    for seed, message, flip in cases:
        public, signature = _signed(seed, message)
        bad = bytearray(signature)
        bad[flip // 8] ^= 1 << (flip % 8)
        rows.append((public.hex(), message.hex(), signature.hex(), bytes(bad).hex()))
    code = f"""
import json
from binascii import unhexlify as u
from firmware import ed25519
print(json.dumps([[ed25519.verify(u(a), u(m), u(s)), ed25519.verify(u(a), u(m), u(b))]
                  for a, m, s, b in {rows!r}]))
"""
    assert micropython.run_json(code, timeout_s=120) == [[True, False]] * len(rows)
