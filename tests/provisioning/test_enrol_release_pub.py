"""`dordt provision enrol --release-pub FILE` (issue 12): the fleet's release public key is
put on the node as /release.pub (64 hex digits, outside the firmware slots), where the
node's OTA verifier reads it; a file that is not a release key is refused before anything
is written to the board; enrolling again adds it to a board enrolled without it."""

import json
import shutil

import pytest

from dordt.cli import main
from fleet.bundle import init_enrol_key
from fleet.release import init_release_key
from provisioning.link import BoardLink

READ_KEY = ("import json\nfrom binascii import hexlify\nfrom firmware import ota_verify\n"
            "print(json.dumps(hexlify(ota_verify.read_release_pub('/')).decode()))\n")


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A technician's work dir holding the fleet's public enrolment key."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    init_enrol_key(tmp_path / "fleet")
    (tmp_path / "work").mkdir()
    shutil.copy(tmp_path / "fleet" / "enrol-x25519.pub", tmp_path / "work")
    return tmp_path / "work"


def _dordt(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_enrol_writes_the_release_key_the_node_verifier_reads(virtual_board, work, tmp_path,
                                                              capsys):
    _, pub = init_release_key(tmp_path / "release-key")
    port = virtual_board.port
    w = ["--work-dir", str(work)]
    assert _dordt(capsys, "provision", "install", "--port", port, *w)[0] == 0
    enrol = ["provision", "enrol", "--port", port, "--zone", "spoorzone", "--site", "spz-02",
             "--kind", "air", *w]

    (tmp_path / "bad.pub").write_text("not a key\n")
    code, _, err = _dordt(capsys, *enrol, "--release-pub", str(tmp_path / "bad.pub"))
    assert code == 2 and "--release-pub" in err and "not a release public key" in err
    assert not (virtual_board.flash_dir / "node.key").exists()  # nothing written
    assert not (virtual_board.flash_dir / "release.pub").exists()

    # enrolled without it first, then again with it: the "enrolled already" path adds it
    assert _dordt(capsys, *enrol)[0] == 0
    assert not (virtual_board.flash_dir / "release.pub").exists()
    code, out, err = _dordt(capsys, *enrol, "--release-pub", str(pub), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["already"] and doc["release_pub"]
    assert (virtual_board.flash_dir / "release.pub").read_text() == pub.read_text()
    with BoardLink(port) as link:
        assert link.exec_json(READ_KEY, "reading the release key") == pub.read_text().strip()
