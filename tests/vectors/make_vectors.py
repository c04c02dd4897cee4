"""Regenerate tests/vectors/frames.json, the wire protocol v1 test vectors (docs/protocol.md §9).

    python tests/vectors/make_vectors.py          # rewrite frames.json
    python tests/vectors/make_vectors.py --check  # exit 1 when frames.json is out of date

Everything is fixed (keys, fields, counters): running it twice gives the same file.  Good
frames are made with firmware.protocol.encode() and, independently, with the few lines of
`_reference_frame()` below (struct + hmac of the standard library); the script refuses to
write when the two disagree.  Bad frames are built by hand from the same pieces so that
each breaks exactly one rule and is otherwise correctly signed.
"""

import argparse
import hashlib
import hmac
import json
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "frames.json"

if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from firmware import metrics, protocol

# Test keys only: bytes 00..1f, 20..3f, 40..5f.  Real keys come from a CSPRNG (§4).
KEY_AIR = bytes(range(0x20))
KEY_NOISE = bytes(range(0x20, 0x40))
KEY_CROWD = bytes(range(0x40, 0x60))
KEY_WRONG = bytes(range(0x60, 0x80))

NODE_AIR = 0x0D0A0001
NODE_NOISE = 0x0D0A0002
NODE_CROWD = 0x0D0A0003
T0 = 1764331200  # 2025-11-28T12:00:00Z

AIR, NOISE, CROWD = metrics.KIND_AIR, metrics.KIND_NOISE, metrics.KIND_CROWD
STATUS, UNSYNCED = protocol.FLAG_STATUS, protocol.FLAG_TIME_UNSYNCED
RAW_MIN, RAW_MAX = protocol.RAW_MIN, protocol.RAW_MAX

# Plausible street-side spectrum (dB), 31.5 Hz .. 8 kHz.
NOISE_BANDS_DB = (
    48.2,
    49.5,
    51.0,
    52.3,
    53.1,
    52.8,
    52.0,
    51.4,
    50.9,
    50.2,
    49.8,
    49.5,
    50.1,
    50.6,
    51.0,
    50.7,
    49.9,
    48.8,
    47.5,
    45.9,
    44.0,
    41.8,
    39.3,
    36.5,
    33.2,
)


def _id(name):
    return metrics.BY_NAME[name].id


def _raw(name, value):
    return metrics.BY_NAME[name].to_raw(value)


def _fields(kind, node_id, counter, timestamp, window_s, pairs, key_id=0, flags=0):
    return {
        "kind": kind,
        "node_id": node_id,
        "counter": counter,
        "timestamp": timestamp,
        "window_s": window_s,
        "key_id": key_id,
        "flags": flags,
        "metrics": sorted([metric_id, raw] for metric_id, raw in pairs),
    }


# -- an independent encoder, to cross-check firmware.protocol --------------------------------


def _varint(raw):
    z = 2 * raw if raw >= 0 else -2 * raw - 1
    out = bytearray()
    while True:
        out.append((z & 0x7F) | (0x80 if z > 0x7F else 0))
        z >>= 7
        if not z:
            return bytes(out)


def _header(kind, node_id, counter, timestamp, window_s, count, key_id=0, flags=0, version=1):
    return struct.pack(
        ">BBBBIIIHB", version, kind, flags, key_id, node_id, counter, timestamp, window_s, count
    )


def _metrics_bytes(pairs):
    return b"".join(bytes([metric_id]) + _varint(raw) for metric_id, raw in pairs)


def _sign(key, body):
    return body + hmac.new(key, body, hashlib.sha256).digest()[:16]


def _reference_frame(key, f):
    body = _header(
        f["kind"],
        f["node_id"],
        f["counter"],
        f["timestamp"],
        f["window_s"],
        len(f["metrics"]),
        f["key_id"],
        f["flags"],
    )
    return _sign(key, body + _metrics_bytes(f["metrics"]))


# -- good vectors ---------------------------------------------------------------------------


