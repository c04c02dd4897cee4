"""Signed firmware releases on the host (fleet/release.py, `dordt fleet release key init |
build | verify`, docs/ota.md §1): the directory's format, the key kept private and never
printed, serials never signed twice, operator mistakes as one-line errors with exit 2, and
`verify` (exit 1) finding a changed, missing or extra file, a wrong key, a forged
manifest and a directory that is no release."""

import hashlib
import json
import stat

import pytest
from cryptography.hazmat.primitives import serialization

from dordt.cli import main
from fleet import release as releases
from provisioning.build import build_firmware
from tests.fixtures.ota import firmware_tree


@pytest.fixture(scope="module")
def build_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("build-cache")


@pytest.fixture(autouse=True)
def _private_build_cache(build_cache, monkeypatch):
    """Compiled modules cached for this module's tests only, not in the user's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(build_cache))


@pytest.fixture
def key(tmp_path):
    return releases.init_release_key(tmp_path / "key")


def _key_material(private_path):
    """Every form of the private key a leak could take."""
    key = releases.load_signing_key(private_path)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    pem = private_path.read_text()
    body = "".join(pem.strip().splitlines()[1:-1])
    return [raw.hex(), raw.hex().upper(), body, body[10:40]]


def test_key_init_makes_a_private_key_0600_and_a_public_hex_line(tmp_path, capsys):
    assert main(["fleet", "release", "key", "init", "--dir", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    private, public = tmp_path / "k" / "release.key", tmp_path / "k" / "release.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    text = public.read_text()
    assert len(text) == 65 and text.endswith("\n") and bytes.fromhex(text.strip())
    assert releases.load_public_key(public) == bytes.fromhex(text.strip())
    for secret in _key_material(private):
        assert secret not in out
    assert main(["fleet", "release", "key", "init", "--dir", str(tmp_path / "k")]) == 2
    assert "holds a release key already" in capsys.readouterr().err
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_build_writes_the_release_directory_of_the_contract(tmp_path, key, capsys):
    private, public = key
    source = firmware_tree(tmp_path / "src", (0, 4, 2))
    code = main(["fleet", "release", "build", "--key", str(private), "--serial", "3",
                 "--kinds", "air", "noise", "--hardware", "pico-w", "--min-firmware",
                 "0.1.0", "--source", str(source), "--out", str(tmp_path / "r3"), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out)
    assert (summary["serial"], summary["version"], summary["rollback"]) == (3, "0.4.2", False)
    for secret in _key_material(private):
        assert secret not in out

    root = tmp_path / "r3"
    data = (root / "release.json").read_bytes()
    doc = json.loads(data)
    assert data == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert set(doc) == {"format", "format_version", "version", "serial", "rollback", "kinds",
                        "arch", "min_firmware", "hardware", "files", "size", "created"}
    assert (doc["format"], doc["format_version"]) == ("dordt-release", 1)
    assert doc["kinds"] == ["air", "noise"] and doc["hardware"] == ["pico-w"]
    assert doc["min_firmware"] == "0.1.0" and doc["arch"] is None
    sig = (root / "release.sig").read_text()
    assert len(sig) == 129 and sig.endswith("\n")
    pub = releases.load_public_key(public)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    Ed25519PublicKey.from_public_bytes(pub).verify(bytes.fromhex(sig), data)

    # files/: the slot manifest and every compiled module, as provisioning's build makes them
    build = build_firmware(source=source, cache_dir=tmp_path / "cache")
    assert doc["files"][0]["path"] == "MANIFEST.json"
    assert (root / "files" / "MANIFEST.json").read_bytes() == build.manifest_bytes()
    assert [f["path"] for f in doc["files"][1:]] == [f.path for f in build.files]
    for entry in doc["files"]:
        blob = (root / "files" / entry["path"]).read_bytes()
        assert (len(blob), hashlib.sha256(blob).hexdigest()) == (entry["size"],
                                                                 entry["sha256"])
    assert doc["size"] == sum(f["size"] for f in doc["files"])
    assert json.loads(build.manifest_bytes())["version"] == "0.4.2"

    assert main(["fleet", "release", "verify", str(root), "--pub", str(public)]) == 0
    assert "check out" in capsys.readouterr().out
    loaded = releases.load_release(root)
    assert loaded.serial == 3 and loaded.manifest_sha256 == build.manifest_sha256
    assert loaded.file_path("firmware/node.mpy") == root / "files" / "firmware" / "node.mpy"
    with pytest.raises(releases.ReleaseError):
        loaded.file_path("../release.key")


def test_a_serial_is_never_signed_twice(tmp_path, key, capsys):
    private, _ = key
    args = ["fleet", "release", "build", "--key", str(private), "--kinds", "air"]
    assert main([*args, "--serial", "5", "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    for serial in ("5", "4"):
        assert main([*args, "--serial", serial, "--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err
        assert "signed serial 5 already" in err and "use 6 or more" in err
        assert not (tmp_path / "b").exists()
    assert main([*args, "--serial", "6", "--out", str(tmp_path / "b"), "--rollback"]) == 0
    assert releases.load_release(tmp_path / "b").rollback


@pytest.mark.parametrize("extra, message", [
    (["--serial", "0"], "1 or more"),
    (["--serial", "1", "--kinds", "lamp"], "node kinds are"),
    (["--serial", "1", "--hardware", "esp8266"], "board profiles are"),
    (["--serial", "1", "--min-firmware", "1.2"], "M.m.p"),
    (["--serial", "1", "--arch", "z80"], "unknown architecture"),
    (["--serial", "1", "--source", "/nonexistent/firmware"], "no firmware modules"),
])
def test_build_mistakes_are_one_line_errors(tmp_path, key, capsys, extra, message):
    private, _ = key
    kinds = [] if "--kinds" in extra else ["--kinds", "air"]
    argv = ["fleet", "release", "build", "--key", str(private), "--out", str(tmp_path / "r"),
            *kinds, *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_build_refuses_a_missing_or_wrong_key_and_a_used_out_dir(tmp_path, key, capsys):
    private, public = key
    base = ["fleet", "release", "build", "--serial", "1", "--kinds", "air"]
    assert main([*base, "--key", str(tmp_path / "none.key"), "--out", str(tmp_path / "r")]) == 2
    assert "no release key there" in capsys.readouterr().err
    assert main([*base, "--key", str(public), "--out", str(tmp_path / "r")]) == 2
    assert "not a PEM Ed25519 private key" in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    assert main([*base, "--key", str(private), "--out", str(tmp_path / "used")]) == 2
    assert "not an empty directory" in capsys.readouterr().err


@pytest.fixture
def built(tmp_path, key):
    private, public = key
    release = releases.build_release(private, 1, ["air"], tmp_path / "r")
    return release, public


def _verify(release, public, capsys):
    code = main(["fleet", "release", "verify", str(release.root), "--pub", str(public)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_verify_finds_a_changed_byte_in_any_file(built, capsys):
    release, public = built
    for entry in release.files[:3] + release.files[-2:]:
        path = release.files_dir / entry["path"]
        data = path.read_bytes()
        path.write_bytes(data[:5] + bytes([data[5] ^ 1]) + data[6:])
        code, err = _verify(release, public, capsys)
        assert code == 1 and "SHA-256" in err and entry["path"] in err
        path.write_bytes(data)
    data = (release.root / "release.json").read_bytes()
    (release.root / "release.json").write_bytes(data.replace(b'"serial":1', b'"serial":2'))
    code, err = _verify(release, public, capsys)
    assert code == 1 and "signature does not verify" in err


def test_verify_finds_missing_extra_and_truncated_files(built, capsys):
    release, public = built
    node = release.files_dir / "firmware" / "node.mpy"
    data = node.read_bytes()
    node.write_bytes(data[:-1])
    code, err = _verify(release, public, capsys)
    assert code == 1 and "firmware/node.mpy has" in err
    node.unlink()
    code, err = _verify(release, public, capsys)
    assert code == 1 and "firmware/node.mpy is missing" in err
    node.write_bytes(data)
    (release.files_dir / "firmware" / "extra.mpy").write_bytes(b"x")
    code, err = _verify(release, public, capsys)
    assert code == 1 and "extra.mpy" in err and "does not name" in err


def test_verify_refuses_a_wrong_key_and_a_non_release(built, tmp_path, capsys):
    release, _ = built
    _, other = releases.init_release_key(tmp_path / "other")
    code, err = _verify(release, other, capsys)
    assert code == 1 and "signature does not verify" in err
    assert main(["fleet", "release", "verify", str(tmp_path), "--pub", str(other)]) == 1
    assert "not a release directory" in capsys.readouterr().err
    (tmp_path / "bad.pub").write_text("12ab\n")
    assert main(["fleet", "release", "verify", str(release.root), "--pub",
                 str(tmp_path / "bad.pub")]) == 2
    assert "not a release public key" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"[" * 20000, b"\xff\xfe", b"", b"{\"format\": 1}"])
def test_load_release_refuses_a_release_json_that_is_no_release(built, content):
    release, _ = built
    (release.root / "release.json").write_bytes(content)
    with pytest.raises(releases.ReleaseError, match="release.json: "):
        releases.load_release(release.root)


def test_verify_refuses_a_signed_manifest_that_names_other_files(built, key, capsys):
    """A release whose slot MANIFEST.json names a file release.json does not sign: the
    node's boot check would then accept bytes nobody signed.  Signed with the right key, so
    only the manifest rule (ota_verify.check_files) can catch it."""
    release, public = built
    private, _ = key
    manifest = json.loads((release.files_dir / "MANIFEST.json").read_bytes())
    manifest["files"].append({"path": "firmware/evil.mpy", "sha256": "0" * 64, "size": 1})
    blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    (release.files_dir / "MANIFEST.json").write_bytes(blob)
    doc = dict(release.doc)
    doc["files"] = [dict(f) for f in doc["files"]]
    doc["files"][0].update(sha256=hashlib.sha256(blob).hexdigest(), size=len(blob))
    doc["size"] = sum(f["size"] for f in doc["files"])
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    (release.root / "release.json").write_bytes(data)
    sig = releases.load_signing_key(private).sign(data).hex()
    (release.root / "release.sig").write_text(sig + "\n")
    code, err = _verify(release, public, capsys)
    assert code == 1 and "wrong_manifest" in err


def test_build_makes_no_release_json_a_node_would_refuse_as_too_large(tmp_path, key,
                                                                       monkeypatch, capsys):
    # The limit lowered below today's ~4 KB release.json: the same path a firmware tree of
    # some 250 modules would take with the real 32 KB limit.
    from firmware import ota_verify

    monkeypatch.setattr(ota_verify, "MAX_RELEASE_JSON", 1000)
    private, _ = key
    assert main(["fleet", "release", "build", "--key", str(private), "--serial", "1",
                 "--kinds", "air", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "would not be valid" in err and "more than the 1000" in err
    assert not (tmp_path / "r").exists()
    assert not (private.parent / releases.SERIAL_NAME).exists()  # no serial used up


def test_no_release_key_material_in_any_output_or_release_file(tmp_path, capsys):
    """Every release command, succeeding and failing: neither what it prints nor any file of
    the release directory holds the private key in any form."""
    assert main(["fleet", "release", "key", "init", "--dir", str(tmp_path / "k")]) == 0
    private, public = tmp_path / "k" / "release.key", tmp_path / "k" / "release.pub"
    build = ["fleet", "release", "build", "--key", str(private), "--kinds", "air"]
    runs = [
        [*build, "--serial", "1", "--out", str(tmp_path / "r")],
        [*build, "--serial", "1", "--out", str(tmp_path / "r2")],  # serial used
        [*build, "--serial", "2", "--out", str(tmp_path / "r"), "--json"],  # out not empty
        ["fleet", "release", "build", "--key", str(public), "--serial", "3", "--kinds", "air",
         "--out", str(tmp_path / "r3")],  # the public half given as the key
        ["fleet", "release", "verify", str(tmp_path / "r"), "--pub", str(public), "--json"],
        ["fleet", "release", "verify", str(tmp_path / "r"), "--pub", str(private)],
        ["fleet", "release", "key", "init", "--dir", str(tmp_path / "k")],
    ]
    printed = ""
    for argv in runs:
        main(argv)
        out, err = capsys.readouterr()
        printed += out + err
    written = b"".join(p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file())
    for secret in _key_material(private):
        assert secret not in printed
        assert secret.encode() not in written
    raw = bytes.fromhex(_key_material(private)[0])
    assert raw not in written
    assert "not a release public key" in printed  # verify given release.key: refused, quietly


def test_build_refuses_when_the_serial_cannot_be_recorded(tmp_path, key, capsys, monkeypatch):
    """The key's directory on media that takes no writes (here: a full disk, as root can
    write anywhere): nothing is signed, and a directory in the serial's place is named."""
    import errno

    def full_disk(path, data, mode, group=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    private, _ = key
    build = ["fleet", "release", "build", "--key", str(private), "--serial", "1", "--kinds",
             "air", "--out", str(tmp_path / "r")]
    with monkeypatch.context() as patch:
        patch.setattr(releases, "write_file_atomic", full_disk)
        assert main(build) == 2
    err = capsys.readouterr().err
    assert "cannot record serial 1" in err and "nothing was signed" in err
    assert not (tmp_path / "r").exists()
    (private.parent / releases.SERIAL_NAME).mkdir()
    assert main(build) == 2
    assert "cannot read the last serial" in capsys.readouterr().err
