"""The fleet registry (fleet/registry.py), gateways' signed keyrings (fleet/keyring_file.py)
and rekey files (fleet/rekey.py): migrations up and a newer schema refused, node keys
sealed at rest, a wrong master key in one line, bundle import all or nothing, retire,
revoke, key rotation, online backup and restore, and every refusal of a keyring file."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import sqlite3

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dordt.cli import main
from fleet import bundle as bundles
from fleet import keyring_file, rekey
from fleet.registry import Registry, RegistryError, migrate, migrations
from tests.fleet.enrolment import make_bundle

AIR_SPZ1, NOISE_SPZ1, AIR_SPZ2, AIR_MST1 = "00010011", "00010012", "00010021", "00020011"


def key_forms(key: bytes) -> list[bytes]:
    """Every encoding a key could leak in."""
    return [key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key),
            base64.b64encode(key).rstrip(b"="), base64.urlsafe_b64encode(key).rstrip(b"=")]


def files_bytes(path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


@pytest.fixture
def master_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def reg(tmp_path, master_key):
    r = Registry.open(tmp_path / "fleet.sqlite", master_key, create=True)
    r.sync_zones()
    yield r
    r.close()


@pytest.fixture
def gateway_keys(tmp_path):
    private, public = keyring_file.init_gateway_key(tmp_path / "gw")
    return (keyring_file.load_private(private, X25519PrivateKey), public.read_text())


# -- migrations ---------------------------------------------------------------------------


def test_a_new_registry_has_every_migration_wal_and_foreign_keys(reg):
    assert reg.db.execute("PRAGMA user_version").fetchone()[0] == migrations()[-1][0]
    assert reg.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert reg.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert {z["zone"] for z in reg.zones()} == {"spoorzone", "maasterras", "spuiboulevard"}
    assert oct((reg.path.stat().st_mode) & 0o777) == "0o600"


def test_an_older_schema_is_upgraded_in_order_and_keeps_its_rows(tmp_path, master_key):
    # a registry made when only 0001 existed
    old_dir = tmp_path / "old_migrations"
    old_dir.mkdir()
    first = migrations()[0][1]
    shutil.copy(first, old_dir / first.name)
    db = sqlite3.connect(tmp_path / "old.sqlite")
    assert migrate(db, "old", old_dir) == [1]
    db.execute("INSERT INTO zones(zone, number, name) VALUES ('spoorzone', 1, 'Spoorzone')")
    db.execute("INSERT INTO gateways(name, zone, added_at) VALUES ('gw-a', 'spoorzone', 'x')")
    db.commit()
    db.close()
    with Registry.open(tmp_path / "old.sqlite", master_key) as r:
        assert r.db.execute("PRAGMA user_version").fetchone()[0] == migrations()[-1][0]
        assert r.gateway("gw-a")["zone"] == "spoorzone"


def test_a_newer_schema_is_refused_untouched(tmp_path, master_key, capsys):
    path = tmp_path / "new.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE future (x)")
    db.execute("PRAGMA user_version = 9999")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(RegistryError, match="newer version of dordt"):
        Registry.open(path, master_key)
    assert path.read_bytes() == before
    assert main(["fleet", "registry", "ls", "--registry", str(path)]) == 2
    err = capsys.readouterr().err
    assert "newer version of dordt" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_failing_migration_leaves_the_schema_where_it_was(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "0001_a.sql").write_text("CREATE TABLE a (x);")
    (d / "0002_b.sql").write_text("CREATE TABLE b (x); INSERT INTO nowhere VALUES (1);")
    db = sqlite3.connect(tmp_path / "r.sqlite")
    with pytest.raises(RegistryError, match="0002_b.sql failed"):
        migrate(db, "r", d)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'b'").fetchone() is None


# -- keys at rest -------------------------------------------------------------------------


def test_node_keys_are_sealed_at_rest_and_bound_to_their_row(reg, tmp_path):
    keys = {n: secrets.token_bytes(32) for n in (AIR_SPZ1, NOISE_SPZ1, AIR_SPZ2)}
    for node, key in keys.items():
        site = "spz-01" if node != AIR_SPZ2 else "spz-02"
        kind = "noise" if node == NOISE_SPZ1 else "air"
        reg.add_node(node, kind, "spoorzone", site, key)
    reg.db.execute("PRAGMA wal_checkpoint(FULL)")
    stored = files_bytes(reg.path)
    for key in keys.values():
        assert not any(form in stored for form in key_forms(key))
    assert not any(form in stored for form in key_forms(reg._master_key))
    ring = reg.keyring()
    assert {e.node: e.keys[0] for e in ring} == keys
    # a sealed key moved to another node's row does not open there
    a = reg.db.execute("SELECT nonce, sealed FROM node_keys WHERE node = ?",
                       (AIR_SPZ1,)).fetchone()
    with reg.db:
        reg.db.execute("UPDATE node_keys SET nonce = ?, sealed = ? WHERE node = ?",
                       (a[0], a[1], AIR_SPZ2))
    with pytest.raises(RegistryError, match=f"sealed key 0 of node {AIR_SPZ2} does not open"):
        reg.keyring()


def test_a_wrong_master_key_is_one_clear_line(tmp_path, reg, capsys, monkeypatch):
    reg.add_node(AIR_SPZ1, "air", "spoorzone", "spz-01", secrets.token_bytes(32))
    wrong = os.urandom(32).hex()
    monkeypatch.setenv("DORDT_FLEET_MASTER_KEY", wrong)
    code = main(["fleet", "registry", "rotate-key", AIR_SPZ1, "--registry", str(reg.path),
                 "--rekey-out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"dordt: {reg.path}: wrong master key: it does not open this registry; give the key "
        "the registry was made with"]
    assert wrong not in err
    monkeypatch.setenv("DORDT_FLEET_MASTER_KEY", "not hex")
    assert main(["fleet", "registry", "ls", "--registry", str(reg.path)]) == 2
    err = capsys.readouterr().err
    assert "64 hex digits" in err and "not hex" not in err


def test_commands_that_need_keys_say_how_to_give_the_master_key(reg, tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.delenv("DORDT_FLEET_MASTER_KEY", raising=False)
    monkeypatch.delenv("DORDT_FLEET_MASTER_KEY_FILE", raising=False)
    assert main(["fleet", "registry", "rotate-key", AIR_SPZ1, "--registry", str(reg.path),
                 "--rekey-out", str(tmp_path / "r.json")]) == 2
    assert "--master-key FILE" in capsys.readouterr().err


# -- nodes --------------------------------------------------------------------------------


def test_import_takes_a_bundle_once_and_refuses_a_conflict_whole(tmp_path, reg, capsys):
    path, private, keys = make_bundle(tmp_path, [(AIR_SPZ1, "air", "spoorzone", "spz-01"),
                                                 (AIR_MST1, "air", "maasterras", "mst-01")])
    opened = bundles.open_bundle(path, bundles.load_private_key(private))
    assert reg.import_bundle(opened) == ([AIR_SPZ1, AIR_MST1], [])
    assert reg.import_bundle(opened) == ([], [AIR_SPZ1, AIR_MST1])
    assert reg.node(AIR_SPZ1)["hardware"] == "esp32-s3-devkitc-1"
    assert {e.node: e.keys[0] for e in reg.keyring()} == keys
    # a new board under a known node id: refused, and nothing of the bundle is taken
    path2, private2, _ = make_bundle(tmp_path / "b2", [(AIR_SPZ2, "air", "spoorzone", "spz-02"),
                                                       (AIR_SPZ1, "air", "spoorzone", "spz-01")])
    opened2 = bundles.open_bundle(path2, bundles.load_private_key(private2))
    with pytest.raises(RegistryError, match="enrolled once.*Nothing was imported"):
        reg.import_bundle(opened2)
    assert [n["node"] for n in reg.nodes()] == [AIR_SPZ1, AIR_MST1]


def test_import_refuses_a_place_not_in_the_zones_file_whole(tmp_path, reg):
    path, private, _ = make_bundle(tmp_path, [(AIR_SPZ1, "air", "spoorzone", "spz-01"),
                                              (AIR_SPZ2, "air", "spoorzone", "spz-09")])
    opened = bundles.open_bundle(path, bundles.load_private_key(private))
    with pytest.raises(RegistryError, match="spz-09"):
        reg.import_bundle(opened)
    assert reg.nodes() == []


def test_listings_filter_and_never_show_keys(reg, capsys):
    key = secrets.token_bytes(32)
    reg.add_node(AIR_SPZ1, "air", "spoorzone", "spz-01", key)
    reg.add_node(AIR_MST1, "air", "maasterras", "mst-01", secrets.token_bytes(32))
    reg.set_state(AIR_MST1, "retired")
    assert [n["node"] for n in reg.nodes(zone="spoorzone")] == [AIR_SPZ1]
    assert [n["node"] for n in reg.nodes(state="retired")] == [AIR_MST1]
    node = reg.node(AIR_SPZ1)
    assert node["key_ids"] == [0] and node["state"] == "active"
    assert main(["fleet", "registry", "ls", "--json", "--registry", str(reg.path)]) == 0
    out = capsys.readouterr().out
    listed = json.loads(out)
    assert [n["node"] for n in listed] == [AIR_SPZ1, AIR_MST1]
    assert set(listed[0]) == {"node", "kind", "zone", "site", "hardware", "firmware", "state",
                              "key_ids", "last_seen", "gateway", "enrolled_at"}
    assert main(["fleet", "registry", "show", AIR_SPZ1, "--json", "--registry",
                 str(reg.path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["keys"][0]["fingerprint"] == bundles.fingerprint(key)
    assert not any(form.decode() in out + json.dumps(shown) for form in key_forms(key)[1:])


def test_revoked_is_final_and_retired_nodes_leave_keyrings(reg):
    reg.add_node(AIR_SPZ1, "air", "spoorzone", "spz-01", secrets.token_bytes(32))
    reg.add_node(AIR_SPZ2, "air", "spoorzone", "spz-02", secrets.token_bytes(32))
    reg.set_state(AIR_SPZ1, "revoked")
    reg.set_state(AIR_SPZ2, "retired")
    with pytest.raises(RegistryError, match="revoked node is not brought back"):
        reg.set_state(AIR_SPZ1, "active")
    ring = reg.keyring()
    assert [(e.node, e.revoked) for e in ring] == [(AIR_SPZ1, True)]


def test_rotation_keeps_both_keys_until_finished_and_the_rekey_file_carries_the_new_one(reg):
    old = secrets.token_bytes(32)
    reg.add_node(AIR_SPZ1, "air", "spoorzone", "spz-01", old)
    new_id, new = reg.rotate_key(AIR_SPZ1)
    assert new_id == 1
    assert {k: v for k, v in reg.keyring().get(0x00010011).keys.items()} == {0: old, 1: new}
    with pytest.raises(RegistryError, match="rotation to key 1 already"):
        reg.rotate_key(AIR_SPZ1)
    doc = rekey.wrap(AIR_SPZ1, 0, old, new_id, new)
    assert not any(form.decode() in json.dumps(doc) for form in key_forms(new)[1:])
    assert rekey.unwrap(doc, old) == (1, new)
    with pytest.raises(rekey.RekeyError, match="does not open"):
        rekey.unwrap(doc, secrets.token_bytes(32))
    tampered = dict(doc, key_id=2)
    with pytest.raises(rekey.RekeyError, match="does not open"):
        rekey.unwrap(tampered, old)
    assert reg.finish_rotation(AIR_SPZ1) == 1
    assert reg.keyring().get(0x00010011).keys == {1: new}
    assert [k["state"] for k in reg.node(AIR_SPZ1)["keys"]] == ["current"]
    with pytest.raises(RegistryError, match="not in a key rotation"):
        reg.finish_rotation(AIR_SPZ1)


def test_backup_is_a_consistent_copy_that_restores(reg, tmp_path, master_key):
    reg.add_node(AIR_SPZ1, "air", "spoorzone", "spz-01", secrets.token_bytes(32))
    dest = reg.backup(tmp_path / "backup.sqlite")
    assert oct(dest.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(RegistryError, match="exists already"):
        reg.backup(dest)
    reg.add_node(AIR_SPZ2, "air", "spoorzone", "spz-02", secrets.token_bytes(32))
    reg.close()
    # restore (docs/fleet.md): copy the backup over the registry, drop its -wal and -shm
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"fleet.sqlite{suffix}").unlink(missing_ok=True)
    shutil.copy(dest, tmp_path / "fleet.sqlite")
    with Registry.open(tmp_path / "fleet.sqlite", master_key) as back:
        assert [n["node"] for n in back.nodes()] == [AIR_SPZ1]
        assert len(back.keyring()) == 1
    reg.db = sqlite3.connect(":memory:")  # the fixture closes it


# -- signed keyrings ----------------------------------------------------------------------


def serve_two_zones(reg, gateway_pub):
    reg.add_node(AIR_SPZ1, "air", "spoorzone", "spz-01", secrets.token_bytes(32))
    reg.add_node(AIR_MST1, "air", "maasterras", "mst-01", secrets.token_bytes(32))
    reg.add_gateway("gw-spz", "spoorzone", gateway_pub)


def test_a_gateway_keyring_holds_its_zone_and_opens_only_for_it(reg, gateway_keys):
    private, public = gateway_keys
    serve_two_zones(reg, public)
    signer = Ed25519PrivateKey.generate()
    data, serial = reg.issue_keyring("gw-spz", signer)
    assert serial == 1 and reg.gateway("gw-spz")["keyring_serial"] == 1
    for key in (e.keys[0] for e in reg.keyring()):
        assert not any(form in data for form in key_forms(key))
    got = keyring_file.open_signed(data, "k", signer.public_key(), "gw-spz", private)
    assert [e.node for e in got.keyring] == [AIR_SPZ1] and got.serial == 1
    # an explicit assignment brings a node of another zone
    reg.assign(AIR_MST1, "gw-spz")
    data2, serial2 = reg.issue_keyring("gw-spz", signer)
    got2 = keyring_file.open_signed(data2, "k", signer.public_key(), "gw-spz", private, 1)
    assert serial2 == 2 and [e.node for e in got2.keyring] == [AIR_SPZ1, AIR_MST1]


@pytest.mark.parametrize("case, reason", [
    ("wrong_signer", "signer"), ("other_gateway", "gateway"), ("older", "older"),
    ("same_serial", "older"), ("sealed_to_another", "decrypt"), ("flipped_byte", "signer"),
    ("serial_edited", "signer"), ("not_json", "format"), ("plain", "format")])
def test_every_bad_keyring_file_is_refused_with_its_reason(reg, gateway_keys, case, reason):
    private, public = gateway_keys
    serve_two_zones(reg, public)
    signer = Ed25519PrivateKey.generate()
    data, _ = reg.issue_keyring("gw-spz", signer)
    after = 0
    if case == "wrong_signer":
        data, _ = reg.issue_keyring("gw-spz", Ed25519PrivateKey.generate())
    elif case == "other_gateway":
        reg.add_gateway("gw-other", "spoorzone", public)
        data, _ = reg.issue_keyring("gw-other", signer)
    elif case == "older":
        reg.issue_keyring("gw-spz", signer)
        after = 2
    elif case == "same_serial":
        after = 1
    elif case == "sealed_to_another":
        other = X25519PrivateKey.generate()
        _, other_pub = keyring_file.init_gateway_key(reg.path.parent / "other")
        reg.add_gateway("gw-2", "spoorzone", other_pub.read_text())
        data, _ = reg.issue_keyring("gw-2", signer)
        private = other  # the file names gw-2; this key is not gw-2's
        gateway = "gw-2"
    elif case == "flipped_byte":
        doc = json.loads(data)
        sealed = bytearray.fromhex(doc["sealed"])
        sealed[5] ^= 1
        doc["sealed"] = sealed.hex()
        data = json.dumps(doc).encode()
    elif case == "serial_edited":
        doc = json.loads(data)
        doc["serial"] = 99
        data = json.dumps(doc).encode()
    elif case == "not_json":
        data = data[:40]
    elif case == "plain":
        data = json.dumps(reg.keyring("gw-spz").to_doc()).encode()
    gateway = "gw-2" if case == "sealed_to_another" else "gw-spz"
    with pytest.raises(keyring_file.KeyringFileError) as exc:
        keyring_file.open_signed(data, "k.dgk", signer.public_key(), gateway, private, after)
    assert exc.value.reason == reason
    assert len(str(exc.value).splitlines()) == 1


def test_serials_grow_per_gateway_and_keyring_commands_work(reg, tmp_path, capsys,
                                                            monkeypatch, gateway_keys):
    _, public = gateway_keys
    monkeypatch.setenv("DORDT_FLEET_MASTER_KEY", reg._master_key.hex())
    serve_two_zones(reg, public)
    r = ["--registry", str(reg.path)]
    assert main(["fleet", "keyring", "signer", "init", "--dir", str(tmp_path / "signer")]) == 0
    signer = tmp_path / "signer" / "keyring-signer.pem"
    assert oct(signer.stat().st_mode & 0o777) == "0o600"
    for n in (1, 2):
        assert main(["fleet", "keyring", "issue", "--gateway", "gw-spz", "--out",
                     str(tmp_path / f"k{n}.dgk"), "--signer-key", str(signer), *r]) == 0
        assert f"keyring serial {n} for gateway gw-spz: 1 node(s)" in capsys.readouterr().out
    assert main(["fleet", "gateway", "ls", "--json", *r]) == 0
    gws = json.loads(capsys.readouterr().out)
    assert [(g["name"], g["keyring_serial"]) for g in gws] == [("gw-spz", 2)]
    # after a restore the gateway may have taken a higher serial than the registry knows
    assert main(["fleet", "keyring", "issue", "--gateway", "gw-spz", "--out",
                 str(tmp_path / "k9.dgk"), "--signer-key", str(signer), "--above-serial", "8",
                 *r]) == 0
    assert "keyring serial 9 for gateway gw-spz" in capsys.readouterr().out
    assert main(["fleet", "keyring", "issue", "--gateway", "gw-none", "--out",
                 str(tmp_path / "x.dgk"), "--signer-key", str(signer), *r]) == 2
    assert "gateway gw-none is not in the registry" in capsys.readouterr().err
    assert main(["fleet", "gateway", "add", "gw-spz", "--zone", "nowhere", *r]) == 2
    assert "zone 'nowhere' is not in the registry" in capsys.readouterr().err


def test_a_gateway_without_a_keyring_key_gets_one_later(reg, tmp_path, capsys, gateway_keys):
    private, public = gateway_keys
    assert main(["fleet", "gateway", "add", "gw-late", "--zone", "spoorzone", "--hardware",
                 "raspberrypi4-64", "--registry", str(reg.path)]) == 0
    assert "give it a keyring key before issuing keyrings" in capsys.readouterr().out
    assert reg.gateway("gw-late")["hardware"] == "raspberrypi4-64"
    signer = Ed25519PrivateKey.generate()
    with pytest.raises(RegistryError, match="has no keyring key.*gateway set-key"):
        reg.issue_keyring("gw-late", signer)
    (tmp_path / "bad.pub").write_text("dordt-keyring-ed25519 " + "00" * 32)
    r = ["--registry", str(reg.path)]
    assert main(["fleet", "gateway", "set-key", "gw-late", "--keyring-pub",
                 str(tmp_path / "bad.pub"), *r]) == 2
    assert "not a dordt-gateway-x25519 public key" in capsys.readouterr().err
    assert main(["fleet", "gateway", "set-key", "gw-late", "--keyring-pub",
                 str(tmp_path / "gw" / "keyring-x25519.pub"), *r]) == 0
    data, serial = reg.issue_keyring("gw-late", signer)
    assert keyring_file.open_signed(data, "k", signer.public_key(), "gw-late", private).serial == 1


def test_last_seen_only_moves_forward(reg):
    reg.add_node(AIR_SPZ1, "air", "spoorzone", "spz-01", secrets.token_bytes(32))
    reg.add_gateway("gw-a", "spoorzone")
    reg.note_seen(AIR_SPZ1, "2026-12-04T10:00:00Z", firmware="0.2.0")
    reg.note_seen(AIR_SPZ1, "2026-12-04T09:00:00Z")
    reg.note_gateway_seen("gw-a", "2026-12-04T10:00:00Z", software="v5")
    reg.note_gateway_seen("gw-a", "2026-12-03T10:00:00Z")
    node, gw = reg.node(AIR_SPZ1), reg.gateway("gw-a")
    assert (node["last_seen"], node["firmware"]) == ("2026-12-04T10:00:00Z", "0.2.0")
    assert (gw["last_seen"], gw["software"]) == ("2026-12-04T10:00:00Z", "v5")


def test_a_plain_keyring_moves_into_the_registry(reg, tmp_path, capsys, monkeypatch):
    from fleet.keyring import Keyring, NodeEntry

    k = [secrets.token_bytes(32) for _ in range(4)]
    ring = Keyring([NodeEntry(0x00010011, "air", "spoorzone", "spz-01", {0: k[0]}),
                    NodeEntry(0x00010021, "air", "spoorzone", "spz-02", {0: k[1], 1: k[2]}),
                    NodeEntry(0x00020011, "air", "maasterras", "mst-01", {0: k[3]}, True)])
    ring.save(tmp_path / "keyring.json")
    monkeypatch.setenv("DORDT_FLEET_MASTER_KEY", reg._master_key.hex())
    r = ["--registry", str(reg.path)]
    assert main(["fleet", "registry", "import", str(tmp_path / "keyring.json"), *r]) == 0
    assert "imported 3 node(s) from the keyring" in capsys.readouterr().out
    assert main(["fleet", "registry", "import", str(tmp_path / "keyring.json"), *r]) == 0
    assert "imported 0 node(s) from the keyring" in capsys.readouterr().out
    back = reg.keyring()
    assert {e.node: (e.keys, e.revoked) for e in back} == {
        e.node: (e.keys, e.revoked) for e in ring}
    assert [k["state"] for k in reg.node("00010021")["keys"]] == ["current", "next"]
    assert reg.finish_rotation("00010021") == 1
    # a keyring with a place the zones file lacks is refused whole
    Keyring([NodeEntry(0x00010031, "air", "spoorzone", "spz-03", {0: k[0]}),
             NodeEntry(0x00010041, "air", "spoorzone", "lamppost-17", {0: k[1]})]).save(
        tmp_path / "other.json")
    assert main(["fleet", "registry", "import", str(tmp_path / "other.json"), *r]) == 2
    assert "lamppost-17" in capsys.readouterr().err
    assert "00010031" not in [n["node"] for n in reg.nodes()]
    # a bundle still needs the enrolment key
    (tmp_path / "b.json").write_text("{}")
    assert main(["fleet", "registry", "import", str(tmp_path / "b.json"), *r]) == 2
    assert "give --enrol-key" in capsys.readouterr().err


def test_rotate_key_during_a_rotation_writes_the_same_key_again(reg, tmp_path, capsys,
                                                                monkeypatch):
    old = secrets.token_bytes(32)
    reg.add_node(AIR_SPZ1, "air", "spoorzone", "spz-01", old)
    monkeypatch.setenv("DORDT_FLEET_MASTER_KEY", reg._master_key.hex())
    r = ["--registry", str(reg.path)]
    assert main(["fleet", "registry", "rotate-key", AIR_SPZ1, "--rekey-out",
                 str(tmp_path / "a.json"), *r]) == 0
    assert main(["fleet", "registry", "rotate-key", AIR_SPZ1, "--rekey-out",
                 str(tmp_path / "a.json"), *r]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["fleet", "registry", "rotate-key", AIR_SPZ1, "--rekey-out",
                 str(tmp_path / "b.json"), *r]) == 0
    assert "in a rotation to key 1 already: wrote its rekey file" in capsys.readouterr().out
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["nonce"] != b["nonce"]
    assert rekey.unwrap(a, old) == rekey.unwrap(b, old) == (1, reg.node_key(AIR_SPZ1, 1))
    assert oct((tmp_path / "b.json").stat().st_mode & 0o777) == "0o600"


def test_a_new_master_key_reseals_every_key(reg, tmp_path, capsys, monkeypatch):
    keys = {n: secrets.token_bytes(32) for n in (AIR_SPZ1, AIR_SPZ2)}
    for node, key in keys.items():
        reg.add_node(node, "air", "spoorzone", "spz-01" if node == AIR_SPZ1 else "spz-02", key)
    old_master = reg._master_key
    reg.close()
    monkeypatch.setenv("DORDT_FLEET_MASTER_KEY", old_master.hex())
    r = ["--registry", str(reg.path)]
    assert main(["fleet", "registry", "master-key", str(tmp_path / "new.key"), *r]) == 0
    assert "re-sealed 2 node key(s)" in capsys.readouterr().out
    new_master = bytes.fromhex((tmp_path / "new.key").read_text())
    assert oct((tmp_path / "new.key").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(RegistryError, match="wrong master key"):
        Registry.open(reg.path, old_master)
    with Registry.open(reg.path, new_master) as again:
        assert {e.node: e.keys[0] for e in again.keyring()} == keys
    assert main(["fleet", "registry", "master-key", str(tmp_path / "new.key"), *r]) == 2
    reg.db = sqlite3.connect(":memory:")  # the fixture closes it
