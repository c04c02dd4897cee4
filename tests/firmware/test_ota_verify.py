"""The node's release checks (firmware/ota_verify.py, docs/ota.md §2), issue 12's acceptance
under real MicroPython: a release built and signed by `dordt fleet release build`
(`cryptography`) is accepted, and refused for one changed byte in any file, a wrong key, a
downgrade (unless signed as a rollback), a truncated download and a replayed old manifest.
The same checks run under CPython (the host's `release verify` uses them), and the module
is loaded for a check only: nothing of it stays in a node's heap afterwards."""

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware import ota_verify
from fleet import release as releases
from tests.fixtures.ota import firmware_tree

RUNNING = (0, 1, 0)  # the node's firmware in these tests (firmware/node.py's today)
NODE = {"kind": "air", "board": "pico-w", "version": RUNNING, "serial": 4}
SLOT = "b"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A release key, a second (wrong) key, and four releases signed by the first:
    new (0.2.0, serial 5), older (0.0.9, serial 6), rollback (0.0.9 signed as a rollback,
    serial 7) and replayed (0.3.0, serial 4: at the node's last installed serial)."""
    root = tmp_path_factory.mktemp("releases")
    key_path, pub_path = releases.init_release_key(root / "key")
    _, wrong_pub = releases.init_release_key(root / "wrong-key")
    src = {v: firmware_tree(root / ("src-" + ".".join(map(str, v))), v)
           for v in ((0, 2, 0), (0, 0, 9), (0, 3, 0))}
    built = {}
    for name, serial, version, extra in (("replayed", 4, (0, 3, 0), {}),
                                         ("new", 5, (0, 2, 0), {}),
                                         ("older", 6, (0, 0, 9), {}),
                                         ("rollback", 7, (0, 0, 9), {"rollback": True})):
        built[name] = releases.build_release(key_path, serial, ["air", "noise"],
                                             root / name, source=src[version],
                                             cache_dir=root / "cache", **extra)
    return {"key": key_path, "pub": pub_path, "wrong_pub": wrong_pub, **built}


def _node_files(release, slot=SLOT, pub=None):
    """The node's flash after downloading `release`: /release.pub, /ota/release.json and
    .sig, and every file of the release staged in /fw/<slot>/."""
    files = {"/release.pub": (pub or release.root.parent / "key" / "release.pub").read_bytes(),
             "/ota/release.json": release.json_bytes,
             "/ota/release.sig": (release.root / "release.sig").read_bytes()}
    for entry in release.files:
        files[f"/fw/{slot}/{entry['path']}"] = (release.files_dir / entry["path"]).read_bytes()
    return files


# The node side, as firmware/ota.py runs it: everything read from flash, the verifier
# loaded for the job and dropped after.  `cases` are (name, release.json bytes edit,
# release.sig edit, node fields) run through check_release; `staged` edits one staged file.
_PRELUDE = """
import json, sys, gc
from firmware import use_module, drop_module
def _read(p):
    with open(p, "rb") as f:
        return f.read()
def _write(p, data):
    with open(p, "wb") as f:
        f.write(data)
NODE = {"kind": "air", "board": "pico-w", "version": (0, 1, 0), "serial": 4}
"""


def _check_code(node_overrides=None, json_edit=None, sig_edit=None):
    return _PRELUDE + f"""
NODE.update({node_overrides or {}!r})
v = use_module("firmware.ota_verify")
rel = _read("/ota/release.json")
sig = _read("/ota/release.sig")
{json_edit or ""}
{sig_edit or ""}
try:
    doc = v.check_release(rel, sig, v.read_release_pub("/"), NODE)
    out = {{"ok": True, "serial": doc["serial"], "version": doc["version"],
            "manifest": v.check_staged("{SLOT}", doc, "/")}}
except v.ReleaseRefused as e:
    out = {{"ok": False, "reason": e.reason, "message": str(e)}}
drop_module("firmware.ota_verify")
drop_module("firmware.slots")
out["loaded"] = sorted(m for m in sys.modules if m.startswith("firmware."))
print(json.dumps(out))
"""


def test_a_signed_release_is_accepted_and_nothing_stays_loaded(micropython, fleet):
    new = fleet["new"]
    out = micropython.run_json(_check_code(), files=_node_files(new), timeout_s=120)
    assert out["ok"], out
    assert (out["serial"], out["version"]) == (5, "0.2.0")
    assert out["manifest"] == new.manifest_sha256
    # verifier, Ed25519, SHA-512 and slots all given back; firmware.hal (via slots) is
    # one every node has loaded in service anyway
    assert out["loaded"] == ["firmware.hal"]


def test_one_changed_byte_in_any_file_is_refused(micropython, fleet):
    """Every file of the release in turn, one byte flipped after download (in its middle),
    under one interpreter: check_staged names a hash mismatch each time, and the untouched
    staging passes.  A changed byte of release.json or release.sig fails the signature."""
    new = fleet["new"]
    code = _PRELUDE + f"""
v = use_module("firmware.ota_verify")
doc = v.check_release(_read("/ota/release.json"), _read("/ota/release.sig"),
                      v.read_release_pub("/"), NODE)
results = {{}}
for entry in doc["files"]:
    path = "/fw/{SLOT}/" + entry["path"]
    data = _read(path)
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x01
    _write(path, bad)
    try:
        v.check_staged("{SLOT}", doc, "/")
        results[entry["path"]] = "accepted"
    except v.ReleaseRefused as e:
        results[entry["path"]] = e.reason
    _write(path, data)
results["(untouched)"] = v.check_staged("{SLOT}", doc, "/")
rel = _read("/ota/release.json")
sig = _read("/ota/release.sig")
for name, r, s in (("release.json", rel[:100] + bytes([rel[100] ^ 1]) + rel[101:], sig),
                   ("release.sig", rel, sig[:10] + (b"0" if sig[10:11] != b"0" else b"1")
                    + sig[11:])):
    try:
        v.check_release(r, s, v.read_release_pub("/"), NODE)
        results[name] = "accepted"
    except v.ReleaseRefused as e:
        results[name] = e.reason
print(json.dumps(results))
"""
    out = micropython.run_json(code, files=_node_files(new), timeout_s=180)
    assert out.pop("(untouched)") == new.manifest_sha256
    assert out.pop("release.json") == "bad_signature"
    assert out.pop("release.sig") == "bad_signature"
    assert set(out) == {f["path"] for f in new.files} and len(out) > 20
    assert set(out.values()) == {"bad_hash"}, out


def test_a_wrong_key_is_refused(micropython, fleet):
    out = micropython.run_json(_check_code(), timeout_s=120,
                               files=_node_files(fleet["new"], pub=fleet["wrong_pub"]))
    assert (out["ok"], out["reason"]) == (False, "bad_signature")


def test_a_downgrade_is_refused_unless_signed_as_a_rollback(micropython, fleet):
    older = micropython.run_json(_check_code(), files=_node_files(fleet["older"]),
                                 timeout_s=120)
    assert (older["ok"], older["reason"]) == (False, "downgrade")
    assert "0.0.9" in older["message"] and "0.1.0" in older["message"]
    same = micropython.run_json(_check_code({"version": (0, 2, 0)}),
                                files=_node_files(fleet["new"]), timeout_s=120)
    assert (same["ok"], same["reason"]) == (False, "downgrade")  # not newer: refused too
    back = micropython.run_json(_check_code(), files=_node_files(fleet["rollback"]),
                                timeout_s=120)
    assert back["ok"] and back["version"] == "0.0.9", back


def test_a_truncated_download_is_refused(micropython, fleet):
    new = fleet["new"]
    biggest = max(new.files, key=lambda f: f["size"])
    files = _node_files(new)
    path = f"/fw/{SLOT}/{biggest['path']}"
    files[path] = files[path][: biggest["size"] // 2]
    out = micropython.run_json(_check_code(), files=files, timeout_s=120)
    assert (out["ok"], out["reason"]) == (False, "wrong_size")
    assert biggest["path"] in out["message"]
    # a file never downloaded at all
    files = _node_files(new)
    del files[f"/fw/{SLOT}/MANIFEST.json"]
    out = micropython.run_json(_check_code(), files=files, timeout_s=120)
    assert (out["ok"], out["reason"]) == (False, "missing_file")
    # release.json itself cut short: its signature no longer verifies
    out = micropython.run_json(_check_code(json_edit="rel = rel[:len(rel) - 40]"),
                               files=_node_files(new), timeout_s=120)
    assert (out["ok"], out["reason"]) == (False, "bad_signature")


def test_a_replayed_old_manifest_is_refused(micropython, fleet):
    # serial 4 is the node's last installed one: refused although its version is newer
    out = micropython.run_json(_check_code(), files=_node_files(fleet["replayed"]),
                               timeout_s=120)
    assert (out["ok"], out["reason"]) == (False, "replayed")
    # after installing serial 5, serial 5 offered again is a replay too
    out = micropython.run_json(_check_code({"serial": 5, "version": (0, 2, 0)}),
                               files=_node_files(fleet["new"]), timeout_s=120)
    assert (out["ok"], out["reason"]) == (False, "replayed")


def test_kind_hardware_and_minimum_firmware_under_micropython(micropython, fleet):
    files = _node_files(fleet["new"])
    crowd = micropython.run_json(_check_code({"kind": "crowd"}), files=files, timeout_s=120)
    assert (crowd["ok"], crowd["reason"]) == (False, "wrong_kind")
    other = micropython.run_json(_check_code({"board": "an-unknown-board"}), files=files,
                                 timeout_s=120)
    assert (other["ok"], other["reason"]) == (False, "wrong_hardware")
    nokey = micropython.run_json(_check_code(), timeout_s=120,
                                 files=dict(files, **{"/release.pub": b"not a key\n"}))
    assert (nokey["ok"], nokey["reason"]) == (False, "no_key")


# -- the same rules under CPython, with documents signed here --------------------------------


def _signed_doc(key: Ed25519PrivateKey, doc: dict) -> tuple[bytes, str]:
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return data, key.sign(data).hex()


def _base_doc(**changes) -> dict:
    doc = {"format": "dordt-release", "format_version": 1, "version": "0.2.0", "serial": 9,
           "rollback": False, "kinds": ["air"], "arch": None, "min_firmware": "0.0.0",
           "hardware": ["pico-w"], "created": 0, "size": 3,
           "files": [{"path": "MANIFEST.json", "sha256": "0" * 64, "size": 3}]}
    doc.update(changes)
    return doc


@pytest.mark.parametrize("changes, reason", [
    ({}, None),
    ({"format": "other"}, "unknown_format"),
    ({"format_version": 2}, "unknown_format"),
    ({"min_firmware": "0.1.1"}, "too_old"),
    ({"min_firmware": "0.1.0"}, None),
    ({"serial": True}, "malformed"),
    ({"serial": 0}, "malformed"),
    ({"version": "0.2"}, "malformed"),
    ({"kinds": "air"}, "malformed"),
    ({"size": 4}, "malformed"),
    ({"files": []}, "malformed"),
    ({"files": [{"path": "../x", "sha256": "0" * 64, "size": 3}]}, "malformed"),
    ({"rollback": "yes"}, "malformed"),
])
def test_document_checks_under_cpython(changes, reason):
    key = Ed25519PrivateKey.generate()
    pub = releases.parse_public_key(releases.public_key_text(key.public_key()), "test")
    data, sig = _signed_doc(key, _base_doc(**changes))
    node = dict(NODE, serial=0)
    if reason is None:
        assert ota_verify.check_release(data, sig, pub, node)["serial"] == 9
    else:
        with pytest.raises(ota_verify.ReleaseRefused) as refused:
            ota_verify.check_release(data, sig, pub, node)
        assert refused.value.reason == reason


def test_an_oversized_release_json_is_refused_before_it_is_hashed():
    key = Ed25519PrivateKey.generate()
    pub = releases.parse_public_key(releases.public_key_text(key.public_key()), "test")
    doc = _base_doc(padding="x" * ota_verify.MAX_RELEASE_JSON)
    data, sig = _signed_doc(key, doc)  # signed, so only the size can refuse it
    with pytest.raises(ota_verify.ReleaseRefused) as refused:
        ota_verify.check_release(data, sig, pub, dict(NODE, serial=0))
    assert refused.value.reason == "too_large"


def test_unsigned_json_is_refused_before_it_is_read():
    key = Ed25519PrivateKey.generate()
    pub = releases.parse_public_key(releases.public_key_text(key.public_key()), "test")
    for data, sig in ((b"not json", key.sign(b"x").hex()), (b"{}", "zz" * 64), (b"{}", "ab")):
        with pytest.raises(ota_verify.ReleaseRefused) as refused:
            ota_verify.check_release(data, sig, pub, NODE)
        assert refused.value.reason == "bad_signature"
    data, sig = _signed_doc(key, [1, 2])  # signed, but not an object
    with pytest.raises(ota_verify.ReleaseRefused) as refused:
        ota_verify.check_release(data, sig, pub, NODE)
    assert refused.value.reason == "malformed"
