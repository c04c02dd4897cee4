"""The virtual board (provisioning/virtual_board.py + tools/micropython/board.mjs) behaves
like a USB MicroPython board to the unmodified mpremote package, both as a command-line
subprocess and through its SerialTransport API: ls, cp both ways, exec, hashing; raw-paste
refused and mpremote still working; MicroPython's errno values; files surviving soft
resets and power cycles; a link pulled mid-transfer gives the host a clean error, keeps
the previous copy of the file and the board boots again; a runaway program is ended by a
hard reset; and the unmodified firmware/board.py builds its hardware on the board with
every emulated sensor readable.  Every read from the board has a timeout."""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial
from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from dordt.errors import UserError
from provisioning import virtual_board as vb
from provisioning.virtual_board import VirtualBoard, running_boards
from simulators.emulators import i2s

REPO = Path(__file__).resolve().parents[2]
MPREMOTE_TIMEOUT_S = 60
pytestmark = pytest.mark.timeout(120)


def mpremote(port, *args, timeout_s=MPREMOTE_TIMEOUT_S):
    return subprocess.run([sys.executable, "-m", "mpremote", "connect", str(port), *args],
                          capture_output=True, text=True, timeout=timeout_s)


class Transport:
    """mpremote's SerialTransport on the board, in the raw REPL (soft reset first)."""

    def __init__(self, port, soft_reset=True):
        self.t = SerialTransport(str(port), baudrate=115200)
        self.t.enter_raw_repl(soft_reset=soft_reset)

    def __enter__(self):
        return self.t

    def __exit__(self, *exc):
        try:
            self.t.exit_raw_repl()
        except Exception:  # noqa: BLE001  # the link may be gone on purpose
            pass
        try:
            self.t.close()
        except Exception:  # noqa: BLE001
            pass


def read_until(ser, ending, timeout_s=10):
    data = b""
    deadline = time.monotonic() + timeout_s
    while not data.endswith(ending):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {ending!r} from the board; got {data!r}")
        data += ser.read(1)
    return data


def drain(ser, quiet_s=0.3, timeout_s=10):
    """Read until the board has been quiet for `quiet_s` (banner, prompts)."""
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    while time.monotonic() - last < quiet_s and time.monotonic() < deadline:
        if ser.in_waiting:
            ser.read(ser.in_waiting)
            last = time.monotonic()
        else:
            time.sleep(0.02)


# -- mpremote, unmodified ---------------------------------------------------------------------


def test_mpremote_cli_ls_cp_exec_and_hash(virtual_board, tmp_path):
    port = virtual_board.port
    blob = os.urandom(3000) + bytes(range(256)) * 8
    src = tmp_path / "blob.bin"
    src.write_bytes(blob)
    r = mpremote(port, "mkdir", ":lib", "+", "cp", str(src), ":lib/blob.bin")
    assert r.returncode == 0, r.stderr
    r = mpremote(port, "ls", ":lib")
    assert r.returncode == 0 and f"{len(blob)} blob.bin" in r.stdout, r.stdout
    r = mpremote(port, "fs", "sha256sum", ":lib/blob.bin")
    assert r.returncode == 0 and hashlib.sha256(blob).hexdigest() in r.stdout, r.stdout
    back = tmp_path / "back.bin"
    r = mpremote(port, "cp", ":lib/blob.bin", str(back))
    assert r.returncode == 0 and back.read_bytes() == blob, r.stderr
    r = mpremote(port, "exec", "import os; print(sorted(os.listdir('/')))")
    assert r.returncode == 0 and r.stdout.strip() == "['lib']", r.stdout
    # the host directory is the board's flash
    assert (virtual_board.flash_dir / "lib" / "blob.bin").read_bytes() == blob
    # a missing file: MicroPython's ENOENT, which mpremote turns into its own message
    r = mpremote(port, "cat", ":nope.txt")
    assert r.returncode == 1 and "No such file or directory" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_serial_transport_api_and_raw_paste_refused(virtual_board):
    with Transport(virtual_board.port) as t:
        assert t.use_raw_paste  # mpremote tries raw-paste first ...
        t.fs_writefile("data.txt", b"hello board\n" * 50)
        assert not t.use_raw_paste  # ... is told "R\x00" and falls back to the raw REPL
        assert t.fs_readfile("data.txt") == b"hello board\n" * 50
        assert t.fs_hashfile("data.txt", "sha256") == hashlib.sha256(
            b"hello board\n" * 50).digest()
        assert t.fs_stat("data.txt").st_size == 600
        assert [(e.name, e.st_mode, e.st_size) for e in t.fs_listdir("")] == [
            ("data.txt", 0x8000, 600)]
        assert t.eval("1 + 2") == 3
        out, err = t.exec_raw("print('out')\nraise ValueError('bad')")
        assert out == b"out\r\n" and b"ValueError: bad" in err
    # the raw-paste request itself, byte by byte
    with serial.Serial(virtual_board.port, timeout=5) as ser:
        ser.write(b"\r\x03\r\x01")
        read_until(ser, b"raw REPL; CTRL-B to exit\r\n>")
        ser.write(b"\x05A\x01")
        assert ser.read(2) == b"R\x00"
        ser.write(b"print(6 * 7)\x04")
        assert read_until(ser, b"\x04>") == b"OK42\r\n\x04\x04>"
        ser.write(b"\x02")
        read_until(ser, b">>> ")