def _registry_ok(f):
    """Every metric passes the registry rules of §6.4 check 10 for this kind and flags."""
    for metric_id, raw in f["metrics"]:
        m = metrics.BY_ID.get(metric_id)
        if m is None or not metrics.allowed_for(f["kind"], m):
            return False
        if (m.group == metrics.GROUP_STATUS) != bool(f["flags"] & STATUS):
            return False
        if not m.raw_min <= raw <= m.raw_max:
            return False
    return True


def _good(name, key, fields):
    frame = protocol.encode(
        key,
        fields["kind"],
        fields["node_id"],
        fields["counter"],
        fields["timestamp"],
        fields["window_s"],
        [tuple(p) for p in fields["metrics"]],
        fields["key_id"],
        fields["flags"],
    )
    reference = _reference_frame(key, fields)
    if frame != reference:
        raise SystemExit(
            f"make_vectors: {name}: protocol.encode gives {frame.hex()}, "
            f"the reference encoder {reference.hex()}"
        )
    values = {}
    for metric_id, raw in fields["metrics"]:
        m = metrics.BY_ID.get(metric_id)
        if m is not None:
            values[m.name] = m.to_value(raw)
    return {
        "name": name,
        "key": key.hex(),
        "fields": fields,
        "frame": frame.hex(),
        "values": values,
        "registry_ok": _registry_ok(fields),
    }


def _all_ids():
    return sorted(metrics.BY_ID)


