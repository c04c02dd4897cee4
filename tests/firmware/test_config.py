"""The node config: what enrolment writes, what the node accepts, and what it says when it
does not (each problem names its key and the fix, ESPHome style), on CPython and under
MicroPython; secrets never shown.  Safe mode itself is in test_node.py."""

import json

import pytest

from firmware import config, hal

KEY = bytes(range(0x40, 0x60))
PASSWORD = "s3cret-wifi-pass"

GOOD = {
    "version": 1,
    "node_id": "0d0a0001",
    "kind": "crowd",
    "zone": "spoorzone",
    "site": "lamppost-17",
    "broker": {"host": "10.42.0.1", "tls": {"ca": "ca.pem", "cert": "node.crt",
                                              "key": "node.pem"}},
    "wifi": {"ssid": "dordt-spz", "password": PASSWORD},
    "time": {"ntp_host": "10.42.0.1"},
    "sampler": {"window_s": 60},
}
FILES = {"node.key": KEY.hex() + "\n", "ca.pem": "CA", "node.crt": "CRT", "node.pem": "PEM"}

# (name, changes to GOOD: {dotted key: value, or None to delete}, files to drop,
#  substrings every expected problem message must contain (one list per problem))
CASES = [
    ("unknown key", {"brokr": {"host": "x"}}, [],
     [["[brokr] is an invalid option for [config]", "Did you mean [broker]?"]]),
    ("kind typo", {"kind": "crowed"}, [], [["[kind]", "'crowed'", "Did you mean [crowd]?"]]),
    ("node id", {"node_id": "0D0A01"}, [], [["[node_id]", "8 lower-case hex digits"]]),
    ("zone with a slash", {"zone": "spoor/zone"}, [], [["[zone]", "topic level"]]),
    ("missing site", {"site": None}, [], [["[site] is required"]]),
    ("port", {"broker.port": 70000}, [], [["[broker.port]", "1..65535", "70000"]]),
    ("port type", {"broker.port": "1883"}, [], [["[broker.port]", "integer"]]),
    ("no broker", {"broker": None}, [], [["[broker] is required"]]),
    ("broker host", {"broker.host": ""}, [], [["[broker.host] is required"]]),
    ("tls without ca", {"broker.tls.ca": None}, [], [["[broker.tls.ca] is required"]]),
    ("cert without key", {"broker.tls.key": None}, [], [["[broker.tls] cert and key"]]),
    ("tls file missing", {}, ["node.crt"], [["[broker.tls.cert]", "'node.crt'",
                                              "not found on flash"]]),
    ("tls option typo", {"broker.tls.cafile": "x"}, [],
     [["[cafile] is an invalid option for [broker.tls]", "Did you mean [ca]?"]]),
    ("client id too long", {"broker.client_id": "x" * 24}, [], [["[broker.client_id]",
                                                                 "1 to 23"]]),
    ("key file missing", {}, ["node.key"], [["[key_file]", "'node.key'", "not found",
                                              "re-enrol"]]),
    ("short password", {"wifi.password": "short"}, [], [["[wifi.password]", "8 to 63"]]),
    ("retry order", {"intervals": {"retry_min_s": 60, "retry_max_s": 10}}, [],
     [["[intervals.retry_max_s]", "below retry_min_s"]]),
    ("sampler type", {"sampler": [1]}, [], [["[sampler] must be an object"]]),
    ("version", {"version": 2}, [], [["[version]", "not supported"]]),
    ("two problems", {"kind": "fog", "broker.port": 0}, [],
     [["[kind]", "'fog'"], ["[broker.port]"]]),
]


def _apply(doc, changes):
    doc = json.loads(json.dumps(doc))
    for dotted, value in changes.items():
        parts = dotted.split(".")
        node = doc
        for part in parts[:-1]:
            node = node[part]
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return doc


def _flash(tmp_path, doc, drop=()):
    flash = hal.Flash(str(tmp_path))
    for name, content in FILES.items():
        if name not in drop:
            flash.write(name, content.encode())
    flash.write("config.json", json.dumps(doc).encode())
    return flash


def test_a_good_config_loads_with_defaults_filled(tmp_path):
    cfg = config.load(_flash(tmp_path, GOOD))
    assert cfg.node_id == 0x0D0A0001 and cfg.node == "0d0a0001"
    assert cfg.kind == "crowd" and cfg.kind_id == 3
    assert cfg.key == KEY and cfg.key_id == 0
    assert cfg.broker["port"] == 8883  # TLS default
    assert cfg.broker["client_id"] == "dordt-0d0a0001"
    assert cfg.broker["keepalive_s"] == 60 and cfg.broker["ring_bytes"] == 8192
    assert cfg.intervals == {"status_every": 10, "counter_reserve": 1000, "retry_min_s": 2,
                             "retry_max_s": 300}
    assert cfg.time == {"ntp_host": "10.42.0.1", "sync_s": 3600}
    assert cfg.board == {}


