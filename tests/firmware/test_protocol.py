"""Wire protocol v1 on CPython: the committed vectors byte for byte, then properties.

The vectors (tests/vectors/frames.json, docs/protocol.md §9) pin the exact bytes; the
hypothesis tests check the rules of docs/protocol.md §2-§6 over inputs nobody wrote down.
The same vectors run under real MicroPython in test_protocol_micropython.py.
"""

import importlib.util
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware import metrics, protocol
from firmware.protocol import FrameError

REPO = Path(__file__).resolve().parents[2]
VECTORS_PATH = REPO / "tests" / "vectors" / "frames.json"
DOC_PATH = REPO / "docs" / "protocol.md"
VECTORS = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
GOOD = VECTORS["good"]
BAD = VECTORS["bad"]
REPLAY = VECTORS["replay"]
GOOD_BY_NAME = {v["name"]: v for v in GOOD}

DECODE_REASONS = {protocol.TRUNCATED, protocol.OVERSIZED, protocol.BAD_VERSION, protocol.MALFORMED}
KEY = bytes(range(32))


def _name(vector):
    return vector["name"]


def _load_script(relpath):
    """A repository script (not a package module) imported by path."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _encode(key, f):
    return protocol.encode(
        key,
        f["kind"],
        f["node_id"],
        f["counter"],
        f["timestamp"],
        f["window_s"],
        [tuple(p) for p in f["metrics"]],
        f["key_id"],
        f["flags"],
    )


def _fields_of(frame):
    return {
        "kind": frame.kind,
        "node_id": frame.node_id,
        "counter": frame.counter,
        "timestamp": frame.timestamp,
        "window_s": frame.window_s,
        "key_id": frame.key_id,
        "flags": frame.flags,
        "metrics": [list(p) for p in frame.metrics],
    }


def _varint_len(raw):
    z = 2 * raw if raw >= 0 else -2 * raw - 1
    size = 1
    while z > 0x7F:
        z >>= 7
        size += 1
    return size


def _registry_ok(kind, flags, pairs):
    """docs/protocol.md §6.4 check 10, written out independently of the vector script."""
    for metric_id, raw in pairs:
        m = metrics.BY_ID.get(metric_id)
        if m is None:
            return False
        if m.group != metrics.GROUP_STATUS and m.group != metrics.KIND_NAMES.get(kind):
            return False
        if (m.group == metrics.GROUP_STATUS) != bool(flags & protocol.FLAG_STATUS):
            return False
        if raw < m.raw_min or raw > m.raw_max:
            return False
    return True


# -- the vectors, byte for byte -------------------------------------------------------------


def test_vectors_are_for_protocol_v1():
    assert VECTORS["protocol_version"] == protocol.VERSION == 1


@pytest.mark.parametrize("vector", GOOD, ids=_name)
def test_good_vector_encodes_to_its_frame(vector):
    frame = _encode(bytes.fromhex(vector["key"]), vector["fields"])
    assert frame.hex() == vector["frame"]


@pytest.mark.parametrize("vector", GOOD, ids=_name)
def test_good_vector_decodes_to_its_fields_and_verifies(vector):
    data = bytes.fromhex(vector["frame"])
    frame = protocol.open_frame(data, bytes.fromhex(vector["key"]))
    assert _fields_of(frame) == vector["fields"]
    assert frame.version == protocol.VERSION
    assert frame.tag == data[-protocol.TAG_LEN :]
    assert frame.signed == data[: -protocol.TAG_LEN]
    assert frame.time_synced == (not vector["fields"]["flags"] & protocol.FLAG_TIME_UNSYNCED)
    assert frame.is_status == bool(vector["fields"]["flags"] & protocol.FLAG_STATUS)
    assert protocol.MIN_FRAME <= len(data) <= protocol.MAX_FRAME


@pytest.mark.parametrize("vector", GOOD, ids=_name)
def test_good_vector_values_follow_the_registry(vector):
    expected = {}
    for metric_id, raw in vector["fields"]["metrics"]:
        if metric_id in metrics.BY_ID:
            m = metrics.BY_ID[metric_id]
            expected[m.name] = raw * 10.0**m.exp if m.exp >= 0 else raw / 10**-m.exp
    assert vector["values"] == expected


@pytest.mark.parametrize("vector", GOOD, ids=_name)
def test_good_vector_registry_flag(vector):
    f = vector["fields"]
    assert vector["registry_ok"] == _registry_ok(f["kind"], f["flags"], f["metrics"])


def test_good_vectors_cover_what_section_9_promises():
    kinds = {v["fields"]["kind"] for v in GOOD if v["registry_ok"]}
    assert {metrics.KIND_AIR, metrics.KIND_NOISE, metrics.KIND_CROWD} <= kinds
    flags = {v["fields"]["flags"] for v in GOOD}
    assert {0, protocol.FLAG_STATUS, protocol.FLAG_TIME_UNSYNCED} <= flags
    sizes = {len(v["frame"]) // 2 for v in GOOD}
    assert {protocol.MIN_FRAME, protocol.MAX_FRAME} <= sizes
    counts = {len(v["fields"]["metrics"]) for v in GOOD}
    assert protocol.MAX_METRICS in counts
    raws = {raw for v in GOOD for _, raw in v["fields"]["metrics"]}
    assert {protocol.RAW_MIN, protocol.RAW_MAX} <= raws
    noise = GOOD_BY_NAME["noise_typical"]["values"]
    assert {"laeq_db", "lamax_db", "la10_db", "la50_db", "la90_db"} <= set(noise)
    assert sum(name.startswith("band_") for name in noise) == len(metrics.BAND_CENTRES_HZ)
    for group in ("air", "status"):  # every metric of these groups at both range ends
        for m in (m for m in metrics.BY_ID.values() if m.group == group):
            pairs = {tuple(p) for v in GOOD if v["registry_ok"] for p in v["fields"]["metrics"]}
            assert (m.id, m.raw_min) in pairs and (m.id, m.raw_max) in pairs, m


def test_typical_air_frame_fits_64_bytes_as_the_doc_says():
    size = len(GOOD_BY_NAME["air_typical"]["frame"]) // 2
    stated = re.search(
        r"A typical air frame \(seven metrics.*?\) is (\d+) bytes",
        DOC_PATH.read_text(encoding="utf-8"),
        re.DOTALL,
    )
    assert stated, "docs/protocol.md §1 no longer states the typical air frame size"
    assert int(stated.group(1)) == size <= 64


def test_doc_worked_example_is_the_air_typical_vector():
    text = DOC_PATH.read_text(encoding="utf-8")
    block = text.split("<!-- air-example:begin -->")[1].split("<!-- air-example:end -->")[0]
    dump = re.findall(r"^[0-9a-f]{4}  ((?:[0-9a-f]{2} ?)+)$", block, re.MULTILINE)
    assert (
        bytes.fromhex("".join(dump).replace(" ", "")).hex()
        == (GOOD_BY_NAME["air_typical"]["frame"])
    )


def test_doc_varint_table_matches_the_encoder():
    text = DOC_PATH.read_text(encoding="utf-8")
    section = text.split("### 2.1 Varints")[1].split("### 2.2")[0]
    row = r"^\| ([−-]?\d+)[^|]*\| (\d+) \| `([0-9a-f ]+)` \| (\d) \|$"
    rows = re.findall(row, section, re.MULTILINE)
    assert len(rows) >= 10
    for raw_text, z_text, hex_text, size_text in rows:
        raw = int(raw_text.replace("−", "-"))
        frame = protocol.encode(KEY, 1, 1, 1, 1, 1, [(1, raw)])
        value = frame[protocol.HEADER_LEN + 1 : -protocol.TAG_LEN]
        assert value == bytes.fromhex(hex_text), raw
        assert len(value) == int(size_text) == _varint_len(raw)
        assert int(z_text) == (2 * raw if raw >= 0 else -2 * raw - 1)


@pytest.mark.parametrize("vector", BAD, ids=_name)
def test_bad_vector_is_refused_with_its_reason(vector):
    data = bytes.fromhex(vector["frame"])
    with pytest.raises(FrameError) as refused:
        protocol.open_frame(data, bytes.fromhex(vector["key"]))
    assert refused.value.reason == vector["reason"]
    assert str(refused.value)  # a message for people, too
    if vector["reason"] == protocol.BAD_TAG:
        protocol.decode(data)  # structurally fine: only the tag is wrong
    else:
        with pytest.raises(FrameError) as structural:
            protocol.decode(data)  # no key needed to see it
        assert structural.value.reason == vector["reason"]


@pytest.mark.parametrize("vector", REPLAY, ids=_name)
def test_replay_vector(vector):
    window = protocol.ReplayWindow(size=vector["window"])
    outcomes = []
    for counter in vector["counters"]:
        verdict = window.check(counter)
        if verdict is None:
            window.accept(counter)
        outcomes.append(verdict or "accept")
    assert outcomes == vector["expected"]


def test_vectors_file_is_up_to_date():
    make_vectors = _load_script("tests/vectors/make_vectors.py")
    assert make_vectors.render(make_vectors.build()) == VECTORS_PATH.read_text(encoding="utf-8"), (
        "run `python tests/vectors/make_vectors.py` and commit frames.json"
    )


def test_protocol_doc_generated_blocks_are_up_to_date(capsys):
    gen = _load_script("docs/gen_protocol_tables.py")
    assert gen.main(["--check"]) == 0, capsys.readouterr().err


# -- every bit, every cut -------------------------------------------------------------------


def test_every_single_bit_flip_of_every_good_vector_is_refused():
    for vector in GOOD:
        data = bytes.fromhex(vector["frame"])
        key = bytes.fromhex(vector["key"])
        for bit in range(len(data) * 8):
            flipped = bytearray(data)
            flipped[bit // 8] ^= 1 << (bit % 8)
            with pytest.raises(FrameError) as refused:
                protocol.open_frame(bytes(flipped), key)
            assert refused.value.reason in DECODE_REASONS | {protocol.BAD_TAG}, (
                vector["name"],
                bit,
            )


def test_every_prefix_of_every_good_vector_is_truncated():
    for vector in GOOD:
        data = bytes.fromhex(vector["frame"])
        for cut in range(len(data)):
            with pytest.raises(FrameError) as refused:
                protocol.decode(data[:cut])
            assert refused.value.reason == protocol.TRUNCATED, (vector["name"], cut)
            assert str(cut) in str(refused.value) or cut >= protocol.MIN_FRAME


def test_every_suffix_of_every_good_vector_is_refused():
    for vector in GOOD:
        data = bytes.fromhex(vector["frame"])
        key = bytes.fromhex(vector["key"])
        for start in range(1, len(data)):
            with pytest.raises(FrameError):
                protocol.open_frame(data[start:], key)


@pytest.mark.parametrize("value", [None, "0101", [1, 1, 0], 7, 1.5])
def test_decode_refuses_what_is_not_bytes(value):
    with pytest.raises(FrameError) as refused:
        protocol.decode(value)
    assert refused.value.reason == protocol.MALFORMED


def test_decode_takes_bytearray_and_memoryview():
    data = bytes.fromhex(GOOD_BY_NAME["air_typical"]["frame"])
    for view in (bytearray(data), memoryview(data)):
        assert _fields_of(protocol.open_frame(view, KEY)) == GOOD_BY_NAME["air_typical"]["fields"]


# -- encode refuses what cannot be framed ---------------------------------------------------

_OK = {
    "key": KEY,
    "kind": 1,
    "node_id": 1,
    "counter": 1,
    "timestamp": 1,
    "window_s": 60,
    "metrics": [(1, 1)],
    "key_id": 0,
    "flags": 0,
}


@pytest.mark.parametrize(
    "change",
    [
        {"key": bytes(31)},
        {"key": bytes(33)},
        {"metrics": []},
        {"metrics": [(i, 0) for i in range(49)]},
        {"metrics": [(1, 0), (1, 1)]},
        {"metrics": [(256, 0)]},
        {"metrics": [(-1, 0)]},
        {"metrics": [(1, protocol.RAW_MAX + 1)]},
        {"metrics": [(1, protocol.RAW_MIN - 1)]},
        {"metrics": [(1, 1.5)]},
        {"metrics": [(i, protocol.RAW_MAX) for i in range(28)]},  # 19 + 168 + 16 > 200
        {"kind": 0},
        {"kind": 256},
        {"flags": 0x04},
        {"flags": -1},
        {"key_id": 256},
        {"node_id": -1},
        {"node_id": 1 << 32},
        {"counter": 1 << 32},
        {"timestamp": -1},
        {"timestamp": 1 << 32},
        {"window_s": 1 << 16},
        {"counter": "1"},
    ],
    ids=repr,
)
def test_encode_refuses_fields_that_do_not_fit(change):
    args = dict(_OK, **change)
    with pytest.raises(ValueError) as refused:
        protocol.encode(**args)
    assert not isinstance(refused.value, FrameError)
    assert str(refused.value)


def test_encode_sorts_metrics_by_id():
    shuffled = protocol.encode(KEY, 1, 1, 1, 1, 1, [(7, 1), (1, 2), (3, 3)])
    assert shuffled == protocol.encode(KEY, 1, 1, 1, 1, 1, [(1, 2), (3, 3), (7, 1)])


def test_header_constants_agree_with_the_layout():
    assert protocol.HEADER_LEN == 19 and protocol.TAG_LEN == 16
    assert protocol.MIN_FRAME == 37 and protocol.MAX_FRAME == 200
    assert protocol.MAX_METRICS == 48 and protocol.KEY_LEN == 32
    assert protocol.FLAGS_KNOWN == 0x03


# -- topics, §5 -----------------------------------------------------------------------------


def test_topic_round_trip():
    topic = protocol.topic_up("spoorzone", 0x0D0A0001)
    assert topic == "dordt/v1/spoorzone/0d0a0001/up"
    assert protocol.parse_topic_up(topic) == ("spoorzone", 0x0D0A0001)
    assert protocol.parse_topic_up(protocol.topic_up("z", protocol.U32_MAX)) == (
        "z",
        protocol.U32_MAX,
    )


@pytest.mark.parametrize(
    "topic",
    [
        "dordt/v1/spoorzone/0D0A0001/up",
        "dordt/v1/spoorzone/d0a0001/up",
        "dordt/v1/spoorzone/00d0a0001/up",
        "dordt/v1//0d0a0001/up",
        "dordt/v2/spoorzone/0d0a0001/up",
        "dordt/v1/spoorzone/0d0a0001/down",
        "dordt/v1/spoorzone/0d0a0001/up/x",
        "dordt/v1/spoorzone/0d0a000g/up",
        "dordt/v1/0d0a0001/up",
        "",
    ],
)
def test_parse_topic_up_refuses_what_is_not_an_uplink(topic):
    assert protocol.parse_topic_up(topic) is None


# -- properties -----------------------------------------------------------------------------

ALL_METRICS = [metrics.BY_ID[i] for i in sorted(metrics.BY_ID)]


def _kind_and_flags_for(m):
    if m.group == metrics.GROUP_STATUS:
        return metrics.KIND_AIR, protocol.FLAG_STATUS
    return metrics.KIND_IDS[m.group], 0


@given(st.data())
def test_every_metric_round_trips_across_its_range(data):
    m = data.draw(st.sampled_from(ALL_METRICS), label="metric")
    value = data.draw(st.floats(m.min, m.max, allow_nan=False), label="value")
    raw = m.to_raw(value)
    assert m.raw_min <= raw <= m.raw_max
    kind, flags = _kind_and_flags_for(m)
    frame = protocol.open_frame(
        protocol.encode(KEY, kind, 1, 1, 1, 60, [(m.id, raw)], flags=flags), KEY
    )
    assert frame.metrics == [(m.id, raw)]
    assert _registry_ok(kind, flags, frame.metrics)
    half_step = 0.5 * 10.0**m.exp
    assert abs(m.to_value(raw) - value) <= half_step + 1e-9 * max(1.0, abs(value))


@given(st.data())
def test_every_raw_in_range_survives_value_and_back(data):
    m = data.draw(st.sampled_from(ALL_METRICS), label="metric")
    raw = data.draw(st.integers(m.raw_min, m.raw_max), label="raw")
    assert m.to_raw(m.to_value(raw)) == raw


_u32 = st.integers(0, protocol.U32_MAX)
_headers = st.fixed_dictionaries(
    {
        "kind": st.integers(1, 255),
        "node_id": _u32,
        "counter": _u32,
        "timestamp": _u32,
        "window_s": st.integers(0, 0xFFFF),
        "key_id": st.integers(0, 255),
        "flags": st.integers(0, protocol.FLAGS_KNOWN),
    }
)
_raws = st.one_of(st.integers(-200, 200), st.integers(protocol.RAW_MIN, protocol.RAW_MAX))
_metric_sets = st.dictionaries(
    st.integers(0, 255), _raws, min_size=1, max_size=protocol.MAX_METRICS
)


@given(_headers, _metric_sets, st.binary(min_size=32, max_size=32))
def test_valid_headers_and_metrics_round_trip(header, metric_set, key):
    pairs = sorted(metric_set.items())
    size = protocol.HEADER_LEN + sum(1 + _varint_len(raw) for _, raw in pairs) + 16
    fields = dict(header, metrics=[list(p) for p in pairs])
    if size > protocol.MAX_FRAME:
        with pytest.raises(ValueError):
            _encode(key, fields)
        return
    data = _encode(key, fields)
    assert len(data) == size
    assert _fields_of(protocol.open_frame(data, key)) == fields


@given(_headers, _metric_sets, st.data())
def test_any_flipped_bit_of_a_valid_frame_is_refused(header, metric_set, data):
    pairs = sorted(metric_set.items())[:20]  # 19 + 20 * 6 + 16 <= 200
    frame = _encode(KEY, dict(header, metrics=pairs))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1), label="bit")
    flipped = bytearray(frame)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(FrameError) as refused:
        protocol.open_frame(bytes(flipped), KEY)
    assert refused.value.reason in DECODE_REASONS | {protocol.BAD_TAG}


@given(_headers, _metric_sets, st.data())
def test_any_truncation_of_a_valid_frame_is_truncated(header, metric_set, data):
    frame = _encode(KEY, dict(header, metrics=sorted(metric_set.items())[:20]))
    cut = data.draw(st.integers(0, len(frame) - 1), label="cut")
    with pytest.raises(FrameError) as refused:
        protocol.decode(frame[:cut])
    assert refused.value.reason == protocol.TRUNCATED
    assert "bytes" in str(refused.value) or "metric" in str(refused.value)


@given(st.binary(min_size=protocol.MAX_FRAME + 1, max_size=4 * protocol.MAX_FRAME))
def test_frames_over_max_frame_are_oversized(data):
    with pytest.raises(FrameError) as refused:
        protocol.open_frame(data, KEY)
    assert refused.value.reason == protocol.OVERSIZED


def _overwrite(vector, at, junk):
    """A good frame with `junk` written over it at `at` (wrapped to the frame's length)."""
    data = bytes.fromhex(vector["frame"])
    at %= len(data) + 1
    return data[:at] + junk + data[at + len(junk) :]


def _plausible_frames():
    """Byte strings that get past the first checks, so decode() reaches the metrics."""
    header = st.builds(
        lambda flags, count, rest: bytes([1, 1, flags, 0]) + bytes(14) + bytes([count]) + rest,
        st.integers(0, 3) | st.integers(0, 255),
        st.integers(0, 60),
        st.binary(min_size=0, max_size=200),
    )
    mutated = st.builds(
        _overwrite, st.sampled_from(GOOD), st.integers(0, 255), st.binary(min_size=1, max_size=8)
    )
    return st.one_of(
        st.binary(max_size=300), st.binary(max_size=250).map(b"\x01".__add__), header, mutated
    )


@given(_plausible_frames())
def test_decode_of_any_bytes_returns_a_canonical_frame_or_raises_frame_error(data):
    try:
        frame = protocol.decode(data)
    except FrameError as refused:
        assert refused.reason in DECODE_REASONS
        assert str(refused)
        return
    # Accepted: then it is the canonical encoding of its own fields (§2.4).
    assert protocol.MIN_FRAME <= len(data) <= protocol.MAX_FRAME
    if frame.kind == 0:  # decodable, but encode() refuses kind 0 (§2)
        return
    again = _encode(KEY, _fields_of(frame))
    assert again[: -protocol.TAG_LEN] == bytes(data[: -protocol.TAG_LEN])


class _ReferenceWindow:
    """§6.2 as plainly as possible: the set of accepted counters and the highest."""

    def __init__(self, size):
        self.size = size
        self.accepted = set()
        self.highest = None

    def offer(self, counter):
        if self.highest is None or counter > self.highest:
            verdict = "accept"
        elif self.highest - counter >= self.size:
            verdict = "too_old"
        elif counter in self.accepted:
            verdict = "replay"
        else:
            verdict = "accept"
        if verdict == "accept":
            self.accepted.add(counter)
            self.highest = counter if self.highest is None else max(self.highest, counter)
        return verdict


_counters = st.one_of(st.integers(0, 300), st.integers(0, protocol.U32_MAX))


@given(st.lists(_counters, max_size=150), st.integers(0, 150))
def test_replay_window_matches_the_reference_model(counters, restart_at):
    window = protocol.ReplayWindow()
    model = _ReferenceWindow(protocol.REPLAY_WINDOW)
    for i, counter in enumerate(counters):
        if i == restart_at:  # the gateway restarts: only (highest, seen) is persisted
            window = protocol.ReplayWindow(window.highest, window.seen)
        before = (window.highest, window.seen)
        verdict = window.check(counter)
        assert window.check(counter) == verdict
        assert (window.highest, window.seen) == before, "check() must not record"
        if verdict is None:
            window.accept(counter)
        assert (verdict or "accept") == model.offer(counter), (i, counter)
        assert 0 <= window.seen < 1 << protocol.REPLAY_WINDOW


def test_integer_values_stay_exact_above_float32_precision():
    # An ESP32's floats are single precision: counts and uptimes must not pass through them.
    uptime = metrics.BY_NAME["uptime_s"]
    assert uptime.to_raw(16_777_217) == 16_777_217
    assert uptime.to_raw(2_147_483_647) == uptime.raw_max == 2_147_483_647
    assert isinstance(uptime.raw_max, int)


@pytest.mark.parametrize("vector", GOOD, ids=[v["name"] for v in GOOD])
def test_a_prepared_key_gives_the_same_frames_and_verdicts(vector):
    key = bytes.fromhex(vector["key"])
    prepared = protocol.PreparedKey(key)
    f = vector["fields"]
    frame = protocol.encode(prepared, f["kind"], f["node_id"], f["counter"], f["timestamp"],
                            f["window_s"], [tuple(m) for m in f["metrics"]], f["key_id"],
                            f["flags"])
    assert frame.hex() == vector["frame"]
    assert protocol.verify(protocol.open_frame(frame, prepared), prepared)
    wrong = protocol.PreparedKey(bytes(b ^ 1 for b in key))
    with pytest.raises(FrameError) as err:
        protocol.open_frame(frame, wrong)
    assert err.value.reason == "bad_tag"
    assert key.hex() not in repr(prepared)


@pytest.mark.parametrize("vector", VECTORS["encode"], ids=lambda v: v["name"])
def test_encode_vector(vector):
    """§2.4: metrics in any order are sorted; a repeated id and a key that is not 32 bytes
    are refused."""
    args = dict(vector["fields"])
    key = bytes.fromhex(vector["key"])
    if "error" in vector:
        with pytest.raises(ValueError):
            protocol.encode(key, **args)
    else:
        assert protocol.encode(key, **args).hex() == vector["frame"]


@pytest.mark.parametrize("vector", VECTORS["topics"], ids=lambda v: v["topic"])
def test_topic_vector(vector):
    """§5.1: an upper-case node id makes a topic not an uplink; the zone level is as sent."""
    got = protocol.parse_topic_up(vector["topic"])
    want = vector["up"]
    assert got == (None if want is None else (want[0], int(want[1], 16)))