def good_vectors():
    air_typical = _fields(
        AIR,
        NODE_AIR,
        1042,
        T0,
        60,
        [
            (0x01, 2137),
            (0x02, 5520),
            (0x03, 101325),
            (0x04, 120000),
            (0x05, 123),
            (0x06, 201),
            (0x07, 84),
        ],
    )
    noise_levels = [
        ("laeq_db", 62.4),
        ("lamax_db", 78.9),
        ("la10_db", 65.1),
        ("la50_db", 60.2),
        ("la90_db", 54.7),
    ]
    noise_typical = _fields(
        NOISE,
        NODE_NOISE,
        77,
        T0,
        60,
        [(_id(n), _raw(n, v)) for n, v in noise_levels]
        + [(0x30 + i, _raw("laeq_db", db)) for i, db in enumerate(NOISE_BANDS_DB)],
    )
    crowd_typical = _fields(
        CROWD,
        NODE_CROWD,
        5001,
        T0,
        60,
        [
            (_id("crowd_count"), 37),
            (_id("rssi_bin_0"), 9),
            (_id("rssi_bin_1"), 11),
            (_id("rssi_bin_2"), 8),
            (_id("rssi_bin_3"), 6),
            (_id("rssi_bin_4"), 3),
        ],
    )
    status_air = _fields(
        AIR,
        NODE_AIR,
        1043,
        T0 + 5,
        600,
        [
            (_id("uptime_s"), 273600),
            (_id("free_heap_bytes"), 152344),
            (_id("reset_cause"), 1),
            (_id("firmware_version"), 10203),
            (_id("error_count"), 2),
            (_id("dropped_frames"), 0),
            (_id("supply_mv"), 3300),
        ],
        flags=STATUS,
    )
    air_time_unsynced = _fields(
        AIR,
        NODE_AIR,
        4096,
        734,
        60,
        [
            (_id("temperature_c"), _raw("temperature_c", 19.8)),
            (_id("humidity_pct"), _raw("humidity_pct", 61.0)),
            (_id("pm25_ugm3"), _raw("pm25_ugm3", 5.1)),
            (_id("pm10_ugm3"), _raw("pm10_ugm3", 9.9)),
        ],
        flags=UNSYNCED,
    )
    status_time_unsynced = _fields(
        CROWD,
        NODE_CROWD,
        8192,
        31,
        0,
        [
            (_id("uptime_s"), 31),
            (_id("reset_cause"), 3),
            (_id("firmware_version"), 10203),
        ],
        flags=STATUS | UNSYNCED,
    )
    min_size = _fields(CROWD, NODE_CROWD, 5002, T0 + 60, 60, [(_id("crowd_count"), 0)])
    header_min = _fields(AIR, 0, 0, 0, 0, [(_id("temperature_c"), 0)])
    header_max = _fields(
        255,
        protocol.U32_MAX,
        protocol.U32_MAX,
        protocol.U32_MAX,
        0xFFFF,
        [(_id("supply_mv"), 65535)],
        key_id=255,
        flags=STATUS | UNSYNCED,
    )
    raw_extremes = _fields(
        AIR,
        NODE_AIR,
        1044,
        T0,
        60,
        [
            (0x01, RAW_MIN),
            (0x02, RAW_MAX),
            (0x03, 0),
            (0x04, -1),
            (0x05, 1),
        ],
    )
    boundaries = [
        0,
        -1,
        1,
        63,
        -64,
        64,
        -65,
        8191,
        -8192,
        8192,
        -8193,
        1048575,
        -1048576,
        1048576,
        -1048577,
        134217727,
        -134217728,
        134217728,
        -134217729,
        RAW_MAX,
        RAW_MIN,
    ]
    varint_boundaries = _fields(
        NOISE, NODE_NOISE, 78, T0, 60, [(0x30 + i, raw) for i, raw in enumerate(boundaries)]
    )

    def edges(kind, group, high, flags=0, counter=1):
        pairs = [
            (m.id, m.raw_max if high else m.raw_min)
            for m in (metrics.BY_ID[i] for i in _all_ids())
            if m.group == group
        ]
        node = {AIR: NODE_AIR, NOISE: NODE_NOISE, CROWD: NODE_CROWD}[kind]
        return _fields(kind, node, counter, T0, 60, pairs, flags=flags)

    # Exactly MAX_FRAME (200) bytes: 165 bytes of metrics = 27 * (1 + 5) + 1 * (1 + 2).
    # The five-byte values alternate near RAW_MAX and RAW_MIN.
    ids = _all_ids()
    big = [RAW_MAX - i if i % 2 == 0 else RAW_MIN + i for i in range(27)]
    max_size_long_varints = _fields(
        NOISE, NODE_NOISE, 79, T0, 60, list(zip(ids[:27], big)) + [(ids[27], 8191)]
    )
    # 48 metrics (MAX_METRICS) in exactly 200 bytes: 165 = 48 ids + 27 * 2 + 21 * 3.
    max_metrics = _fields(
        NOISE,
        NODE_NOISE,
        80,
        T0,
        60,
        [(metric_id, 100 + i if i < 27 else -(10000 + i)) for i, metric_id in enumerate(ids[:48])],
    )
    return [
        _good("air_typical", KEY_AIR, air_typical),
        _good("noise_typical", KEY_NOISE, noise_typical),
        _good("crowd_typical", KEY_CROWD, crowd_typical),
        _good("status_air", KEY_AIR, status_air),
        _good("air_time_unsynced", KEY_AIR, air_time_unsynced),
        _good("status_crowd_time_unsynced", KEY_CROWD, status_time_unsynced),
        _good("min_size", KEY_CROWD, min_size),
        _good("header_fields_min", KEY_AIR, header_min),
        _good("header_fields_max", KEY_CROWD, header_max),
        _good("air_range_low", KEY_AIR, edges(AIR, "air", False, counter=2000)),
        _good("air_range_high", KEY_AIR, edges(AIR, "air", True, counter=2001)),
        _good("noise_range_high", KEY_NOISE, edges(NOISE, "noise", True, counter=81)),
        _good("crowd_range_high", KEY_CROWD, edges(CROWD, "crowd", True, counter=5003)),
        _good(
            "status_range_low",
            KEY_AIR,
            edges(AIR, metrics.GROUP_STATUS, False, flags=STATUS, counter=2002),
        ),
        _good(
            "status_range_high",
            KEY_AIR,
            edges(AIR, metrics.GROUP_STATUS, True, flags=STATUS, counter=2003),
        ),
        _good("raw_min_raw_max", KEY_AIR, raw_extremes),
        _good("varint_length_boundaries", KEY_NOISE, varint_boundaries),
        _good("max_size_long_varints", KEY_NOISE, max_size_long_varints),
        _good("max_size_max_metrics", KEY_NOISE, max_metrics),
    ]


