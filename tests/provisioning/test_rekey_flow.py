"""A key rotation end to end on the virtual board (real MicroPython behind a pty), through
the command line: enrol, import into the fleet registry, `dordt fleet registry rotate-key`,
`dordt provision rekey` (the board opens the rekey file with its current key and switches
itself), `--finish`.  The laptop never holds the new key in the clear."""

from __future__ import annotations

import os
import shutil

from dordt.cli import main
from fleet.bundle import init_enrol_key
from fleet.registry import Registry
from provisioning.link import BoardLink


def dordt(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def board_key(port) -> dict:
    with BoardLink(port) as link:
        return link.exec_json(
            "import json\nfrom firmware import config, hal, protocol\n"
            "c = config.load(hal.Flash('/'))\n"
            "fp = protocol.hmac_sha256(c.key, b'dordt key fingerprint')[:8]\n"
            "print(json.dumps({'key_id': c.key_id, 'key_file': c.key_file, "
            "'fingerprint': ''.join('%02x' % b for b in fp)}))")


def test_a_rotated_key_reaches_the_board_sealed_and_the_board_switches(
        virtual_board, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    private, public = init_enrol_key(tmp_path / "fleet")
    shutil.copy(public, work / "enrol-x25519.pub")
    master = os.urandom(32)
    monkeypatch.setenv("DORDT_FLEET_MASTER_KEY", master.hex())
    monkeypatch.setenv("DORDT_FLEET_REGISTRY", str(tmp_path / "fleet.sqlite"))
    port, w = virtual_board.port, ["--work-dir", str(work)]

    assert dordt(capsys, "provision", "install", "--port", port, *w)[0] == 0
    code, out, err = dordt(capsys, "provision", "enrol", "--port", port, "--zone",
                           "spoorzone", "--site", "spz-02", "--kind", "air", *w)
    assert code == 0, err
    assert dordt(capsys, "fleet", "registry", "init")[0] == 0
    code, out, err = dordt(capsys, "fleet", "registry", "import",
                           str(work / "enrolments.bundle.json"), "--enrol-key", str(private))
    assert code == 0 and "imported 1 node(s): 00010021" in out, err
    assert board_key(port)["key_id"] == 0

    rekey_file = tmp_path / "carry" / "rekey.json"
    code, out, err = dordt(capsys, "fleet", "registry", "rotate-key", "00010021",
                           "--rekey-out", str(rekey_file))
    assert code == 0, err
    with Registry.open(tmp_path / "fleet.sqlite", master) as reg:
        new_key = reg.node_key("00010021", 1)
        keys = {k["key_id"]: k for k in reg.node("00010021")["keys"]}
    assert new_key.hex() not in rekey_file.read_text()

    code, out, err = dordt(capsys, "provision", "rekey", "--port", port, str(rekey_file), *w)
    assert code == 0, err
    assert "node 00010021 now signs with key 1" in out
    assert board_key(port) == {"key_id": 1, "key_file": "node-1.key",
                               "fingerprint": keys[1]["fingerprint"]}
    assert not (virtual_board.flash_dir / "node.key").exists()

    # the same file again: the board holds key 1 now, and refuses it without a change
    code, out, err = dordt(capsys, "provision", "rekey", "--port", port, str(rekey_file), *w)
    assert code == 2 and "replaces key 0, this node holds key 1" in err
    assert board_key(port)["key_id"] == 1

    assert dordt(capsys, "fleet", "registry", "rotate-key", "00010021", "--finish")[0] == 0
    with Registry.open(tmp_path / "fleet.sqlite", master) as reg:
        assert reg.keyring().get(0x00010021).keys == {1: new_key}
