# Ed25519 signature verification (RFC 8032 §5.1.7), in pure MicroPython: no C module, the
# arithmetic is MicroPython's arbitrary-precision int.  The node checks a firmware release's
# signature with it (firmware/ota_verify.py, docs/ota.md §2); it never signs, so there is no
# secret here and nothing needs to run in constant time.
#
# In:  a 32-byte public key, the message bytes, a 64-byte signature.
# Out: verify() -> True or False.  It returns False (never raises) for every malformed
#   input: wrong lengths, a public key that is not a point (RFC 8032 §5.1.3), S >= L
#   (a non-canonical S, §5.1.7 step 1), and an R that is not the canonical encoding of
#   [S]B - [k]A (R is compared as bytes, as OpenSSL does, so a non-canonical R never matches).
# Verification is cofactorless ([S]B = R + [k]A, checked as an encoding), as in OpenSSL,
# which `cryptography` uses to sign: what the fleet signs, the node accepts.  It is
# stricter than OpenSSL in one place: a public key whose y is not below p is refused
# (RFC 8032 §5.1.3), where OpenSSL reduces it (tests/firmware/test_ed25519.py).
#
# Speed: extended twisted Edwards coordinates (RFC 8032 §5.1.4, "Twisted Edwards Curves
# Revisited", Hisil et al. 2008), one double-scalar multiplication [S]B + [k](-A) with a
# 2-bit joint window (Straus), public-key decompression with a single exponentiation
# (§5.1.3), one inversion for the final encoding.  SHA-512 comes from hashlib when the port
# has it, else from firmware/sha512.py (pure, loaded only then).
#
# RAM: a few dozen 256-bit ints and a 16-entry table of points while verify() runs; the
# message is hashed in place (no copy).

try:
    import hashlib
except ImportError:  # pragma: no cover - some MicroPython ports name it uhashlib
    import uhashlib as hashlib  # type: ignore

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # the order of the base point
D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
D2 = (2 * D) % P
SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960
B = (_BX, _BY, 1, (_BX * _BY) % P)  # the base point, extended coordinates (X, Y, Z, T)
_IDENTITY = (0, 1, 1, 0)


# None on ports whose hashlib has no SHA-512 (MicroPython 1.27's default builds)
_HASHLIB_SHA512 = getattr(hashlib, "sha512", None)


def _sha512(*parts):
    if _HASHLIB_SHA512 is not None:
        h = _HASHLIB_SHA512()
    else:
        from firmware import sha512

        h = sha512.sha512()
    for part in parts:
        h.update(part)
    return h.digest()


def _from_le(data):
    return int.from_bytes(data, "little")


def _add(p, q):
    # RFC 8032 §5.1.4 addition for a = -1; q in "cached" form (Y-X, Y+X, 2Z, 2d*T).
    x1, y1, z1, t1 = p
    a = (y1 - x1) * q[0] % P
    b = (y1 + x1) * q[1] % P
    c = t1 * q[3] % P
    d = z1 * q[2] % P
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _double(p):
    # RFC 8032 §5.1.4 doubling; T of the input is not needed.
    x1, y1, z1 = p[0], p[1], p[2]
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    s = x1 + y1
    e = h - s * s % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _cached(p):
    x, y, z, t = p
    return ((y - x) % P, (y + x) % P, 2 * z % P, t * D2 % P)


def _decode_point(data):
    """The point a 32-byte encoding names (RFC 8032 §5.1.3), or None when it names none."""
    if len(data) != 32:
        return None
    y = _from_le(data)
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None  # non-canonical y
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    v3 = v * v % P * v % P
    x = u * v3 % P * pow(u * v3 % P * v3 % P * v % P, (P - 5) // 8, P) % P
    vx2 = v * x % P * x % P
    if vx2 != u:
        if vx2 != P - u:
            return None  # no square root: not on the curve
        x = x * SQRT_M1 % P
    if x == 0 and sign:
        return None  # -0 is not a valid encoding
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def _encode_point(p):
    x, y, z = p[0], p[1], p[2]
    zi = pow(z, P - 2, P)
    x = x * zi % P
    y = y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _double_scalar_mult(s, k, a_neg):
    """[s]B + [k]A' with A' = a_neg: Straus' method, both scalars 2 bits at a time."""
    # table[4 * i + j] = [i]B + [j]A' (cached form), i, j in 0..3; entry 0 is never used.
    b2 = _double(B)
    b3 = _add(b2, _cached(B))
    a2 = _double(a_neg)
    a3 = _add(a2, _cached(a_neg))
    bs = (_IDENTITY, B, b2, b3)
    as_ = (_IDENTITY, a_neg, a2, a3)
    table = []
    for i in range(4):
        for j in range(4):
            if i == 0:
                pt = as_[j]
            elif j == 0:
                pt = bs[i]
            else:
                pt = _add(bs[i], _cached(as_[j]))
            table.append(_cached(pt))
    q = _IDENTITY
    started = False
    shift = 254  # scalars are below 2**256; s < L < 2**253, k < L
    while shift >= 0:
        if started:
            q = _double(_double(q))
        idx = (((s >> shift) & 3) << 2) | ((k >> shift) & 3)
        if idx:
            q = _add(q, table[idx])
            started = True
        shift -= 2
    return q


def verify(public_key, message, signature):
    """True when `signature` (64 bytes) is `public_key`'s (32 bytes) Ed25519 signature of
    `message` (bytes); False for a wrong or malformed key or signature."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    s = _from_le(signature[32:])
    if s >= L:
        return False  # RFC 8032 §5.1.7 step 1: a non-canonical S (signature malleability)
    a = _decode_point(public_key)
    if a is None:
        return False
    r_bytes = bytes(signature[:32])
    k = _from_le(_sha512(r_bytes, public_key, message)) % L
    a_neg = ((P - a[0]) % P, a[1], 1, (P - a[3]) % P)
    return _encode_point(_double_scalar_mult(s, k, a_neg)) == r_bytes