def test_friendly_repl_ctrl_c_and_ctrl_b(virtual_board):
    with serial.Serial(virtual_board.port, timeout=5) as ser:
        ser.write(b"\r\x03")
        drain(ser)
        ser.write(b"6 * 7\r")
        assert read_until(ser, b">>> ") == b"6 * 7\r\n42\r\n>>> "
        ser.write(b"half a line\x03")  # Ctrl-C clears the line
        read_until(ser, b">>> ")
        ser.write(b"\x01")
        read_until(ser, b"raw REPL; CTRL-B to exit\r\n>")
        ser.write(b"junk\x03print('clean')\x04")  # Ctrl-C clears the raw command too
        assert read_until(ser, b"\x04>") == b"OKclean\r\n\x04\x04>"
        ser.write(b"\x02")
        read_until(ser, b">>> ")
        ser.write(b"\x04")  # soft reset from the friendly REPL
        assert b"MPY: soft reboot\r\n" in read_until(ser, b">>> ")


def test_errno_values_are_micropythons(tmp_path, monkeypatch):
    monkeypatch.setenv(vb.RECORDS_ENV, str(tmp_path / "records"))
    with VirtualBoard(tmp_path / "flash", flash_bytes=16 * 1024) as board:
        with Transport(board.port) as t:
            t.fs_mkdir("d")
            t.fs_writefile("f.txt", b"x")
            with pytest.raises(FileExistsError):  # EEXIST 17
                t.fs_mkdir("d")
            with pytest.raises(FileNotFoundError):  # ENOENT 2
                t.fs_readfile("missing.txt")
            cases = {
                "open('missing.txt')": 2, "import os; os.mkdir('d')": 17,
                "open('d', 'w')": 21, "import os; os.listdir('f.txt')": 20,
                "import os; os.rmdir('missing')": 2, "import os; os.remove('d')": 21,
            }
            for code, number in cases.items():
                out = t.exec(
                    f"try:\n exec({code!r})\n print('no error')\n"
                    f"except OSError as e:\n print(e.errno)")
                assert int(out) == number, (code, out)
            # the flash is full: ENOSPC 28 (a board's littlefs says the same)
            out = t.exec("f = open('big.bin', 'wb')\ntry:\n f.write(bytes(20000))\n"
                         "except OSError as e:\n print(e.errno)\nf.close()")
            assert int(out) == 28
            assert t.eval("__import__('os').statvfs('/')[2]") == 4  # 16 KB in 4 KB blocks


# -- the flash: soft reset, power cycle, a pulled cable ------------------------------------