# -- bad vectors ----------------------------------------------------------------------------


def _flip(frame, byte, bit):
    out = bytearray(frame)
    out[byte] ^= 1 << bit
    return bytes(out)


def bad_vectors(good):
    by_name = {v["name"]: v for v in good}
    air = bytes.fromhex(by_name["air_typical"]["frame"])
    air_pairs = by_name["air_typical"]["fields"]["metrics"]
    biggest = bytes.fromhex(by_name["max_size_long_varints"]["frame"])

    def hdr(count, **kw):
        args = {"kind": AIR, "node_id": NODE_AIR, "counter": 1042, "timestamp": T0, "window_s": 60}
        args.update(kw)
        return _header(count=count, **args)

    def signed(body, key=KEY_AIR):
        return _sign(key, body)

    vectors = []

    def bad(name, frame, reason, key=KEY_AIR):
        vectors.append({"name": name, "key": key.hex(), "frame": frame.hex(), "reason": reason})

    # Tag and body bits: the structure is fine, only the tag can tell.
    n = len(air)
    bad("tag_last_bit_flipped", _flip(air, n - 1, 0), protocol.BAD_TAG)
    bad("tag_first_bit_flipped", _flip(air, n - 16, 7), protocol.BAD_TAG)
    bad("body_counter_bit_flipped", _flip(air, 11, 0), protocol.BAD_TAG)
    bad("body_key_id_bit_flipped", _flip(air, 3, 0), protocol.BAD_TAG)
    bad("body_kind_bit_flipped", _flip(air, 1, 1), protocol.BAD_TAG)
    bad("body_time_unsynced_flag_set", _flip(air, 2, 0), protocol.BAD_TAG)
    bad("body_value_bit_flipped", _flip(air, 40, 1), protocol.BAD_TAG)  # pm1 8.4 -> 8.5
    bad("wrong_key", air, protocol.BAD_TAG, key=KEY_WRONG)

    # Cut short, at many points (every prefix of a valid frame is "truncated").
    for cut in (0, 1, 4, 18, 19, 20, 36, 37, 41, 42, n - 1):
        bad(f"truncated_to_{cut}_bytes", air[:cut], protocol.TRUNCATED)
    bad("truncated_max_size_by_1", biggest[:-1], protocol.TRUNCATED)

    # Too long.
    bad("oversized_201_bytes_padded", biggest + b"\x00", protocol.OVERSIZED, key=KEY_NOISE)
    # 19 + 32 * (1 + 4) + (1 + 5) + 16 = 201 bytes, well formed and signed: only too long.
    long_body = hdr(33) + _metrics_bytes([(i, 1048576) for i in range(32)] + [(0x40, RAW_MIN)])
    assert len(long_body) + 16 == 201, len(long_body)
    bad("oversized_201_bytes_signed", signed(long_body), protocol.OVERSIZED)
    bad("oversized_1000_bytes", b"\x01" * 1000, protocol.OVERSIZED)

    # Version.
    body = air[:-16]
    for version in (0, 2, 255):
        bad(f"version_{version}", signed(bytes([version]) + body[1:]), protocol.BAD_VERSION)
    bad("version_2_one_byte", b"\x02", protocol.BAD_VERSION)

    # Flags.
    for flags in (0x04, 0x80, 0xFF):
        bad(
            f"flags_unknown_bits_0x{flags:02x}",
            signed(body[:2] + bytes([flags]) + body[3:]),
            protocol.MALFORMED,
        )

    # Metric count.
    metric_bytes = _metrics_bytes(air_pairs)
    bad("zero_metrics_empty", signed(hdr(0)), protocol.TRUNCATED)
    bad("zero_metrics_with_metric_bytes", signed(hdr(0) + metric_bytes), protocol.MALFORMED)
    bad(
        "count_49_over_max",
        signed(hdr(49) + _metrics_bytes([(i, 0) for i in range(49)])),
        protocol.MALFORMED,
    )
    bad("count_255", signed(hdr(255) + metric_bytes), protocol.MALFORMED)
    bad("count_larger_than_present", signed(hdr(8) + metric_bytes), protocol.TRUNCATED)
    bad("count_smaller_than_present", signed(hdr(6) + metric_bytes), protocol.MALFORMED)

    # Metric ids.
    swapped = [air_pairs[1], air_pairs[0]] + air_pairs[2:]
    bad("ids_not_ascending", signed(hdr(7) + _metrics_bytes(swapped)), protocol.MALFORMED)
    dup = [air_pairs[0], air_pairs[0]] + air_pairs[2:]
    bad("ids_duplicate", signed(hdr(7) + _metrics_bytes(dup)), protocol.MALFORMED)

    # Varints: id 0x01 followed by hand-written value bytes.
    def one(value_bytes, count=1):
        return signed(hdr(count) + b"\x01" + value_bytes)

    bad("varint_non_minimal_2_bytes", one(b"\x8a\x00"), protocol.MALFORMED)  # 5 as 2 bytes
    bad("varint_non_minimal_zero", one(b"\x80\x00"), protocol.MALFORMED)  # 0 as 2 bytes
    bad("varint_non_minimal_5_bytes", one(b"\xfe\xff\xff\x7f\x00"), protocol.MALFORMED)
    bad("varint_over_32_bits", one(b"\xfe\xff\xff\xff\x1f"), protocol.MALFORMED)
    bad("varint_6_bytes", one(b"\x80\x80\x80\x80\x80\x01"), protocol.MALFORMED)
    bad("varint_runs_into_tag", one(b"\x80"), protocol.TRUNCATED)
    bad(
        "varint_runs_into_tag_last_metric",
        signed(hdr(7) + metric_bytes[:-1] + b"\x81"),
        protocol.TRUNCATED,
    )
    # §2.3: 7d looks at the fifth byte before 7c would look for a sixth, so a fifth byte
    # with bit 7 set is malformed even when the tag follows it at once.
    bad("varint_5th_byte_bit7_before_tag", one(b"\xff\xff\xff\xff\x80"), protocol.MALFORMED)
    bad("varint_5th_byte_0x8f_before_tag", one(b"\x80\x80\x80\x80\x8f"), protocol.MALFORMED)

    # Bytes between the last metric and the tag.
    bad("stray_byte", signed(body + b"\x00"), protocol.MALFORMED)
    bad("stray_metric", signed(body + b"\x08\x00"), protocol.MALFORMED)

    # Each vector must fail the way it says, and for the reason it says.
    for v in vectors:
        try:
            protocol.open_frame(bytes.fromhex(v["frame"]), bytes.fromhex(v["key"]))
            got = "a frame"
        except protocol.FrameError as exc:
            got = exc.reason
        if got != v["reason"]:
            raise SystemExit(f"make_vectors: {v['name']} gives {got}, expected {v['reason']}")
    return vectors


