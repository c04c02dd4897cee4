"""Regenerate the generated blocks of docs/protocol.md from the code.

    python docs/gen_protocol_tables.py          # rewrite docs/protocol.md in place
    python docs/gen_protocol_tables.py --check  # exit 1 when it is out of date (CI, tests)

A generated block sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->`; only the text
between the two markers is replaced, everything else in the document is written by hand.

Blocks: `metric-table`, `rssi-bins` and `bands` come from firmware/metrics.py; `air-example`
(the worked example of §2.5) is encoded and signed with firmware/protocol.py, so the bytes
in the document are the bytes the code produces.  The same frame is the `air_typical`
vector in tests/vectors/frames.json (tests/firmware/test_protocol.py checks they agree).
"""

import argparse
import datetime
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "protocol.md"

if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from firmware import metrics, protocol  # noqa: E402

# The worked example (§2.5).  Keep in step with `air_typical` in tests/vectors/make_vectors.py.
EXAMPLE_KEY = bytes(range(32))
EXAMPLE_FIELDS = {
    "kind": metrics.KIND_AIR,
    "node_id": 0x0D0A0001,
    "counter": 1042,
    "timestamp": 1764331200,  # 2025-11-28T12:00:00Z
    "window_s": 60,
    "key_id": 0,
    "flags": 0,
    "metrics": [
        (0x01, 2137),  # temperature_c 21.37
        (0x02, 5520),  # humidity_pct 55.20
        (0x03, 101325),  # pressure_hpa 1013.25
        (0x04, 120000),  # gas_resistance_ohm 120000
        (0x05, 123),  # pm25_ugm3 12.3
        (0x06, 201),  # pm10_ugm3 20.1
        (0x07, 84),  # pm1_ugm3 8.4
    ],
}
EXAMPLE_ZONE = "spoorzone"
EXAMPLE_BATCH = 7  # the store_lines vector air_typical uses the same
EXAMPLE_SITE = "lamppost-17"


def _decimal(value, exp):
    """`value` written with as many decimals as the scale 10**exp has."""
    return f"{value:.{max(0, -exp)}f}"