def test_files_survive_soft_reset_and_power_cycle_boot_py_runs_main_py_does_not(
        virtual_board):
    with Transport(virtual_board.port) as t:
        t.fs_writefile("boot.py", b"import sys\nsys.path.append('/app')\nprint('booted')\n")
        t.fs_writefile("main.py", b"while True:\n    pass\n")  # would hang the board
        t.fs_mkdir("app")
        t.fs_writefile("app/keep.txt", b"kept")
        t.fs_writefile("app/gone.txt", b"to be deleted")
        t.exec("import os\nos.remove('app/gone.txt')")
    assert sorted(p.name for p in (virtual_board.flash_dir / "app").iterdir()) == ["keep.txt"]
    with serial.Serial(virtual_board.port, timeout=5) as ser:
        ser.write(b"\r\x03\r\x01")
        read_until(ser, b"raw REPL; CTRL-B to exit\r\n>")
        ser.write(b"\x04")
        # exactly what mpremote's enter_raw_repl(soft_reset=True) waits for
        assert read_until(ser, b"raw REPL; CTRL-B to exit\r\n>") == (
            b"OK\r\nMPY: soft reboot\r\nbooted\r\nraw REPL; CTRL-B to exit\r\n>")
        ser.write(b"import sys; print('/app' in sys.path)\x04")
        assert read_until(ser, b"\x04>") == b"OKTrue\r\n\x04\x04>"
    virtual_board.unplug()
    assert not os.path.exists(virtual_board.port or "/nonexistent")
    virtual_board.plug()
    with Transport(virtual_board.port) as t:
        assert t.fs_readfile("app/keep.txt") == b"kept"
        assert not t.fs_exists("app/gone.txt")
        assert t.eval("__import__('machine').reset_cause()") == 1  # power-on


def test_unplug_mid_transfer_gives_a_clean_error_and_keeps_the_previous_copy(
        virtual_board, tmp_path):
    old = b"old version\n" * 100
    new = os.urandom(6000)
    with Transport(virtual_board.port) as t:
        t.fs_writefile("app.py", old)
    src = tmp_path / "new.bin"
    src.write_bytes(new)
    virtual_board.drop_after(4000)  # about a third into the copy
    r = mpremote(virtual_board.port, "cp", str(src), ":app.py")
    # mpremote reports the I/O error (with its own traceback: its close() does not expect
    # the port to vanish, as it does when a real USB cable is pulled)
    assert r.returncode != 0
    assert "Input/output error" in r.stderr or "disconnected" in r.stderr, r.stderr
    assert not virtual_board.plugged
    # the half-written file was never closed: the previous copy is what the flash holds
    assert (virtual_board.flash_dir / "app.py").read_bytes() == old
    virtual_board.plug()
    with Transport(virtual_board.port) as t:
        assert t.fs_readfile("app.py") == old
        t.fs_writefile("app.py", new)  # and the board takes a full copy again
        assert t.fs_hashfile("app.py", "sha256") == hashlib.sha256(new).digest()


def test_a_board_whose_node_process_dies_is_unplugged(virtual_board):
    with serial.Serial(virtual_board.port, timeout=1) as ser:
        os.kill(running_boards()[0]["node_pid"], 9)
        deadline = time.monotonic() + 10
        while virtual_board.plugged and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not virtual_board.plugged and running_boards() == []
        with pytest.raises(serial.SerialException):
            ser.write(b"\r\x03")
            ser.read(10)
    virtual_board.plug()
    with Transport(virtual_board.port) as t:
        assert t.eval("1") == 1


def test_a_runaway_program_times_out_and_a_hard_reset_recovers(virtual_board):
    t = SerialTransport(virtual_board.port, baudrate=115200)
    try:
        t.enter_raw_repl(soft_reset=False)
        t.exec_raw_no_follow("while True:\n    pass")
        with pytest.raises(TransportError):
            t.follow(timeout=1)  # Ctrl-C cannot break this loop in this port
        virtual_board.reset()
        t.enter_raw_repl(soft_reset=False)
        assert t.eval("__import__('machine').reset_cause()") == 2  # HARD_RESET
    finally:
        t.close()


def test_machine_reset_and_sys_exit_soft_reset_the_board(virtual_board):
    with serial.Serial(virtual_board.port, timeout=5) as ser:
        ser.write(b"\r\x03\r\x01")
        read_until(ser, b"raw REPL; CTRL-B to exit\r\n>")
        ser.write(b"import machine\nmachine.reset()\x04")
        assert read_until(ser, b"raw REPL; CTRL-B to exit\r\n>").endswith(
            b"MPY: soft reboot\r\nraw REPL; CTRL-B to exit\r\n>")
        ser.write(b"import machine; print(machine.reset_cause())\x04")
        assert read_until(ser, b"\x04>") == b"OK5\r\n\x04\x04>"  # SOFT_RESET


