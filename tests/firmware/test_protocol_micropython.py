"""Wire protocol v1 under real MicroPython: the committed vectors, byte for byte.

firmware/protocol.py runs on the node, so the vectors that pin its bytes on CPython
(test_protocol.py) must give the same bytes, fields, reasons and replay outcomes under
MicroPython 1.27 (tests/fixtures/micropython.py).  One MicroPython run does everything
and prints one JSON line; the tests below compare it with the vectors in this process.

Run: .venv/bin/pytest tests/firmware/test_protocol_micropython.py (tests/conftest.py loads the
fixture plugin)
"""

import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VECTORS_TEXT = (REPO / "tests" / "vectors" / "frames.json").read_text(encoding="utf-8")
VECTORS = json.loads(VECTORS_TEXT)

# Runs under MicroPython: every call is wrapped so that one failure is recorded, with the
# exception's type, instead of ending the run.
_PROGRAM = r"""
import json
import sys

from firmware import metrics, protocol


def attempt(fn):
    try:
        return {"ok": fn()}
    except protocol.FrameError as exc:
        return {"error": "FrameError", "reason": exc.reason, "message": str(exc)}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}


def fields_of(frame):
    return {
        "kind": frame.kind, "node_id": frame.node_id, "counter": frame.counter,
        "timestamp": frame.timestamp, "window_s": frame.window_s, "key_id": frame.key_id,
        "flags": frame.flags, "metrics": [[i, raw] for i, raw in frame.metrics],
    }


def encode(key, f):
    return protocol.encode(
        key, f["kind"], f["node_id"], f["counter"], f["timestamp"], f["window_s"],
        [(p[0], p[1]) for p in f["metrics"]], f["key_id"], f["flags"],
    )


def values_of(frame):
    out = {}
    for metric_id, raw in frame.metrics:
        m = metrics.BY_ID.get(metric_id)
        if m is not None:
            out[m.name] = m.to_value(raw)
    return out


def good(v):
    key = bytes.fromhex(v["key"])
    data = bytes.fromhex(v["frame"])
    return {
        "encoded": attempt(lambda: encode(key, v["fields"]).hex()),
        "decoded": attempt(lambda: fields_of(protocol.decode(data))),
        "opened": attempt(lambda: fields_of(protocol.open_frame(data, key))),
        "tag": attempt(lambda: protocol.decode(data).tag.hex()),
        "values": attempt(lambda: values_of(protocol.decode(data))),
        "reencoded": attempt(lambda: encode(key, fields_of(protocol.decode(data))).hex()),
    }


def bad(v):
    key = bytes.fromhex(v["key"])
    data = bytes.fromhex(v["frame"])
    return {
        "opened": attempt(lambda: fields_of(protocol.open_frame(data, key))),
        "decoded": attempt(lambda: fields_of(protocol.decode(data))),
    }


def replay(v):
    window = protocol.ReplayWindow(size=v["window"])
    outcomes = []
    for counter in v["counters"]:
        verdict = window.check(counter)
        if verdict is None:
            window.accept(counter)
        outcomes.append(verdict or "accept")
    return outcomes


def frame_error():
    exc = protocol.FrameError(protocol.TRUNCATED, "frame is 0 bytes")
    return [isinstance(exc, ValueError), exc.reason, str(exc)]


with open("/vectors.json") as f:
    vectors = json.load(f)
print(json.dumps({
    "implementation": [sys.implementation.name, list(sys.implementation.version)[:3]],
    "frame_error": attempt(frame_error),
    "good": dict((v["name"], good(v)) for v in vectors["good"]),
    "bad": dict((v["name"], bad(v)) for v in vectors["bad"]),
    "replay": dict((v["name"], attempt(lambda: replay(v))) for v in vectors["replay"]),
}))
"""


def _name(vector):
    return vector["name"]


@pytest.fixture(scope="module")
def results(micropython):
    return micropython.run_json(_PROGRAM, files={"/vectors.json": VECTORS_TEXT}, timeout_s=120)


def test_runs_under_micropython(results):
    assert results["implementation"][0] == "micropython"


def test_frame_error_can_be_raised_under_micropython(results):
    # MicroPython's exception types have no __init__ to call by name (fixed in 0e792b8).
    assert results["frame_error"] == {"ok": [True, "truncated", "frame is 0 bytes"]}


@pytest.mark.parametrize("vector", VECTORS["good"], ids=_name)
def test_good_vector_encodes_byte_for_byte(results, vector):
    assert results["good"][vector["name"]]["encoded"] == {"ok": vector["frame"]}


@pytest.mark.parametrize("vector", VECTORS["good"], ids=_name)
def test_good_vector_decodes_and_verifies(results, vector):
    got = results["good"][vector["name"]]
    assert got["decoded"] == {"ok": vector["fields"]}
    assert got["opened"] == {"ok": vector["fields"]}
    assert got["tag"] == {"ok": vector["frame"][-32:]}
    assert got["reencoded"] == {"ok": vector["frame"]}


@pytest.mark.parametrize("vector", VECTORS["good"], ids=_name)
def test_good_vector_values(results, vector):
    values = results["good"][vector["name"]]["values"]["ok"]
    assert values.keys() == vector["values"].keys()
    for name, expected in vector["values"].items():
        # MicroPython prints floats with fewer digits than CPython's repr.
        assert math.isclose(values[name], expected, rel_tol=1e-12), name


def _refused(got, reason):
    """`got` records a FrameError with `reason` (not any other exception, not a frame)."""
    assert got.get("error") == "FrameError", got
    assert got["reason"] == reason, got
    assert got["message"]


@pytest.mark.parametrize("vector", VECTORS["bad"], ids=_name)
def test_bad_vector_is_refused_with_its_reason(results, vector):
    got = results["bad"][vector["name"]]
    _refused(got["opened"], vector["reason"])
    if vector["reason"] == "bad_tag":
        assert "ok" in got["decoded"], got["decoded"]  # only the tag is wrong
    else:
        _refused(got["decoded"], vector["reason"])


@pytest.mark.parametrize("vector", VECTORS["replay"], ids=_name)
def test_replay_sequence(results, vector):
    assert results["replay"][vector["name"]] == {"ok": vector["expected"]}


def test_a_prepared_key_falls_back_under_micropython(micropython):
    vector = VECTORS["good"][0]
    out = micropython.run_json(
        "import json\nfrom firmware import protocol\n"
        f"key = bytes.fromhex({vector['key']!r})\n"
        f"frame = bytes.fromhex({vector['frame']!r})\n"
        "pk = protocol.PreparedKey(key)\n"
        "protocol.open_frame(frame, pk)\n"
        "print(json.dumps({'fallback': pk._inner is None, "
        "'tag': protocol.tag_of(pk, frame[:-16]).hex()}))\n")
    assert out == {"fallback": True, "tag": vector["frame"][-32:]}
