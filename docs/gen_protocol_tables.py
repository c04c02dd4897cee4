"""Regenerate the generated blocks of docs/protocol.md from the code.

    python docs/gen_protocol_tables.py          # rewrite docs/protocol.md in place
    python docs/gen_protocol_tables.py --check  # exit 1 when it is out of date (CI, tests)

A generated block sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->`; only the text
between the two markers is replaced, everything else in the document is written by hand.

Blocks: `metric-table`, `rssi-bins` and `bands` come from firmware/metrics.py; `air-example`
(the worked example of §2.3) is encoded and signed with firmware/protocol.py, so the bytes
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

# The worked example (§2.3).  Keep in step with `air_typical` in tests/vectors/make_vectors.py.
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
EXAMPLE_SITE = "lamppost-17"


def _decimal(value, exp):
    """`value` written with as many decimals as the scale 10**exp has."""
    return "%.*f" % (max(0, -exp), value)


def metric_table():
    lines = [
        "| id | name | unit | scale | min | max | raw min | raw max | group |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for metric_id in sorted(metrics.BY_ID):
        m = metrics.BY_ID[metric_id]
        lines.append(
            "| 0x%02x | `%s` | %s | %s | %s | %s | %d | %d | %s |"
            % (
                m.id, m.name, m.unit, _decimal(10.0**m.exp, m.exp), _decimal(m.min, m.exp),
                _decimal(m.max, m.exp), m.raw_min, m.raw_max, m.group,
            )
        )
    return "\n".join(lines)


def rssi_bins():
    edges = metrics.RSSI_BIN_EDGES_DBM
    lines = ["| id | name | RSSI range (dBm) |", "|---|---|---|"]
    for i in range(len(edges) + 1):
        name = "rssi_bin_%d" % i
        lower = "node floor" if i == 0 else "%d" % edges[i - 1]
        upper = "open" if i == len(edges) else "%d" % edges[i]
        rng = "[%s, %s)" % (lower, upper) if i < len(edges) else "[%s, +inf)" % lower
        lines.append("| 0x%02x | `%s` | %s |" % (metrics.BY_NAME[name].id, name, rng))
    return "\n".join(lines)


def bands():
    lines = ["| id | name | nominal centre (Hz) |", "|---|---|---|"]
    for i, centre in enumerate(metrics.BAND_CENTRES_HZ):
        name = "band_%shz_db" % centre
        lines.append("| 0x%02x | `%s` | %s |" % (metrics.BY_NAME[name].id, name,
                                                 centre.replace("_", ".")))
    return "\n".join(lines)


def _hexs(data):
    return " ".join("%02x" % b for b in data)


def _zigzag(raw):
    return (raw << 1) if raw >= 0 else ((-raw << 1) - 1)


def air_example():
    f = EXAMPLE_FIELDS
    frame = protocol.encode(
        EXAMPLE_KEY, f["kind"], f["node_id"], f["counter"], f["timestamp"], f["window_s"],
        f["metrics"], f["key_id"], f["flags"],
    )
    signed = frame[: -protocol.TAG_LEN]
    when = datetime.datetime.fromtimestamp(f["timestamp"], datetime.timezone.utc)
    rows = [
        (0, 1, "version", "1"),
        (1, 1, "kind", "%d (`%s`)" % (f["kind"], metrics.KIND_NAMES[f["kind"]])),
        (2, 1, "flags", "0x%02x (time synced, measurement frame)" % f["flags"]),
        (3, 1, "key id", "%d" % f["key_id"]),
        (4, 4, "node id", "0x%08x (`%s` in topics and tags)" % (
            f["node_id"], protocol.node_name(f["node_id"]))),
        (8, 4, "counter", "%d" % f["counter"]),
        (12, 4, "timestamp", "%d (%s)" % (f["timestamp"], when.strftime("%Y-%m-%dT%H:%M:%SZ"))),
        (16, 2, "window_s", "%d s" % f["window_s"]),
        (18, 1, "metric count", "%d" % len(f["metrics"])),
    ]
    pos = protocol.HEADER_LEN
    for metric_id, raw in f["metrics"]:
        m = metrics.BY_ID[metric_id]
        rows.append((pos, 1, "metric id", "0x%02x `%s`" % (metric_id, m.name)))
        pos += 1
        size = 1
        while frame[pos + size - 1] & 0x80:
            size += 1
        rows.append((pos, size, "value", "zigzag %d, raw %d, %s %s" % (
            _zigzag(raw), raw, _decimal(m.to_value(raw), m.exp), m.unit)))
        pos += size
    rows.append((pos, protocol.TAG_LEN, "tag", "HMAC-SHA256 truncated to 16 bytes (§4)"))
    assert pos + protocol.TAG_LEN == len(frame)

    fields = ",".join(
        "%s=%r" % (metrics.BY_ID[i].name, metrics.BY_ID[i].to_value(raw))
        for i, raw in sorted(f["metrics"], key=lambda p: metrics.BY_ID[p[0]].name)
    )
    line = "%s,kind=%s,node=%s,site=%s,zone=%s %s %d" % (
        metrics.KIND_NAMES[f["kind"]], metrics.KIND_NAMES[f["kind"]],
        protocol.node_name(f["node_id"]), EXAMPLE_SITE, EXAMPLE_ZONE, fields, f["timestamp"],
    )
    out = [
        "Key (32 bytes): `%s`" % EXAMPLE_KEY.hex(),
        "",
        "The frame, %d bytes (%d signed bytes + %d tag bytes):" % (
            len(frame), len(signed), protocol.TAG_LEN),
        "",
        "```",
    ]
    for i in range(0, len(frame), 16):
        out.append("%04x  %s" % (i, _hexs(frame[i : i + 16])))
    out += [
        "```",
        "",
        "| offset | size | bytes | field | value |",
        "|---|---|---|---|---|",
    ]
    for offset, size, name, value in rows:
        out.append("| %d | %d | `%s` | %s | %s |" % (
            offset, size, _hexs(frame[offset : offset + size]), name, value))
    out += [
        "",
        "HMAC-SHA256(key, bytes 0..%d) = `%s`; the tag is its first 16 bytes." % (
            len(signed) - 1, protocol.hmac_sha256(EXAMPLE_KEY, signed).hex()),
        "",
        "Published on `%s` (zone `%s`, QoS 1).  With site `%s` from the gateway's keyring, "
        "the store receives (§7):" % (
            protocol.topic_up(EXAMPLE_ZONE, f["node_id"]), EXAMPLE_ZONE, EXAMPLE_SITE),
        "",
        "```",
        line,
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
        begin, end = "<!-- %s:begin -->" % name, "<!-- %s:end -->" % name
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if len(pattern.findall(text)) != 1:
            raise ValueError("%s needs exactly one %s ... %s pair" % (DOC.name, begin, end))
        block = "%s\n%s\n%s" % (begin, build(), end)
        text = pattern.sub(lambda _match: block, text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if docs/protocol.md is out of date, change nothing")
    parser.add_argument("--doc", type=Path, default=DOC, help="the document (default: %(default)s)")
    args = parser.parse_args(argv)
    current = args.doc.read_text(encoding="utf-8")
    try:
        wanted = render(current)
    except ValueError as exc:
        print("gen_protocol_tables: %s" % exc, file=sys.stderr)
        return 2
    if wanted == current:
        return 0
    if args.check:
        print("gen_protocol_tables: %s is out of date with firmware/; run "
              "`python docs/gen_protocol_tables.py`" % args.doc, file=sys.stderr)
        return 1
    args.doc.write_text(wanted, encoding="utf-8")
    print("gen_protocol_tables: rewrote %s" % args.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