def test_an_unfed_watchdog_resets_the_board_even_after_a_soft_reset(virtual_board):
    with serial.Serial(virtual_board.port, timeout=5) as ser:
        ser.write(b"\r\x03\r\x01")
        read_until(ser, b"raw REPL; CTRL-B to exit\r\n>")
        ser.write(b"import machine\nw = machine.WDT(timeout=1500)\x04")
        read_until(ser, b"\x04>")
        ser.write(b"\x04")  # a soft reset does not stop the watchdog
        read_until(ser, b"soft reboot\r\nraw REPL; CTRL-B to exit\r\n>")
        # nobody feeds it: the board resets into the friendly REPL, dropping the session
        read_until(ser, b">>> ", timeout_s=10)
        drain(ser)
        ser.write(b"import machine; machine.reset_cause()\r")
        assert read_until(ser, b">>> ").endswith(b"\r\n3\r\n>>> ")  # WDT_RESET


# -- the emulated hardware, through the unmodified firmware ----------------------------------


def put_firmware(flash_dir):
    shutil.copytree(REPO / "firmware", flash_dir / "lib" / "firmware",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


PINS = {"i2c_sda": 8, "i2c_scl": 9, "uart_tx": 17, "uart_rx": 18, "i2s_sck": 4,
        "i2s_ws": 5, "i2s_sd": 6}

READ_SENSORS = r"""
import json, time
from firmware import board
from firmware.drivers import bme680, pm

def use(kind):
    f = open('/config.json', 'w')
    f.write(json.dumps({'kind': kind, 'board': {'pins': PINS}}))
    f.close()
    return board.build()

out = {}
hw = use('air')
out['i2c_scan'] = hw.i2c.scan()
chip = bme680.BME680(hw.i2c)
out['chip_id'] = hw.i2c.readfrom_mem(0x77, 0xD0, 1)[0]
chip.measure()
out['bme'] = [chip.temperature_c, chip.pressure_pa, chip.humidity_pct, chip.gas_ohm]
got = []
sensor = pm.SDS011(hw.uart, lambda pm1, pm25, pm10, sig: got.append((pm25, pm10)))
t0 = time.ticks_ms()
while not got and time.ticks_diff(time.ticks_ms(), t0) < 3000:
    sensor.poll()
    time.sleep_ms(50)
out['pm'] = got
out['pm_errors'] = sensor.checksum_errors
hw = use('noise')
buf = bytearray(32000 // 10 * 4)  # 100 ms of 32-bit samples
n = hw.i2s.readinto(buf)
peak = 0
for i in range(0, n, 4):
    v = int.from_bytes(buf[i:i + 4], 'little')
    v = (v - (1 << 32) if v & 0x80000000 else v) >> 8
    peak = max(peak, abs(v))
out['i2s'] = [n, peak]
hw = use('crowd')
heard = []
hw.ble.start(lambda addr, rssi: heard.append((bytes(addr), rssi)))
time.sleep_ms(1500)
hw.ble.stop()
out['ble'] = [len(heard), len(set(a for a, r in heard)), min(r for a, r in heard),
              max(r for a, r in heard)]
out['wifi'] = hw.net.isconnected()
out['reset_cause'] = hw.reset_cause()
import vboard
out['profile'] = [vboard.PROFILE, vboard.USB_VID, vboard.USB_PID]
hw.wdt.feed()
print(json.dumps(out))
"""


def test_firmware_board_build_reads_every_emulated_sensor(virtual_board):
    put_firmware(virtual_board.flash_dir)  # before the board reads its flash again
    virtual_board.reset()
    with Transport(virtual_board.port) as t:
        # the ROM modules are not files on the board
        assert sorted(t.eval("__import__('os').listdir('/')")) == ["lib"]
        out, err = t.exec_raw(f"PINS = {PINS!r}\n" + READ_SENSORS, timeout=30)
        assert not err, err.decode()
    got = json.loads(out.decode().splitlines()[-1])
    assert got["i2c_scan"] == [0x77] and got["chip_id"] == 0x61
    temperature_c, pressure_pa, humidity_pct, gas_ohm = got["bme"]
    assert 20.9 <= temperature_c <= 21.4 and 101250 <= pressure_pa <= 101350
    assert 47.5 <= humidity_pct <= 50.5 and 110_000 <= gas_ohm <= 135_000
    assert got["pm"] and got["pm_errors"] == 0
    pm25_x10, pm10_x10 = got["pm"][0]
    assert abs(pm25_x10 - 94) <= 3 and abs(pm10_x10 - 152) <= 5  # the truth, +-1 % noise
    # 94 dB SPL is 1 Pa rms: the peak is sqrt(2) Pa at the microphone's sensitivity
    n, peak = got["i2s"]
    assert n == 12800
    expected = i2s.pa_to_full_scale(vb.MIC_SENSITIVITY_DBFS) * 2 ** 0.5
    assert abs(peak / 8388608 - expected) < 0.001
    count, addresses, weakest, strongest = got["ble"]
    assert count >= 10 and addresses >= 5 and -130 <= weakest <= strongest <= -40
    assert got["wifi"] is False  # never connects unless told
    assert got["reset_cause"] == 2
    assert got["profile"] == ["esp32-s3-devkitc-1", 0x303A, 0x1001]


def test_pico_w_profile_and_pms5003(tmp_path, monkeypatch):
    monkeypatch.setenv(vb.RECORDS_ENV, str(tmp_path / "records"))
    with VirtualBoard(tmp_path / "flash", profile="pico-w", pm_sensor="pms5003") as board:
        with Transport(board.port) as t:
            assert t.eval("__import__('vboard').PROFILE") == "pico-w"
            assert t.eval("__import__('vboard').USB_VID") == 0x2E8A
            assert t.eval("__import__('os').statvfs('/')[2]") == 0xD4000 // 4096
            t.exec("import machine, time\nu = machine.UART(0, timeout=1500)")
            frame = t.eval("u.read(32)")
            assert frame[:2] == b"BM" and len(frame) == 32
        assert running_boards()[0]["usb_pid"] == 0x0005


# -- discovery records, errors, the command ------------------------------------------------


def test_running_boards_lists_live_boards_only(virtual_board, tmp_path):
    records = running_boards()
    assert [(r["port"], r["profile"], r["usb_vid"], r["usb_pid"], r["pid"]) for r in records] \
        == [(str(tmp_path / "board-port"), "esp32-s3-devkitc-1", 0x303A, 0x1001, os.getpid())]
    stale = dict(records[0], pid=2**22 + 12345)  # no such process
    (tmp_path / "records" / "stale.json").write_text(json.dumps(stale))
    (tmp_path / "records" / "broken.json").write_text("{not json")
    assert len(running_boards()) == 1
    virtual_board.unplug()
    assert running_boards() == []
    virtual_board.plug()
    assert len(running_boards()) == 1


def test_missing_node_or_package_says_run_make_setup(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="make setup"):
        VirtualBoard(tmp_path / "flash").start()
    monkeypatch.undo()
    monkeypatch.setattr(vb, "PACKAGE_ENTRY", tmp_path / "nowhere.mjs")
    with pytest.raises(UserError, match="make setup"):
        VirtualBoard(tmp_path / "flash").start()
    monkeypatch.undo()
    monkeypatch.setenv(vb.RECORDS_ENV, str(tmp_path / "records"))
    broken = tmp_path / "broken.mjs"
    broken.write_text('throw new Error("no MicroPython here");\n')
    monkeypatch.setattr(vb, "BOARD_SCRIPT", broken)
    with pytest.raises(UserError, match="did not start.*no MicroPython here"):
        VirtualBoard(tmp_path / "flash").start()
    with pytest.raises(UserError, match="unknown board profile"):
        VirtualBoard(tmp_path / "flash", profile="esp8266")


def test_command_runs_in_the_foreground_until_interrupted(tmp_path):
    env = dict(os.environ, **{vb.RECORDS_ENV: str(tmp_path / "records")})
    link = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from provisioning.virtual_board import *\n"
         "import argparse; p = argparse.ArgumentParser(); add_arguments(p)\n"
         "sys.exit(command_virtual_board(p.parse_args(sys.argv[1:])))",
         "--board", "pico-w", "--flash", str(tmp_path / "flash"), "--link", str(link)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not link.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        r = mpremote(link, "exec", "print(__import__('vboard').PROFILE)")
        assert r.stdout.strip() == "pico-w", r.stderr
    finally:
        proc.send_signal(2)  # Ctrl-C
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"mpremote connect {link}" in out and "Traceback" not in err
    assert not link.exists() and not list((tmp_path / "records").glob("*.json"))


def test_add_arguments_defaults():
    parser = argparse.ArgumentParser()
    vb.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.board, args.flash, args.link, args.pm_sensor) == (
        "esp32-s3-devkitc-1", None, None, "sds011")