# -- replay vectors -------------------------------------------------------------------------

REPLAY_SEQUENCES = [
    ("in_order", [1, 2, 3, 4, 5]),
    ("first_counter_zero", [0, 0, 1]),
    ("duplicates", [10, 11, 11, 10, 12, 12]),
    ("reordered_inside_window", [100, 98, 99, 97, 101, 98, 96, 101]),
    ("gaps_filled_later", [1, 3, 5, 2, 4, 3, 6]),
    ("window_edge_63_and_64_behind", [200, 137, 136, 137, 138]),
    ("window_slides", [10, 74, 10, 11, 11, 75, 11, 12]),
    ("jump_exactly_window", [0, 64, 0, 1, 63, 64]),
    ("big_jump", [5, 1000000, 6, 999999, 1000000, 999937, 999936]),
    ("first_counter_high", [1000, 937, 936, 999, 1001, 937]),
    ("counter_near_u32_max", [4294967294, 4294967295, 4294967232, 4294967231, 4294967295]),
    ("old_counter_after_reboot_jump", [50, 51, 1050, 52, 1049, 986, 987, 985]),
]


def replay_vectors():
    vectors = []
    for name, counters in REPLAY_SEQUENCES:
        window = protocol.ReplayWindow()
        expected = []
        for counter in counters:
            verdict = window.check(counter)
            if verdict is None:
                window.accept(counter)
            expected.append(verdict or "accept")
        vectors.append(
            {
                "name": name,
                "window": protocol.REPLAY_WINDOW,
                "counters": counters,
                "expected": expected,
            }
        )
    return vectors


