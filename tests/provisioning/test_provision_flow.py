"""The technician's flow on the virtual board (real MicroPython behind a pty), through the
`dordt provision` command line as a technician types it: install, enrol, self-test, label,
run; and every failure the issue names leaves the board bootable and says what happened."""

import base64
import json
import shutil
import subprocess
import sys

import pytest

from dordt.cli import main
from firmware import slots
from fleet.bundle import init_enrol_key
from provisioning.build import build_firmware
from provisioning.identify import identify
from provisioning.install import InstallError, install
from provisioning.link import BoardLink, LinkError
from provisioning.virtual_board import VirtualBoard

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A technician's work dir holding only the fleet's public enrolment key."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    d = tmp_path / "work"
    init_enrol_key(tmp_path / "fleet")
    d.mkdir()
    shutil.copy(tmp_path / "fleet" / "enrol-x25519.pub", d / "enrol-x25519.pub")
    return d


def dordt(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def board_state(port):
    with BoardLink(port) as link:
        return link.exec_json(
            "import sys, json\nfrom firmware import node, slots\n"
            "print(json.dumps({'path': sys.path[0], 'node': node.__file__, "
            "'active': slots.active_slot(), 'version': node.FIRMWARE_VERSION}))")


def variant(tmp_path, version, pad_bytes=0):
    """The firmware tree with another FIRMWARE_VERSION (and node.mpy `pad_bytes` longer):
    a different build."""
    src = tmp_path / f"fw-{version}"
    shutil.copytree(REPO / "firmware", src, ignore=shutil.ignore_patterns("__pycache__"))
    text = (src / "node.py").read_text()
    text = text.replace("FIRMWARE_VERSION = (0, 1, 0)", f"FIRMWARE_VERSION = {version}")
    if pad_bytes:
        text += f"\n_PAD = {bytes(range(256)) * (pad_bytes // 256)!r}\n"
    (src / "node.py").write_text(text)
    return build_firmware(None, source=src)


def test_install_enrol_selftest_label_ends_with_a_frame_the_gateway_accepts(
        virtual_board, work, capsys):
    port = virtual_board.port
    w = ["--work-dir", str(work)]
    code, out, err = dordt(capsys, "provision", "install", "--port", port, *w)
    assert code == 0, err
    assert "installed firmware 0.1.0 in slot a" in out
    assert board_state(port)["node"].startswith("/fw/a/firmware/node.mpy")

    code, out, err = dordt(capsys, "provision", "enrol", "--port", port, "--zone",
                           "spoorzone", "--site", "spz-02", "--kind", "air", *w)
    assert code == 0, err
    assert "enrolled as node 00010021 (air, spoorzone/spz-02)" in out

    code, out, err = dordt(capsys, "provision", "selftest", "--port", port, "--json", *w)
    assert code == 0, out + err
    report = json.loads(out)
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["signed frame"]["ok"] and "passes the gateway's verifier" in \
        checks["signed frame"]["detail"]
    assert checks["bme680"]["ok"] and "0x61" in checks["bme680"]["detail"]
    assert checks["enrolment"]["ok"] and checks["key"]["ok"]

    code, out, err = dordt(capsys, "provision", "label", "--node", "00010021", "--kind", "air",
                           "--zone", "spoorzone", "--site", "spz-02", "--out",
                           str(work / "labels"))
    assert code == 0, err
    png = next((work / "labels").glob("*.png"))
    decoded = subprocess.run(["zbarimg", "--quiet", "--raw", str(png)], capture_output=True,
                             text=True, timeout=30)
    assert decoded.returncode == 0, decoded.stderr
    payload = decoded.stdout.strip()
    for value in ("00010021", "air", "spoorzone", "spz-02"):
        assert value in payload


def test_run_twice_resumes_and_reinstall_sends_nothing(virtual_board, work, capsys):
    argv = ["provision", "run", "--port", virtual_board.port, "--node", "00010013",
            "--work-dir", str(work), "--json"]
    code, out, err = dordt(capsys, *argv)
    assert code == 0, err
    state = json.loads((work / "runs" / "00010013.json").read_text())
    assert state["state"] == "done"
    code, out, err = dordt(capsys, *argv)
    assert code == 0, err
    assert "enrolled earlier" in json.loads((work / "runs" / "00010013.json").read_text()
                                            )["steps"]["enrol"]["detail"]
    with BoardLink(virtual_board.port) as link:
        report = install(link, build_firmware(identify(link).arch))
    assert report.unchanged and report.sent_bytes == 0


def test_link_dropped_in_the_middle_of_a_file_leaves_the_old_firmware(
        virtual_board, tmp_path, work):
    v1 = build_firmware(None)
    v2 = variant(tmp_path, (0, 2, 0), pad_bytes=40000)  # node.mpy: several commands long
    with BoardLink(virtual_board.port) as link:
        install(link, v1)
    virtual_board.drop_after(30000)  # inside node.mpy: the only file v2 has to send
    with pytest.raises(LinkError) as cut, BoardLink(virtual_board.port) as link:
        install(link, v2)
    assert "plug the board back in" in str(cut.value)
    virtual_board.plug()
    st = board_state(virtual_board.port)
    assert st["active"] == "a" and st["version"] == [0, 1, 0]
    node_mpy = next(f for f in v2.files if f.path == "firmware/node.mpy")
    with BoardLink(virtual_board.port) as link:  # the cut came inside node.mpy
        size = int(link.exec("import os\ntry:\n    print(os.stat('/fw/b/firmware/node.mpy')"
                             "[6])\nexcept OSError:\n    print(-1)"))
    assert size < node_mpy.size  # -1: never closed, so never committed (as on littlefs)
    with BoardLink(virtual_board.port) as link:
        report = install(link, v2)
    assert report.slot == "b" and report.resumed_files  # the cut install's good files kept
    assert board_state(virtual_board.port)["version"] == [0, 2, 0]


def test_a_corrupted_file_on_the_board_is_found_and_repaired(virtual_board):
    build = build_firmware(None)
    with BoardLink(virtual_board.port) as link:
        install(link, build)
        link.exec("f = open('/fw/a/firmware/protocol.mpy', 'r+b')\nf.seek(100)\n"
                  "f.write(b'\\x00\\x01\\x02')\nf.close()\n")
        boot = link.soft_reset()
    assert "slot a not used: firmware/protocol.mpy does not match its SHA-256" in boot
    with BoardLink(virtual_board.port) as link:
        report = install(link, build)
    assert report.found_wrong == ["firmware/protocol.mpy"]
    assert report.sent_files == ["firmware/protocol.mpy"]  # the rest copied on the board
    assert board_state(virtual_board.port)["active"] == "b"


def test_the_wrong_board_type_is_refused(tmp_path, capsys):
    with VirtualBoard(tmp_path / "pico", profile="pico-w") as board:
        code, _, err = dordt(capsys, "provision", "install", "--port", board.port, "--board",
                             "esp32-s3-devkitc-1", "--work-dir", str(tmp_path))
        assert code == 2
        assert "wrong board" in err and "Raspberry Pi Pico W" in err
        assert "Traceback" not in err
        with BoardLink(board.port) as link:
            assert link.exec("import os\nprint('fw' in os.listdir('/'))").strip() == "False"


@pytest.mark.parametrize("argv, words", [
    (("--zone", "spoorzon", "--site", "spz-01", "--kind", "air"), "Did you mean 'spoorzone'?"),
    (("--zone", "spoorzone", "--site", "spz-1", "--kind", "air"), "Did you mean 'spz-01'?"),
    (("--zone", "rotterdam", "--site", "nowhere", "--kind", "air"), "known zones"),
    (("--node", "00ff0011",), "no place in the zones file"),
])
def test_a_zone_or_site_not_in_the_zones_file_is_refused(virtual_board, work, capsys, argv,
                                                         words):
    code, _, err = dordt(capsys, "provision", "enrol", "--port", virtual_board.port, *argv,
                         "--work-dir", str(work))
    assert code == 2 and words in err and "Traceback" not in err
    assert not (work / "enrolments.bundle.json").exists()


def test_a_node_id_is_enrolled_once(virtual_board, work, tmp_path, capsys):
    w = ["--work-dir", str(work)]
    assert dordt(capsys, "provision", "install", "--port", virtual_board.port, *w)[0] == 0
    assert dordt(capsys, "provision", "enrol", "--port", virtual_board.port, "--node",
                 "00010011", *w)[0] == 0
    with VirtualBoard(tmp_path / "second") as other:
        assert dordt(capsys, "provision", "install", "--port", other.port, *w)[0] == 0
        code, _, err = dordt(capsys, "provision", "enrol", "--port", other.port, "--node",
                             "00010011", *w)
    assert code == 2 and "enrolled already" in err


def test_no_readable_node_key_in_anything_the_tool_wrote_or_printed(virtual_board, work,
                                                                      tmp_path):
    env = dict(__import__("os").environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    outputs = []
    for argv in (["run", "--port", virtual_board.port, "--zone", "maasterras", "--site",
                  "mst-01", "--kind", "crowd"],
                 ["selftest", "--port", virtual_board.port],
                 ["selftest", "--port", virtual_board.port, "--json"]):
        done = subprocess.run([sys.executable, "-m", "dordt.cli", "provision", *argv,
                               "--work-dir", str(work)], capture_output=True, text=True,
                              env=env, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout + done.stderr)
    with BoardLink(virtual_board.port) as link:
        key = bytes.fromhex(link.exec("print(open('/node.key').read().strip())").strip())
    forms = [key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key)]
    text_forms = [f.decode() for f in forms[1:]]
    assert not any(f in out for out in outputs for f in text_forms)
    flash = virtual_board.flash_dir.resolve()
    written = [p for p in tmp_path.rglob("*") if p.is_file()
               and flash not in p.resolve().parents]
    assert any(p.name == "enrolments.bundle.json" for p in written)
    for path in written:
        data = path.read_bytes()
        assert not any(f in data for f in forms), path


def test_install_refuses_to_switch_to_what_it_could_not_verify(virtual_board):
    build = build_firmware(None)
    with BoardLink(virtual_board.port) as link:
        install(link, build)
    bad = build.__class__(build.version, build.arch, tuple(
        f if f.path != "firmware/node.mpy" else f.__class__(f.path, f.data, "0" * 64)
        for f in build.files))
    with BoardLink(virtual_board.port) as link, pytest.raises(InstallError) as exc:
        install(link, bad)
    assert "previous firmware still boots" in str(exc.value)
    assert board_state(virtual_board.port)["active"] == "a"
    assert slots.SLOTS == ("a", "b")


def test_batch_goes_on_past_a_failed_board_and_retries_only_it(tmp_path, work, capsys):
    with VirtualBoard(tmp_path / "f1") as one, VirtualBoard(tmp_path / "f2") as two:
        tray = tmp_path / "tray.csv"
        tray.write_text("# tray 1, bench A\nport,zone,site,kind\n"
                        f"{one.port},spuiboulevard,spb-01,air\n"
                        f"{two.port},spuiboulevard,spb-9,noise\n")
        code, out, err = dordt(capsys, "provision", "batch", str(tray), "--work-dir",
                               str(work))
        assert code == 1 and "1 of 2 boards done" in out and "Traceback" not in err
        assert "Did you mean 'spb-01'?" in err or "spb-9" in err
        tray.write_text(tray.read_text().replace("spb-9", "spb-02"))
        code, out, err = dordt(capsys, "provision", "batch", str(tray), "--work-dir",
                               str(work), "--json")
        assert code == 0, err
        states = json.loads(out)
        assert {v["node"] for v in states.values()} == {"00030011", "00030022"}
    runs = {p.stem for p in (work / "runs").glob("*.json")}
    assert runs == {"00030011", "00030022"}


@pytest.mark.services
def test_selftest_sees_the_frame_accepted_by_a_running_gateway(virtual_board, work, tmp_path,
                                                               mosquitto, capsys):
    w = ["--work-dir", str(work)]
    assert dordt(capsys, "provision", "run", "--port", virtual_board.port, "--node",
                 "00020021", *w)[0] == 0
    ring = tmp_path / "keyring.json"
    assert dordt(capsys, "fleet", "import", str(work / "enrolments.bundle.json"), "--keyring",
                 str(ring), "--enrol-key", str(tmp_path / "fleet" / "enrol-x25519.pem"))[0] == 0
    gw = subprocess.Popen(
        [sys.executable, "-m", "dordt.cli", "gateway", "run", "--broker", mosquitto.url,
         "--keyring", str(ring), "--store", f"sqlite:{tmp_path / 'store.sqlite'}",
         "--data-dir", str(tmp_path / "gw"), "--duration", "30"], stdout=subprocess.PIPE,
        text=True)
    try:
        assert gw.stdout.readline().startswith("gateway: 1 nodes")
        code, out, err = dordt(capsys, "provision", "selftest", "--port", virtual_board.port,
                               "--broker", mosquitto.url, "--json", *w)
        assert code == 0, out + err
        gateway = {c["check"]: c for c in json.loads(out)["checks"]}["gateway"]
        assert gateway["ok"] and "accepted the frame" in gateway["detail"]
    finally:
        gw.terminate()
        gw.wait(timeout=30)


def test_a_full_flash_is_said_and_the_old_firmware_kept(tmp_path):
    v1 = build_firmware(None)
    v2 = variant(tmp_path, (0, 2, 0), pad_bytes=40000)
    # room for one firmware and a half: the second slot cannot be filled
    with VirtualBoard(tmp_path / "small", flash_bytes=int(v1.size * 1.6)) as board:
        with BoardLink(board.port) as link:
            install(link, v1)
        with BoardLink(board.port) as link, pytest.raises(InstallError) as full:
            install(link, v2)
        assert "the board's flash is full" in str(full.value)
        assert board_state(board.port)["version"] == [0, 1, 0]


def test_a_kind_the_boards_sensors_do_not_fit_is_refused(tmp_path, work, capsys):
    with VirtualBoard(tmp_path / "nobme", bme680=False) as board:
        w = ["--work-dir", str(work)]
        assert dordt(capsys, "provision", "install", "--port", board.port, *w)[0] == 0
        code, _, err = dordt(capsys, "provision", "enrol", "--port", board.port, "--zone",
                             "spoorzone", "--site", "spz-01", "--kind", "air", *w)
        assert code == 2 and "sensors do not fit the air kit" in err
        assert "bme680: no answer at I2C 0x77 or 0x76" in err
        assert not (work / "enrolments.bundle.json").exists()
        # the same board has a radio: a crowd node fits
        code, out, err = dordt(capsys, "provision", "enrol", "--port", board.port, "--zone",
                               "spoorzone", "--site", "spz-01", "--kind", "crowd", *w)
        assert code == 0, err
