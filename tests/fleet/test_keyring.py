"""The keyring file: round trip, permissions, clear errors, and keys that never leak."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fleet.keyring import Keyring, KeyringError


def test_enrol_save_load_round_trip(tmp_path):
    ring = Keyring()
    a = ring.enrol(0x0001_0011, "air", "spoorzone", "spz-01")
    ring.enrol(0x0002_0013, "crowd", "maasterras", "mst-01")
    ring.revoke(0x0002_0013)
    path = tmp_path / "ring" / "keyring.json"
    ring.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = Keyring.load(path)
    assert len(back) == 2
    e = back.get(0x0001_0011)
    assert (e.node, e.kind, e.zone, e.site, e.revoked) == ("00010011", "air", "spoorzone",
                                                          "spz-01", False)
    assert e.keys == a.keys and len(e.keys[0]) == 32
    assert back.get(0x0002_0013).revoked


def test_keys_are_random_and_never_in_repr(tmp_path):
    ring = Keyring()
    a = ring.enrol(1, "air", "z", "s")
    b = ring.enrol(2, "air", "z", "s")
    assert a.keys[0] != b.keys[0]
    assert a.keys[0].hex() not in repr(a) and "keys" not in repr(a)


@pytest.mark.parametrize("doc, words", [
    ("not json", "not a readable keyring"),
    ({"format": "other"}, "not a dordt keyring"),
    ({"format": "dordt-keyring", "version": 9, "nodes": []}, "version 9"),
    ({"format": "dordt-keyring", "version": 1, "nodes": {}}, '"nodes" must be a list'),
    ({"format": "dordt-keyring", "version": 1, "nodes": [
        {"node": "XYZ", "kind": "air", "zone": "z", "site": "s", "keys": {"0": "00" * 32}}]},
     "nodes[0]: \"node\" must be 8 lower-case hex digits"),
    ({"format": "dordt-keyring", "version": 1, "nodes": [
        {"node": "00000001", "kind": "radar", "zone": "z", "site": "s",
         "keys": {"0": "00" * 32}}]}, "kind 'radar'"),
    # found by `make fuzz` (keyring target): an object as the kind was a TypeError
    ({"format": "dordt-keyring", "version": 1, "nodes": [
        {"node": "00000001", "kind": {"0": "00" * 32}, "zone": "z", "site": "s",
         "keys": {"0": "00" * 32}}]}, "\"kind\" must be one of"),
    ({"format": "dordt-keyring", "version": 1, "nodes": [
        {"node": "00000001", "kind": "air", "zone": "z", "site": "s",
         "keys": {"0": "ab" * 31 + "zz"}}]}, "key '0' is not a key id with a hex key"),
    ({"format": "dordt-keyring", "version": 1, "nodes": [
        {"node": "00000001", "kind": "air", "zone": "z", "site": "s",
         "keys": {"0": "ab" * 16}}]}, "32 bytes"),
    # a zone or site is a tag in every line: a line break would split the line
    ({"format": "dordt-keyring", "version": 1, "nodes": [
        {"node": "00000001", "kind": "air", "zone": "spoor\nzone", "site": "s",
         "keys": {"0": "00" * 32}}]}, "\"zone\" 'spoor\\nzone' holds the control character"),
    ({"format": "dordt-keyring", "version": 1, "nodes": [
        {"node": "00000001", "kind": "air", "zone": "z", "site": "s" * 65,
         "keys": {"0": "00" * 32}}]}, "\"site\" is 65 characters long; the most is 64"),
])
def test_broken_keyrings_give_errors_that_name_the_file_and_entry(tmp_path, doc, words):
    path = tmp_path / "keyring.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(KeyringError) as err:
        Keyring.load(path)
    message = str(err.value)
    assert str(path) in message and words in message
    assert "ab" * 16 not in message  # a (near-)secret is never echoed


def test_missing_keyring_says_how_to_make_one(tmp_path):
    with pytest.raises(KeyringError, match="not found"):
        Keyring.load(tmp_path / "nope.json")


def test_enrolment_refuses_zone_and_site_names_that_break_a_line():
    ring = Keyring()
    with pytest.raises(KeyringError, match="control character"):
        ring.enrol(5, "noise", "maas\tterras", "s")
    ring.enrol(6, "noise", "Maasterras – kade", "plein 1")  # any printable text is fine
    assert len(ring) == 1


def test_duplicate_node_is_refused():
    ring = Keyring()
    ring.enrol(5, "noise", "z", "s")
    with pytest.raises(KeyringError, match="already"):
        ring.enrol(5, "noise", "z", "s")


def test_a_node_listed_twice_names_the_file_and_the_entry(tmp_path):
    # Found by fuzz/fuzz_loaders.py keyring: the message named neither.
    data = (Path(__file__).resolve().parents[1] / "fuzz" / "regressions" / "keyring" /
            "node-listed-twice.json").read_bytes()
    path = tmp_path / "k.json"
    path.write_bytes(data)
    with pytest.raises(KeyringError, match=r"k\.json: nodes\[\d\]: node 0d0a0002 is listed "
                                           "twice"):
        Keyring.load(path)