# -- encoder, topic and store-line vectors --------------------------------------------------


def encode_vectors(good):
    """§2.4: what encode() does with metrics out of order (sorts them), a repeated id and
    a key that is not 32 bytes (refuses: `error` names the exception)."""
    air = next(v for v in good if v["name"] == "air_typical")
    fields = dict(air["fields"])
    shuffled = dict(fields, metrics=list(reversed(fields["metrics"])))
    repeated = dict(fields, metrics=fields["metrics"] + [fields["metrics"][0]])
    vectors = [
        {"name": "metrics_given_unsorted_are_sorted", "key": air["key"], "fields": shuffled,
         "frame": air["frame"]},
        {"name": "metric_id_repeated", "key": air["key"], "fields": repeated,
         "error": "ValueError"},
        {"name": "key_31_bytes", "key": KEY_AIR[:31].hex(), "fields": fields,
         "error": "ValueError"},
        {"name": "key_33_bytes", "key": (KEY_AIR + b"\x00").hex(), "fields": fields,
         "error": "ValueError"},
        {"name": "key_empty", "key": "", "fields": fields, "error": "ValueError"},
    ]
    for v in vectors:
        args = dict(v["fields"])
        try:
            got = protocol.encode(bytes.fromhex(v["key"]), **args).hex()
        except ValueError:
            got = "ValueError"
        if got != v.get("frame", v.get("error")):
            raise SystemExit(f"make_vectors: encode vector {v['name']} gives {got}")
    return vectors


# §5.1: (topic, (zone, node id) or None when the topic is not an uplink).  Node ids are
# exactly 8 lower-case hex digits; the zone level is any non-empty level, as sent.
TOPICS = [
    ("dordt/v1/spoorzone/0d0a0001/up", ("spoorzone", NODE_AIR)),
    ("dordt/v1/Spoorzone/0d0a0001/up", ("Spoorzone", NODE_AIR)),
    ("dordt/v1/SPOORZONE/0d0a0001/up", ("SPOORZONE", NODE_AIR)),
    ("dordt/v1/spoorzone/0D0A0001/up", None),
    ("dordt/v1/spoorzone/0d0A0001/up", None),
    ("dordt/v1/spoorzone/d0a0001/up", None),
    ("dordt/v1/spoorzone/00d0a0001/up", None),
    ("dordt/v1/spoorzone/0x0a0001/up", None),
    ("dordt/v1//0d0a0001/up", None),
    ("dordt/v1/spoorzone/0d0a0001/down", None),
    ("dordt/v1/spoorzone/0d0a0001/UP", None),
    ("DORDT/v1/spoorzone/0d0a0001/up", None),
    ("dordt/v2/spoorzone/0d0a0001/up", None),
    ("dordt/v1/spoorzone/0d0a0001/up/", None),
    ("/dordt/v1/spoorzone/0d0a0001/up", None),
    ("dordt/v1/spoor/zone/0d0a0001/up", None),
]


def topic_vectors():
    vectors = []
    for topic, want in TOPICS:
        got = protocol.parse_topic_up(topic)
        if got != want:
            raise SystemExit(f"make_vectors: topic {topic!r} gives {got}, expected {want}")
        vectors.append({"topic": topic, "up": None if want is None else
                        [want[0], protocol.node_name(want[1])]})
    return vectors


