"""Enrolment bundles (fleet/bundle.py) and `dordt fleet import`: keys sealed to the fleet's
X25519 key, readable only with its private half; any change to an entry refuses the whole
bundle; the bundle file holds no node key in any encoding."""

import base64
import json
import secrets

import pytest

from dordt.cli import main
from fleet import bundle as bundles
from fleet.keyring import Keyring


def entry_fields(node="00010011", zone="spoorzone", site="spz-01", kind="air", key=None):
    return {"node": node, "kind": kind, "zone": zone, "site": site,
            "board": "esp32-s3-devkitc-1", "key_id": 0, "enrolled_at": "2026-12-04T10:00:00Z",
            "fingerprint": bundles.fingerprint(key)}


@pytest.fixture
def fleet_key(tmp_path):
    private, public = bundles.init_enrol_key(tmp_path / "fleet")
    return private, public


def make_bundle(tmp_path, public_path, nodes):
    recipient = bundles.load_public_key(public_path)
    b = bundles.Bundle.load_or_new(tmp_path / "b.json", recipient)
    keys = {}
    for node, site in nodes:
        key = secrets.token_bytes(32)
        keys[node] = key
        b.entries.append(bundles.seal(entry_fields(node, site=site, key=key), key, recipient))
    b.save(tmp_path / "b.json")
    return tmp_path / "b.json", keys


def key_forms(key):
    return [key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key),
            base64.urlsafe_b64encode(key)]


def test_sealed_keys_open_only_with_the_fleet_key(tmp_path, fleet_key):
    private, public = fleet_key
    path, keys = make_bundle(tmp_path, public, [("00010011", "spz-01"), ("00010021", "spz-02")])
    data = path.read_bytes()
    for key in keys.values():
        assert not any(form in data for form in key_forms(key))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    opened = bundles.open_bundle(path, bundles.load_private_key(private))
    assert {e["node"]: k for e, k in opened} == keys


@pytest.mark.parametrize("field, value", [
    ("zone", "maasterras"), ("site", "spz-03"), ("node", "00010031"), ("kind", "noise"),
    ("fingerprint", "00" * 8), ("sealed", None), ("epk", None)])
def test_a_tampered_entry_refuses_the_whole_bundle(tmp_path, fleet_key, field, value):
    private, public = fleet_key
    path, _ = make_bundle(tmp_path, public, [("00010011", "spz-01"), ("00010021", "spz-02")])
    doc = json.loads(path.read_text())
    entry = doc["entries"][1]
    if value is None:  # flip one bit of the ciphertext or the ephemeral key
        raw = bytearray.fromhex(entry[field])
        raw[0] ^= 1
        value = raw.hex()
    entry[field] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(bundles.BundleError, match=r"entries\[1\]"):
        bundles.open_bundle(path, bundles.load_private_key(private))


def test_another_fleets_key_cannot_open_it(tmp_path, fleet_key):
    _, public = fleet_key
    path, _ = make_bundle(tmp_path, public, [("00010011", "spz-01")])
    other, _ = bundles.init_enrol_key(tmp_path / "other")
    with pytest.raises(bundles.BundleError, match="not to this one"):
        bundles.open_bundle(path, bundles.load_private_key(other))


def test_fleet_import_adds_nodes_once_and_refuses_tampering(tmp_path, fleet_key, capsys):
    private, public = fleet_key
    path, keys = make_bundle(tmp_path, public, [("00010011", "spz-01"), ("00010021", "spz-02")])
    ring = tmp_path / "keyring.json"
    argv = ["fleet", "import", str(path), "--keyring", str(ring), "--enrol-key", str(private)]
    assert main(argv) == 0
    assert "imported 2 node(s)" in capsys.readouterr().out
    loaded = Keyring.load(ring)
    assert loaded.get(0x00010011).keys[0] == keys["00010011"]
    assert main(argv) == 0  # the same bundle again: nothing new, nothing refused
    assert "0 node(s)" in capsys.readouterr().out and len(Keyring.load(ring)) == 2

    doc = json.loads(path.read_text())
    doc["entries"][0]["zone"] = "maasterras"
    path.write_text(json.dumps(doc))
    before = ring.read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "changed after enrolment" in err and "Traceback" not in err
    assert ring.read_bytes() == before


def test_fleet_import_refuses_a_node_with_another_key(tmp_path, fleet_key, capsys):
    private, public = fleet_key
    ring = tmp_path / "keyring.json"
    assert main(["fleet", "enrol", "--keyring", str(ring), "--node", "00010011", "--kind",
                 "air", "--zone", "spoorzone", "--site", "spz-01"]) == 0
    path, _ = make_bundle(tmp_path, public, [("00010021", "spz-02"), ("00010011", "spz-01")])
    before = ring.read_bytes()
    assert main(["fleet", "import", str(path), "--keyring", str(ring), "--enrol-key",
                 str(private)]) == 2
    assert "with another key" in capsys.readouterr().err
    assert ring.read_bytes() == before  # all or nothing


def test_enrol_key_init_never_overwrites(tmp_path, capsys):
    assert main(["fleet", "enrol-key", "init", "--dir", str(tmp_path)]) == 0
    pem = (tmp_path / bundles.PRIVATE_KEY_NAME).read_bytes()
    assert main(["fleet", "enrol-key", "init", "--dir", str(tmp_path)]) == 2
    assert (tmp_path / bundles.PRIVATE_KEY_NAME).read_bytes() == pem
    assert oct((tmp_path / bundles.PRIVATE_KEY_NAME).stat().st_mode & 0o777) == "0o600"
    out = capsys.readouterr().out
    assert "PRIVATE" not in out
