"""Wire protocol v1 codec throughput, on CPython and on real MicroPython (WebAssembly).

Prints measured rates (frames/s) for a typical 57-byte air frame: encode+sign, and
decode+verify, with CPython's C HMAC and with the pure-Python HMAC the node uses; then the
same under MicroPython.  Ratios are against CPython's fast path in the same run.  Bounded:
about 10 s in all.  Last line: one JSON object.

    .venv/bin/python bench/codec_throughput.py
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware import metrics, protocol  # noqa: E402

KEY = bytes(range(32))
M = metrics.BY_NAME
AIR = [(M[n].id, M[n].to_raw(v)) for n, v in (
    ("temperature_c", 21.53), ("humidity_pct", 55.21), ("pressure_hpa", 1013.25),
    ("gas_resistance_ohm", 52341), ("pm25_ugm3", 12.3), ("pm10_ugm3", 20.1), ("air_faults", 0))]


def rate(fn, seconds: float = 1.5) -> float:
    n, start = 0, time.perf_counter()
    while True:
        for _ in range(200):
            fn()
        n += 200
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def cpython_rates() -> dict[str, float]:
    frame = protocol.encode(KEY, 1, 0x2A, 7, 1_790_000_000, 60, AIR)
    counter = iter(range(1, 10**9))
    out = {
        "cpython_encode_per_s": rate(
            lambda: protocol.encode(KEY, 1, 0x2A, next(counter), 1_790_000_000, 60, AIR)),
        "cpython_decode_verify_per_s": rate(lambda: protocol.open_frame(frame, KEY)),
    }
    prepared = protocol.PreparedKey(KEY)  # what the gateway uses: pads hashed once per key
    out["cpython_decode_verify_prepared_key_per_s"] = rate(
        lambda: protocol.open_frame(frame, prepared))
    fast = protocol._hmac_digest, protocol._compare_digest
    protocol._hmac_digest = protocol._compare_digest = None
    try:
        out["cpython_pure_hmac_decode_verify_per_s"] = rate(
            lambda: protocol.open_frame(frame, KEY))
    finally:
        protocol._hmac_digest, protocol._compare_digest = fast
    return out


MP_CODE = """
import time, json
from firmware import protocol
KEY = bytes(range(32))
AIR = %r
def rate(fn, ms=1500):
    n = 0
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < ms:
        for _ in range(20):
            fn()
        n += 20
    return n * 1000 / time.ticks_diff(time.ticks_ms(), t0)
frame = protocol.encode(KEY, 1, 0x2A, 7, 1790000000, 60, AIR)
c = [0]
def enc():
    c[0] += 1
    protocol.encode(KEY, 1, 0x2A, c[0], 1790000000, 60, AIR)
def dec():
    protocol.open_frame(frame, KEY)
print(json.dumps({"micropython_encode_per_s": rate(enc),
                  "micropython_decode_verify_per_s": rate(dec)}))
"""


def micropython_rates() -> dict[str, float] | None:
    from tests.fixtures.micropython import MicroPython

    node = shutil.which("node")
    if node is None:
        return None
    mp = MicroPython(node)
    try:
        return mp.run_json(MP_CODE % (AIR,), timeout_s=60)
    finally:
        mp.close()


def main() -> None:
    frame_len = len(protocol.encode(KEY, 1, 0x2A, 7, 1_790_000_000, 60, AIR))
    print(f"typical air frame: {frame_len} bytes ({len(AIR)} metrics)")
    result: dict[str, float | int | None] = {"air_frame_bytes": frame_len}
    result.update(cpython_rates())
    mp = micropython_rates()
    if mp is None:
        print("MicroPython: node not found (run `make test` once to set it up)")
    else:
        result.update(mp)
    base = result["cpython_decode_verify_per_s"]
    for name, value in result.items():
        if name.endswith("_per_s") and value:
            print(f"{name:42} {value:12,.0f}   x{value / base:.3f} of CPython decode+verify")
    print(json.dumps({k: (round(v) if isinstance(v, float) else v) for k, v in result.items()}))


if __name__ == "__main__":
    main()
