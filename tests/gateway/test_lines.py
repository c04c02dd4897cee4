"""The line-protocol text the outbox keeps: what line_head writes, parse_line reads back,
for any tag value; the local store takes lines as it takes readings."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware import metrics, protocol
from fleet.keyring import Keyring, NodeEntry
from gateway import verify as verify_module
from gateway.forward import line_head, line_protocol, parse_line
from gateway.forward.forwarder import _batch_field
from gateway.forward.local import LocalStore
from gateway.model import Envelope, Point, Reading
from gateway.verify import Verifier

TAG = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
              max_size=12)
NAME = st.from_regex(r"x_[a-z0-9_]{0,12}", fullmatch=True)  # not registry metrics
VALUE = st.floats(allow_nan=False, allow_infinity=False)


@given(st.dictionaries(NAME, TAG, min_size=1, max_size=4),
       st.dictionaries(NAME, VALUE, min_size=1, max_size=8), st.integers(0, 2**32))
def test_any_point_reads_back_exactly(tags, fields, time_s):
    line = line_protocol(Point("gap", tags, fields, time_s))
    measurement, tags_back, fields_back, time_back = parse_line(line)
    assert (measurement, tags_back, time_back) == ("gap", tags, time_s)
    assert fields_back == {k: float(v) for k, v in fields.items()}


@given(TAG, TAG, st.dictionaries(NAME, VALUE, min_size=1, max_size=8))
def test_a_readings_series_prefix_is_built_once_and_stays_right(zone, site, fields):
    r = Reading("0a000001", "air", zone, site, 1, 1_790_000_000, 10, fields)
    assert line_head(r) == line_head(r)  # the second comes from the prefix cache
    _, tags, back, _ = parse_line(line_protocol(r))
    assert tags == {"zone": zone, "site": site, "node": "0a000001", "kind": "air"}
    assert back == fields


def test_the_local_store_takes_lines_as_it_takes_readings(tmp_path):
    r = Reading("0a000001", "air", "spoorzone", "spz-01", 1, 1_790_000_000, 10,
                {"temperature_c": 12.5, "humidity_pct": 61.0})
    a, b = LocalStore(tmp_path / "a.sqlite"), LocalStore(tmp_path / "b.sqlite")
    a.write([r])
    b.write_lines([line_protocol(r)])
    assert a.latest() == b.latest()
    assert b.points("air", "temperature_c")[0].value == 12.5


def test_a_line_of_anything_else_is_a_clear_error():
    for bad in ("", "air", "air,zone=a temperature_c=x 1", "air temperature_c=1.0 soon"):
        try:
            parse_line(bad)
        except ValueError as exc:
            assert "not a line this gateway writes" in str(exc)
        else:
            raise AssertionError(f"{bad!r} parsed")
    assert math.isinf(parse_line("a,b=c f=inf 1")[2]["f"])  # the store refuses it, not us


def test_a_registry_value_off_its_fixed_point_step_is_written_on_it():
    # 10 + 1.12 is not the double nearest to 11.12; the line says 11.12, as the store and
    # the provenance digest expect of a fixed-point metric (docs/protocol.md §7)
    r = Reading("0a000001", "air", "z", "s", 1, 1_790_000_000, 10,
                {"temperature_c": 10 + 1.12, "x_other": 10 + 1.12})
    assert repr(10 + 1.12) == "11.120000000000001"
    assert line_head(r).endswith(" temperature_c=11.12,x_other=11.120000000000001")


ANY_NAME = st.one_of(NAME, st.sampled_from(["temperature_c", "crowd_faults", "count",
                                             "suppressed", "laeq_db"]))
ZEROISH = st.one_of(VALUE, st.sampled_from([0.0, -0.0, 0, 1, 1.0, True]))


@given(st.lists(st.dictionaries(ANY_NAME, ZEROISH, min_size=1, max_size=5), min_size=1,
                max_size=6))
def test_field_texts_formatted_once_are_what_formatting_makes(field_sets):
    """line_head keeps the text of a field set it formatted (withheld readings share a
    few); a later reading with equal fields gets exactly what formatting would write, 0.0
    and -0.0 included."""
    from gateway.forward import fixed_point

    for fields in field_sets + field_sets[::-1]:
        r = Reading("0a000001", "crowd", "spoorzone", "spz-01", 1, 1_790_000_000, 10,
                    dict(fields))
        want = ",".join(f"{k}={fixed_point(k, v)!r}" for k, v in sorted(fields.items()))
        assert line_head(r).split(" ", 1)[1] == want


_VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "frames.json")
                      .read_text(encoding="utf-8"))


@pytest.mark.parametrize("vector", _VECTORS["store_lines"], ids=lambda v: v["name"])
def test_store_line_vector(vector, monkeypatch):
    """docs/protocol.md §7: the frame of a good vector, verified with a keyring that gives
    its zone and site, becomes exactly the canonical line, and the batch field goes in
    after the sorted fields, before the timestamp.  Each of the gateway's paths (compiled,
    Python fast path, reference) makes the same text."""
    good = next(v for v in _VECTORS["good"] if v["name"] == vector["vector"])
    f = good["fields"]
    ring = Keyring()
    ring.add(NodeEntry(f["node_id"], metrics.KIND_NAMES[f["kind"]], vector["zone"],
                       vector["site"], {f["key_id"]: bytes.fromhex(good["key"])}))
    topic = protocol.topic_up("anyzone", f["node_id"])
    heads = set()
    for path in ("compiled", "python", "reference"):
        if path != "compiled":
            monkeypatch.setattr(verify_module, "_verify_c", None)
        verifier = Verifier(ring, clock=lambda: f["timestamp"] + 0.5)
        if path == "reference":
            verifier._fast = lambda env: None
        reading = verifier.check(Envelope("mqtt", topic, bytes.fromhex(good["frame"]),
                                          f["timestamp"] + 0.5))
        assert isinstance(reading, Reading), reading
        heads.add(line_head(reading))
        heads.add(line_head(dataclasses.replace(reading, head=None)))
        assert line_protocol(reading) == vector["canonical"]
    assert len(heads) == 1
    assert f"{heads.pop()}{_batch_field(vector['batch'])} {f['timestamp']}" == vector["line"]


def test_the_protocol_documents_worked_example_lines_are_the_vectors():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text("utf-8")
    air = next(v for v in _VECTORS["store_lines"] if v["name"] == "air_typical")
    assert f"\n{air['canonical']}\n" in doc and f"\n{air['line']}\n" in doc


def test_tag_keys_are_escaped_like_values_so_any_point_reads_back():
    # Found by fuzz/fuzz_lines.py: a tag key with backslashes was written as it was and
    # read back unescaped.  The gateway's own keys are plain names; the rule holds anyway.
    tags = {"s\\\\lot": "3", "a b,c=d": "x"}
    line = line_protocol(Point("provenance", tags, {"seq": 7.0}, 1764331200))
    assert parse_line(line) == ("provenance", tags, {"seq": 7.0}, 1764331200)
