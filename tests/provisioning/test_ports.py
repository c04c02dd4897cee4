"""`dordt provision ports`: boards recognised from USB ids, BOOTSEL drives, virtual boards,
and what to do when nothing is found.  The OS's port list is injected as pyserial's own
ListPortInfo objects; drives are real directories."""

from __future__ import annotations

import argparse
import json

import pytest
from serial.tools.list_ports_common import ListPortInfo

from provisioning import ports


def usb_port(device: str, vid: int | None, pid: int | None, description: str = "n/a",
             manufacturer: str | None = None) -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid = vid, pid
    info.description = description
    info.manufacturer = manufacturer
    return info


def boot_drive(path, board_id: str = "RPI-RP2"):
    path.mkdir(parents=True)
    (path / "INFO_UF2.TXT").write_text(
        f"UF2 Bootloader v3.0\r\nModel: Raspberry Pi RP2\r\nBoard-ID: {board_id}\r\n")
    (path / "INDEX.HTM").write_text("<html></html>")
    return path


def test_boards_recognised_from_their_usb_ids(tmp_path):
    found = ports.list_ports(
        [usb_port("/dev/ttyUSB0", 0x10C4, 0xEA60, "CP2102N USB to UART Bridge Controller"),
         usb_port("/dev/ttyACM0", 0x303A, 0x1001),
         usb_port("/dev/ttyACM1", 0x2E8A, 0x0005),
         usb_port("/dev/ttyS0", None, None)],          # a built-in UART: not listed
        virtual_boards=[], drive_roots=[tmp_path])
    by_port = {p.port: p for p in found}
    assert set(by_port) == {"/dev/ttyUSB0", "/dev/ttyACM0", "/dev/ttyACM1"}
    assert by_port["/dev/ttyUSB0"].board == "esp32-s3-devkitc-1"
    assert by_port["/dev/ttyUSB0"].usb_id == "10C4:EA60"
    assert "CP2102N" in by_port["/dev/ttyUSB0"].what
    assert by_port["/dev/ttyACM0"].what == "native USB Serial/JTAG"
    assert by_port["/dev/ttyACM1"].board == "pico-w"
    assert all(p.recognised and p.kind == "serial" for p in found)


def test_unknown_usb_device_is_listed_but_is_no_board(tmp_path):
    found = ports.list_ports([usb_port("/dev/ttyUSB3", 0x1A86, 0x7523, "USB Serial",
                                       "QinHeng [CH340]")],
                             virtual_boards=[], drive_roots=[tmp_path])
    assert len(found) == 1 and not found[0].recognised
    assert found[0].kind == "unknown-usb" and found[0].usb_id == "1A86:7523"
    assert "no hardware profile" in found[0].what and "QinHeng [CH340]" in found[0].what


def test_pico_in_bootsel_mode_is_a_drive_not_a_serial_port(tmp_path):
    found = ports.list_ports([usb_port("/dev/ttyACM5", 0x2E8A, 0x0003)], virtual_boards=[],
                             drive_roots=[tmp_path])
    assert found[0].board == "pico-w"
    assert "BOOTSEL" in found[0].what and "not a serial port" in found[0].what


def test_mounted_rp2_boot_drive_is_found(tmp_path):
    drive = boot_drive(tmp_path / "media" / "tech" / "RPI-RP2")
    boot_drive(tmp_path / "media" / "tech" / "RP2350", board_id="RP2350")  # not an RP2040
    (tmp_path / "media" / "tech" / "USBSTICK").mkdir()
    assert ports.find_rp2_boot_drives([tmp_path / "media", tmp_path / "absent"]) == [drive]
    found = ports.list_ports([], virtual_boards=[], drive_roots=[tmp_path / "media"])
    assert [(p.port, p.kind, p.board, p.usb_id) for p in found] == [
        (str(drive), "uf2-drive", "pico-w", "2E8A:0003")]


def test_virtual_boards_are_listed(tmp_path):
    found = ports.list_ports([], virtual_boards=[
        {"port": "/dev/pts/7", "profile": "pico-w", "usb_vid": 0x2E8A, "usb_pid": 0x0005,
         "pid": 4242}], drive_roots=[tmp_path])
    assert len(found) == 1
    vb = found[0]
    assert (vb.port, vb.kind, vb.board, vb.usb_id) == ("/dev/pts/7", "virtual", "pico-w",
                                                       "2E8A:0005")
    assert "virtual board" in vb.what and "4242" in vb.what


def test_without_the_virtual_board_module_there_are_no_virtual_boards(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_virtual_board(name, *args, **kwargs):
        if name == "provisioning.virtual_board":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_virtual_board)
    assert ports.running_virtual_boards() == []


def run_command(monkeypatch, capsys, serial_ports, drive_roots, *argv):
    monkeypatch.setattr(ports, "running_virtual_boards", lambda: [])
    real = ports.list_ports
    monkeypatch.setattr(ports, "list_ports",
                        lambda: real(serial_ports, None, drive_roots))
    parser = argparse.ArgumentParser()
    ports.add_ports_arguments(parser)
    code = ports.command_ports(parser.parse_args(list(argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_command_prints_a_table_and_exits_0(monkeypatch, capsys, tmp_path):
    code, out, err = run_command(monkeypatch, capsys,
                                 [usb_port("/dev/ttyACM0", 0x2E8A, 0x0005)], [tmp_path])
    assert code == 0
    assert "/dev/ttyACM0" in out and "Raspberry Pi Pico W" in out and "2E8A:0005" in out
    assert err == ""


def test_command_json(monkeypatch, capsys, tmp_path):
    code, out, _ = run_command(monkeypatch, capsys,
                               [usb_port("/dev/ttyUSB0", 0x10C4, 0xEA60)], [tmp_path],
                               "--json")
    doc = json.loads(out)
    assert code == 0 and doc["boards_found"] == 1
    assert doc["ports"] == [{"port": "/dev/ttyUSB0", "kind": "serial",
                             "board": "esp32-s3-devkitc-1",
                             "board_name": "ESP32-S3-DevKitC-1-N8R8", "usb_id": "10C4:EA60",
                             "what": "CP2102N USB-UART bridge"}]


@pytest.mark.parametrize("argv", [(), ("--json",)])
def test_nothing_found_says_what_to_try_and_exits_1(monkeypatch, capsys, tmp_path, argv):
    code, out, err = run_command(
        monkeypatch, capsys, [usb_port("/dev/ttyUSB3", 0x1A86, 0x7523)], [tmp_path], *argv)
    assert code == 1
    for hint in ("charge", "CP210x", "dialout", "BOOTSEL", "dordt provision virtual-board"):
        assert hint in err
    if argv:
        assert json.loads(out)["boards_found"] == 0
    else:
        assert "1A86:7523" in out  # the unknown device is still shown
    assert "Traceback" not in out + err
