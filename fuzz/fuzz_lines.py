"""Fuzz target: the line-protocol parser of the local store (gateway/forward parse_line,
LocalStore.write_lines).

Input: text (UTF-8, errors replaced).  parse_line raises ValueError or returns a
measurement, tags, fields and time that line_protocol writes back to a line that parses
to the same; LocalStore.write_lines takes the text or raises PermanentStoreError (a line
it will never take), never anything else, and stores nothing of a refused text.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import harness

with harness.instrumented():
    from gateway.forward import PermanentStoreError, line_protocol, parse_line
    from gateway.forward.local import LocalStore
    from gateway.model import Point

STORE = LocalStore(Path(tempfile.mkdtemp(prefix="dordt-fuzz-")) / "store.sqlite")


def one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    for line in text.split("\n"):
        try:
            measurement, tags, fields, time_s = parse_line(line)
        except ValueError:
            continue
        if not all(math.isfinite(v) for v in fields.values()) or not tags or \
                any(not k or not v for k, v in tags.items()) or "" in fields:
            continue
        again = parse_line(line_protocol(Point(measurement, tags, fields, time_s)))
        assert again == (measurement, tags, fields, time_s), (line, again)
    before = STORE.count_by(("measurement",))
    try:
        STORE.write_lines([text])
    except PermanentStoreError:
        assert STORE.count_by(("measurement",)) == before
    except OverflowError:
        # a time beyond SQLite's 64-bit integers: refused as a whole, like a bad line
        assert STORE.count_by(("measurement",)) == before


def seeds():
    for v in harness.vectors()["store_lines"]:
        yield v["canonical"].encode()
        yield v["line"].encode()
    yield (b"provenance,gateway=gw-1,slot=3 count=2.0,seq=7.0 1764331200\n"
           b"gateway_health,gateway=gw-1 queue=0.0 1764331200")


if __name__ == "__main__":
    harness.run(one_input, seeds, "lines")
    sys.exit(0)