def metric_table():
    lines = [
        "| id | name | unit | scale | min | max | raw min | raw max | group |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for metric_id in sorted(metrics.BY_ID):
        m = metrics.BY_ID[metric_id]
        scale, lo, hi = (_decimal(v, m.exp) for v in (10.0**m.exp, m.min, m.max))
        lines.append(
            f"| 0x{m.id:02x} | `{m.name}` | {m.unit} | {scale} | {lo} | {hi} "
            f"| {m.raw_min} | {m.raw_max} | {m.group} |"
        )
    return "\n".join(lines)


def rssi_bins():
    edges = metrics.RSSI_BIN_EDGES_DBM
    lines = ["| id | name | RSSI range (dBm) |", "|---|---|---|"]
    for i in range(len(edges) + 1):
        name = f"rssi_bin_{i}"
        lower = "node floor" if i == 0 else str(edges[i - 1])
        upper = "+inf" if i == len(edges) else str(edges[i])
        lines.append(f"| 0x{metrics.BY_NAME[name].id:02x} | `{name}` | [{lower}, {upper}) |")
    return "\n".join(lines)


def bands():
    lines = ["| id | name | nominal centre (Hz) |", "|---|---|---|"]
    for centre in metrics.BAND_CENTRES_HZ:
        name = f"band_{centre}hz_db"
        hz = centre.replace("_", ".")
        lines.append(f"| 0x{metrics.BY_NAME[name].id:02x} | `{name}` | {hz} |")
    return "\n".join(lines)


def _hexs(data):
    return " ".join(f"{b:02x}" for b in data)


def _zigzag(raw):
    return (raw << 1) if raw >= 0 else ((-raw << 1) - 1)


def air_example():
    f = EXAMPLE_FIELDS
    frame = protocol.encode(
        EXAMPLE_KEY,
        f["kind"],
        f["node_id"],
        f["counter"],
        f["timestamp"],
        f["window_s"],
        f["metrics"],
        f["key_id"],
        f["flags"],
    )
    signed = frame[: -protocol.TAG_LEN]
    kind_name = metrics.KIND_NAMES[f["kind"]]
    node = protocol.node_name(f["node_id"])
    when = datetime.datetime.fromtimestamp(f["timestamp"], datetime.UTC)
    rows = [
        (0, 1, "version", "1"),
        (1, 1, "kind", f"{f['kind']} (`{kind_name}`)"),
        (2, 1, "flags", f"0x{f['flags']:02x} (time synced, measurement frame)"),
        (3, 1, "key id", str(f["key_id"])),
        (4, 4, "node id", f"0x{f['node_id']:08x} (`{node}` in topics and tags)"),
        (8, 4, "counter", str(f["counter"])),
        (12, 4, "timestamp", f"{f['timestamp']} ({when:%Y-%m-%dT%H:%M:%SZ})"),
        (16, 2, "window_s", f"{f['window_s']} s"),
        (18, 1, "metric count", str(len(f["metrics"]))),
    ]
    pos = protocol.HEADER_LEN
    for metric_id, raw in f["metrics"]:
        m = metrics.BY_ID[metric_id]
        rows.append((pos, 1, "metric id", f"0x{metric_id:02x} `{m.name}`"))
        pos += 1
        size = 1
        while frame[pos + size - 1] & 0x80:
            size += 1
        value = _decimal(m.to_value(raw), m.exp)
        rows.append((pos, size, "value", f"zigzag {_zigzag(raw)}, raw {raw}, {value} {m.unit}"))
        pos += size
    rows.append((pos, protocol.TAG_LEN, "tag", "HMAC-SHA256 truncated to 16 bytes (§4)"))
    assert pos + protocol.TAG_LEN == len(frame)

    by_name = sorted(
        (metrics.BY_ID[i].name, metrics.BY_ID[i].to_value(raw)) for i, raw in f["metrics"]
    )
    fields = ",".join(f"{name}={value!r}" for name, value in by_name)
    line = (
        f"{kind_name},kind={kind_name},node={node},site={EXAMPLE_SITE},zone={EXAMPLE_ZONE} "
        f"{fields} {f['timestamp']}"
    )
    topic = protocol.topic_up(EXAMPLE_ZONE, f["node_id"])
    full_mac = protocol.hmac_sha256(EXAMPLE_KEY, signed).hex()
    sizes = f"{len(signed)} signed bytes + {protocol.TAG_LEN} tag bytes"
    out = [
        f"Key (32 bytes): `{EXAMPLE_KEY.hex()}`",
        "",
        f"The frame, {len(frame)} bytes ({sizes}):",
        "",
        "```",
    ]
    out += [f"{i:04x}  {_hexs(frame[i : i + 16])}" for i in range(0, len(frame), 16)]
    out += [
        "```",
        "",
        "| offset | size | bytes | field | value |",
        "|---|---|---|---|---|",
    ]
    out += [
        f"| {offset} | {size} | `{_hexs(frame[offset : offset + size])}` | {name} | {value} |"
        for offset, size, name, value in rows
    ]
    out += [
        "",
        f"HMAC-SHA256(key, bytes 0..{len(signed) - 1}) =",
        f"`{full_mac}`;",
        "the tag is its first 16 bytes.",
        "",
        f"Published on `{topic}` (zone `{EXAMPLE_ZONE}`, QoS 1).",
        f"With site `{EXAMPLE_SITE}` from the gateway's keyring, its canonical line (§7; what",
        "the batch's provenance digest covers) is",
        "",
        "```",
        line,
        "```",
        "",
        f"and, sent in batch {EXAMPLE_BATCH}, the store receives (the `batch` field last, §7):",
        "",
        "```",
        line.replace(f" {f['timestamp']}", f",batch={float(EXAMPLE_BATCH)!r} {f['timestamp']}"),
        "```",
    ]
    return "\n".join(out)


BLOCKS = {
    "metric-table": metric_table,
    "rssi-bins": rssi_bins,
    "bands": bands,
    "air-example": air_example,
}


def render(text):
    """`text` with every generated block rewritten.  Raises ValueError for a missing marker."""
    for name, build in BLOCKS.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
        found = pattern.findall(text)
        if len(found) != 1:
            raise ValueError(
                f"{DOC.name} needs exactly one {begin} ... {end} pair, found {len(found)}"
            )
        start, stop = pattern.search(text).span()
        text = f"{text[:start]}{begin}\n{build()}\n{end}{text[stop:]}"
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if docs/protocol.md is out of date, change nothing",
    )
    parser.add_argument(
        "--doc",
        type=Path,
        default=DOC,
        help="the document to check or rewrite (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    current = args.doc.read_text(encoding="utf-8")
    try:
        wanted = render(current)
    except ValueError as exc:
        print(f"gen_protocol_tables: {exc}", file=sys.stderr)
        return 2
    if wanted == current:
        return 0
    if args.check:
        print(
            f"gen_protocol_tables: {args.doc} is out of date with firmware/; run "
            "`python docs/gen_protocol_tables.py`",
            file=sys.stderr,
        )
        return 1
    args.doc.write_text(wanted, encoding="utf-8")
    print(f"gen_protocol_tables: rewrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