def test_plain_mqtt_defaults_to_port_1883_and_a_raw_key_file_works(tmp_path):
    doc = _apply(GOOD, {"broker.tls": None, "wifi": None})
    flash = _flash(tmp_path, doc)
    flash.write("node.key", KEY)  # 32 raw bytes
    cfg = config.load(flash)
    assert cfg.broker["port"] == 1883 and cfg.broker["tls"] is None
    assert cfg.key == KEY and cfg.wifi is None


@pytest.mark.parametrize("name,changes,drop,expected", CASES, ids=[c[0] for c in CASES])
def test_each_problem_names_the_key_and_the_fix(tmp_path, name, changes, drop, expected):
    flash = _flash(tmp_path, _apply(GOOD, changes), drop)
    with pytest.raises(config.ConfigError) as info:
        config.load(flash)
    problems = info.value.problems
    assert len(problems) == len(expected), problems
    for problem, parts in zip(problems, expected):
        for part in parts:
            assert part in problem, (part, problem)


def test_a_missing_or_broken_file_says_what_to_do(tmp_path):
    flash = hal.Flash(str(tmp_path))
    with pytest.raises(config.ConfigError, match=r"\[config.json\] not found.*enrolment"):
        config.load(flash)
    flash.write("config.json", b"{not json")
    with pytest.raises(config.ConfigError, match=r"\[config.json\] is not valid JSON"):
        config.load(flash)


def test_secrets_never_appear_in_describe_repr_or_errors(tmp_path):
    cfg = config.load(_flash(tmp_path, GOOD))
    shown = cfg.describe() + repr(cfg)
    assert PASSWORD not in shown and KEY.hex() not in shown
    assert "password (set, not shown)" in shown and "secret, not shown" in shown
    assert "dordt-spz" in shown and "0d0a0001" in shown and "ca.pem" in shown
    # a wrong key file and a wrong password are reported without their content
    flash = _flash(tmp_path, _apply(GOOD, {"wifi.password": "x" * 70}))
    flash.write("node.key", b"not-a-key-" + KEY.hex().encode()[:40])
    with pytest.raises(config.ConfigError) as info:
        config.load(flash)
    text = str(info.value)
    assert "x" * 70 not in text and KEY.hex()[:40] not in text
    assert "[key_file]" in text and "[wifi.password]" in text


# -- the same cases under MicroPython ------------------------------------------------------

_MP = r"""
import json
from firmware import config

GOOD = json.loads(%r)
FILES = json.loads(%r)
CASES = json.loads(%r)


def apply(doc, changes):
    doc = json.loads(json.dumps(doc))
    for dotted in changes:
        value = changes[dotted]
        parts = dotted.split(".")
        node = doc
        for part in parts[:-1]:
            node = node[part]
        if value is None:
            if parts[-1] in node:
                del node[parts[-1]]
        else:
            node[parts[-1]] = value
    return doc


def check(doc, drop):
    files = {}
    for name in FILES:
        if name not in drop:
            files[name] = FILES[name].encode()
    try:
        cfg = config.parse(doc, files.get, lambda name: name in files)
    except config.ConfigError as exc:
        return exc.problems
    return {"node": cfg.node, "port": cfg.broker["port"], "describe": cfg.describe()}


out = {"good": check(GOOD, []), "cases": []}
for name, changes, drop, expected in CASES:
    out["cases"].append(check(apply(GOOD, changes), drop))
print(json.dumps(out))
"""


@pytest.mark.micropython
def test_config_validation_under_micropython(micropython):
    code = _MP % (json.dumps(GOOD), json.dumps(FILES), json.dumps(CASES))
    out = micropython.run_json(code)
    assert out["good"]["node"] == "0d0a0001" and out["good"]["port"] == 8883
    assert PASSWORD not in out["good"]["describe"]
    for (name, _, _, expected), problems in zip(CASES, out["cases"]):
        assert isinstance(problems, list), (name, problems)
        assert len(problems) == len(expected), (name, problems)
        for problem, parts in zip(problems, expected):
            for part in parts:
                assert part in problem, (name, part, problem)
