"""The metric registry as a node holds it: firmware/metrics.py keeps its rows in one string
and, under MicroPython, makes a Metric only when it is looked up (metrics.Registry), where
CPython holds plain dicts of every Metric.  Both must be the same registry: the same ids,
names, units, scales, ranges and groups, with the same types (an int range stays an int),
in the same order, and the same answers for keys that are not in it.  metrics.id_of gives a
metric's id from the table alone (a node's status frame)."""

import json

import pytest

from firmware import metrics

FIELDS = ("id", "name", "unit", "exp", "min", "max", "group", "raw_min", "raw_max")
NOT_KEYS = ("s", "dB", "air", "status", "0x01", "temperature", "band_", "band_x_hz_db",
            "band_31_5hz_dbx", "band_31_5hz", "", "uptime_s ", "x\nuptime_s", 0, 0x09, 0x2F,
            0x30 + len(metrics.BAND_CENTRES_HZ), 0xE7, 0x100, -1, None)


def described(metric):
    """A Metric as JSON-able [field, type name, value] triples."""
    return [[f, type(getattr(metric, f)).__name__, getattr(metric, f)] for f in FIELDS]


def cpython_registry():
    return {"by_id": [[k, described(m)] for k, m in metrics.BY_ID.items()],
            "by_name": [[k, described(m)] for k, m in metrics.BY_NAME.items()]}


def test_the_lazy_registry_is_the_dicts_registry_under_cpython():
    by_id, by_name = metrics.Registry(False), metrics.Registry(True)
    assert [[k, described(m)] for k, m in by_id.items()] == cpython_registry()["by_id"]
    assert [[k, described(m)] for k, m in by_name.items()] == cpython_registry()["by_name"]
    assert list(by_id) == list(metrics.BY_ID) and len(by_id) == len(metrics.BY_ID)
    assert list(by_name.keys()) == list(metrics.BY_NAME) and len(by_name) == len(metrics.BY_NAME)
    for name, m in metrics.BY_NAME.items():
        assert by_name[name] is by_id[m.id]  # one Metric per row, whichever way it is found
        assert name in by_name and m.id in by_id
    for key in NOT_KEYS:
        assert key not in by_id and key not in by_name
        assert by_id.get(key) is None and by_name.get(key, "none") == "none"
        with pytest.raises(KeyError):
            by_name[key]
    with pytest.raises(TypeError):
        by_name.get(["unhashable"])


def test_id_of_reads_the_id_without_making_a_metric():
    assert [metrics.id_of(name) for name in metrics.BY_NAME] == [
        m.id for m in metrics.BY_NAME.values()]
    assert [metrics.id_of(key) for key in NOT_KEYS] == [None] * len(NOT_KEYS)


_MP_PROGRAM = r"""
import json
from firmware import metrics

FIELDS = %s
NOT_KEYS = %s


def described(m):
    return [[f, type(getattr(m, f)).__name__, getattr(m, f)] for f in FIELDS]


out = {"kinds": [type(metrics.BY_ID).__name__, type(metrics.BY_NAME).__name__]}
# looked up one by one first (what a node does), then listed
out["looked_up"] = [described(metrics.BY_NAME[n]) for n in ("la90_db", "uptime_s",
                                                            "band_8000hz_db")]
out["same_object"] = metrics.BY_NAME["uptime_s"] is metrics.BY_ID[0xE0]
out["by_id"] = [[k, described(m)] for k, m in metrics.BY_ID.items()]
out["by_name"] = [[k, described(m)] for k, m in metrics.BY_NAME.items()]
out["len"] = [len(metrics.BY_ID), len(metrics.BY_NAME)]
out["id_of"] = [metrics.id_of(n) for n in metrics.BY_NAME]
out["absent"] = [[repr(k), k in metrics.BY_ID, k in metrics.BY_NAME, metrics.BY_ID.get(k),
                  metrics.BY_NAME.get(k)] for k in NOT_KEYS]
try:
    metrics.BY_NAME["no_such_metric"]
    out["key_error"] = False
except KeyError:
    out["key_error"] = True
print(json.dumps(out))
"""


def test_micropython_makes_the_same_registry_on_lookup(micropython):
    out = micropython.run_json(_MP_PROGRAM % (repr(FIELDS), repr(NOT_KEYS)))
    expected = json.loads(json.dumps(cpython_registry()))
    assert out["kinds"] == ["Registry", "Registry"]
    assert out["by_id"] == expected["by_id"]
    assert out["by_name"] == expected["by_name"]
    assert out["looked_up"] == [json.loads(json.dumps(described(metrics.BY_NAME[n])))
                                for n in ("la90_db", "uptime_s", "band_8000hz_db")]
    assert out["same_object"] is True and out["key_error"] is True
    assert out["len"] == [len(metrics.BY_ID), len(metrics.BY_NAME)]
    assert out["id_of"] == [m.id for m in metrics.BY_NAME.values()]
    assert out["absent"] == [[repr(k), False, False, None, None] for k in NOT_KEYS]