def _escape(text, specials):
    """§7: a backslash before each of `specials` (the backslash itself first)."""
    out = text.replace("\\", "\\\\")
    for ch in specials:
        out = out.replace(ch, "\\" + ch)
    return out


def _store_line(good_vector, zone, site):
    """§7, written out independently of gateway/forward: the canonical line (what the
    provenance digest covers) of a good vector's frame with this keyring zone and site."""
    f = good_vector["fields"]
    kind = {AIR: "air", NOISE: "noise", CROWD: "crowd"}[f["kind"]]
    measurement = "node_status" if f["flags"] & STATUS else kind
    tags = {"kind": kind, "node": f"{f['node_id']:08x}", "site": site, "zone": zone}
    tag_text = ",".join(f"{k}={_escape(v, ', =')}" for k, v in sorted(tags.items()))
    values = {}
    for metric_id, raw in f["metrics"]:
        m = metrics.BY_ID[metric_id]
        values[m.name] = raw / 10 ** -m.exp if m.exp < 0 else float(raw * 10 ** m.exp)
    field_text = ",".join(f"{k}={v!r}" for k, v in sorted(values.items()))
    return f"{_escape(measurement, ', ')},{tag_text} {field_text}"


STORE_LINES = [  # (name, good vector, zone, site, batch)
    ("air_typical", "air_typical", "spoorzone", "lamppost-17", 7),
    ("noise_typical", "noise_typical", "maasterras", "mt-03", 1),
    ("crowd_typical", "crowd_typical", "spuiboulevard", "sb-12", 123456),
    ("status_frame", "status_air", "spoorzone", "spz-01", 2),
    ("site_with_space_comma_equals_backslash", "air_typical", "spoorzone",
     "lamp post 17,a=b\\c", 9),
    ("zone_with_space", "air_typical", "spoor zone", "lamppost-17", 9),
    ("air_range_high", "air_range_high", "spoorzone", "lamppost-17", 1),
    ("air_range_low", "air_range_low", "spoorzone", "lamppost-17", 1),
]


def store_line_vectors(good):
    by_name = {v["name"]: v for v in good}
    vectors = []
    for name, vector, zone, site, batch in STORE_LINES:
        if vector not in by_name:
            raise SystemExit(f"make_vectors: store line {name}: no good vector {vector}")
        v = by_name[vector]
        canonical = _store_line(v, zone, site)
        t = v["fields"]["timestamp"]
        vectors.append({"name": name, "vector": vector, "zone": zone, "site": site,
                        "batch": batch, "canonical": f"{canonical} {t}",
                        "line": f"{canonical},batch={float(batch)!r} {t}"})
    return vectors


# -- file -----------------------------------------------------------------------------------


def build():
    good = good_vectors()
    return {
        "protocol_version": protocol.VERSION,
        "good": good,
        "bad": bad_vectors(good),
        "replay": replay_vectors(),
        "encode": encode_vectors(good),
        "topics": topic_vectors(),
        "store_lines": store_line_vectors(good),
    }


def render(doc):
    """JSON with one vector per line, so a change shows as a one-line diff."""
    lines = ["{", f'  "protocol_version": {doc["protocol_version"]},']
    sections = ("good", "bad", "replay", "encode", "topics", "store_lines")
    for s, section in enumerate(sections):
        lines.append(f'  "{section}": [')
        items = doc[section]
        for i, item in enumerate(items):
            lines.append("    " + json.dumps(item) + ("," if i < len(items) - 1 else ""))
        lines.append("  ]" + ("," if s < len(sections) - 1 else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if frames.json is out of date, change nothing"
    )
    args = parser.parse_args(argv)
    text = render(build())
    current = OUT.read_text(encoding="utf-8") if OUT.exists() else None
    if text == current:
        return 0
    if args.check:
        script = Path(__file__).relative_to(REPO)
        print(f"make_vectors: {OUT} is out of date; run `python {script}`", file=sys.stderr)
        return 1
    OUT.write_text(text, encoding="utf-8")
    print(f"make_vectors: wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
