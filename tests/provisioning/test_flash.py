"""`dordt provision flash`: images are checked (format, sha256 against the profile or the
technician's trust file) before a byte is written; a UF2 is really copied onto a boot-drive
directory (a thread plays the boot ROM: it reads the blocks and then the drive goes away);
esptool's real API talks to a real pty on which no bootloader answers.

Not covered here (no hardware on this machine): esptool writing a real ESP32-S3, and the
wrong-chip refusal, which needs a ROM bootloader to answer."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import threading
import time

import pytest

from dordt.errors import UserError
from provisioning import flash, ports

UF2_BLOCK_BYTES = 512


def uf2_image(blocks: int = 8, family: int = flash.UF2_FAMILY_RP2040, seed: int = 1,
              absolute_first: bool = False) -> bytes:
    """A well-formed UF2 file (github.com/microsoft/uf2): 256 payload bytes per block."""
    out = bytearray()
    for n in range(blocks):
        payload = bytes((seed + n + i) & 0xFF for i in range(256)).ljust(476, b"\0")
        fam = flash.UF2_FAMILY_ABSOLUTE if absolute_first and n == 0 else family
        out += struct.pack("<8I", 0x0A324655, 0x9E5D5157, 0x2000, 0x10000000 + 256 * n,
                           256, n, blocks, fam) + payload + struct.pack("<I", 0x0AB16F30)
    assert len(out) == blocks * UF2_BLOCK_BYTES
    return bytes(out)


def esp_image(size: int = 4096) -> bytes:
    return bytes([flash.ESP_IMAGE_MAGIC]) + bytes(i & 0xFF for i in range(size - 1))


@pytest.fixture
def boot_drive(tmp_path):
    drive = tmp_path / "media" / "tech" / "RPI-RP2"
    drive.mkdir(parents=True)
    (drive / "INFO_UF2.TXT").write_text(
        "UF2 Bootloader v3.0\r\nModel: Raspberry Pi RP2\r\nBoard-ID: RPI-RP2\r\n")
    (drive / "INDEX.HTM").write_text("<html></html>")
    return drive


class BootRom(threading.Thread):
    """Plays the RP2 boot ROM on a drive directory: once a file holding every block of the
    UF2 is there, it keeps what it read and the drive goes away (the board rebooted)."""

    def __init__(self, drive, expected_bytes: int):
        super().__init__(daemon=True)
        self.drive, self.expected_bytes = drive, expected_bytes
        self.flashed: bytes | None = None
        self.start()

    def run(self):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for f in self.drive.glob("*.uf2"):
                data = f.read_bytes()
                if len(data) == self.expected_bytes:
                    self.flashed = data
                    (self.drive / "INFO_UF2.TXT").unlink()
                    return
            time.sleep(0.02)


def back_in_bootsel(drive) -> None:
    """The board in BOOTSEL mode again: a fresh drive (it never lists copied files)."""
    for f in drive.glob("*.uf2"):
        f.unlink()
    (drive / "INFO_UF2.TXT").write_text("Board-ID: RPI-RP2\n")


def drive_files(drive) -> set[str]:
    return {p.name for p in drive.iterdir()}


def test_unknown_hash_is_refused_and_nothing_is_written(tmp_path, boot_drive):
    image = tmp_path / "RPI_PICO_W-v1.27.0.uf2"
    image.write_bytes(uf2_image())
    trust = tmp_path / "config" / "images.toml"
    with pytest.raises(UserError) as err:
        flash.flash("pico-w", image=image, drive=boot_drive, trust_file=trust)
    assert err.value.exit_code == 2
    message = str(err.value)
    assert hashlib.sha256(image.read_bytes()).hexdigest() in message
    assert "https://micropython.org/download/RPI_PICO_W/" in message
    assert "sha256sum" in message and "--record-sha256" in message
    assert drive_files(boot_drive) == {"INFO_UF2.TXT", "INDEX.HTM"}
    assert not trust.exists()


def test_record_sha256_then_the_image_is_accepted(tmp_path, boot_drive):
    data = uf2_image()
    image = tmp_path / "RPI_PICO_W-v1.27.0.uf2"
    image.write_bytes(data)
    trust = tmp_path / "config" / "images.toml"
    said = []
    rom = BootRom(boot_drive, len(data))
    first = flash.flash("pico-w", image=image, drive=boot_drive, trust_file=trust,
                        record_sha256=True, say=said.append)
    rom.join(5)
    sha = hashlib.sha256(data).hexdigest()
    assert first.trusted_by == "recorded now" and first.rebooted and first.sha256 == sha
    assert any(sha in line for line in said)
    assert any(str(trust) in line and "later runs accept it" in line for line in said)
    assert sha in trust.read_text()

    # the board is back in BOOTSEL mode: a later run takes the recorded hash by itself
    back_in_bootsel(boot_drive)
    rom = BootRom(boot_drive, len(data))
    again = flash.flash("pico-w", image=image, drive=boot_drive, trust_file=trust)
    rom.join(5)
    assert again.trusted_by == "trust file" and rom.flashed == data

    # the hash is trusted for that board only, and another image is still refused
    other = tmp_path / "other.uf2"
    other.write_bytes(uf2_image(seed=2))
    back_in_bootsel(boot_drive)
    with pytest.raises(UserError) as err:
        flash.flash("pico-w", image=other, drive=boot_drive, trust_file=trust)
    assert err.value.exit_code == 2 and "other.uf2" not in drive_files(boot_drive)


def test_uf2_is_copied_whole_onto_the_boot_drive_found_under_media(tmp_path, boot_drive):
    data = uf2_image(blocks=300)  # 150 KiB: several chunks, so progress moves
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "RPI_PICO_W-v1.27.0.uf2").write_bytes(data)  # the name the profile gives
    trust = tmp_path / "images.toml"
    steps = []
    rom = BootRom(boot_drive, len(data))
    result = flash.flash("pico-w", cache_dir=cache, trust_file=trust, record_sha256=True,
                         drive_roots=[tmp_path / "media"],
                         progress=lambda done, total: steps.append((done, total)))
    rom.join(5)
    assert rom.flashed == data
    assert result.target == str(boot_drive) and result.method == "uf2" and result.rebooted
    assert steps[-1] == (len(data), len(data)) and len(steps) > 1


def test_a_drive_that_stays_means_the_board_did_not_take_the_image(tmp_path, boot_drive):
    image = tmp_path / "pico.uf2"
    image.write_bytes(uf2_image())
    with pytest.raises(UserError) as err:
        flash.flash("pico-w", image=image, drive=boot_drive, record_sha256=True,
                    trust_file=tmp_path / "images.toml", reboot_wait_s=0.3)
    assert err.value.exit_code == 1 and "BOOTSEL" in str(err.value)
    assert (boot_drive / "pico.uf2").read_bytes() == image.read_bytes()


def test_drive_gone_while_closing_is_most_likely_the_reboot(tmp_path, boot_drive,
                                                           monkeypatch):
    """A real boot ROM can reboot before the file system's last writes, so the final fsync
    fails with EIO on a drive that is gone; USB unplugging is the one thing played here."""
    import errno

    image = tmp_path / "pico.uf2"
    image.write_bytes(uf2_image())

    real_fsync = os.fsync

    def unplugged(fd):
        if not os.readlink(f"/proc/self/fd/{fd}").endswith(".uf2"):
            return real_fsync(fd)  # the trust file, written before the copy
        (boot_drive / "INFO_UF2.TXT").unlink()
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(flash.os, "fsync", unplugged)
    said = []
    result = flash.flash("pico-w", image=image, drive=boot_drive, record_sha256=True,
                         trust_file=tmp_path / "images.toml", say=said.append)
    assert result.rebooted
    assert any("most likely took the image" in line for line in said)


def test_drive_gone_mid_copy_is_a_link_error(tmp_path, boot_drive, monkeypatch):
    import errno

    image = tmp_path / "pico.uf2"
    image.write_bytes(uf2_image(blocks=400))  # more than one chunk

    def unplugged(done, total):
        if done < total:
            (boot_drive / "INFO_UF2.TXT").unlink(missing_ok=True)
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    with pytest.raises(UserError) as err:
        flash.flash("pico-w", image=image, drive=boot_drive, record_sha256=True,
                    trust_file=tmp_path / "images.toml", progress=unplugged)
    assert err.value.exit_code == 3
    assert "stopped after 65536 of 204800 bytes" in str(err.value)
    assert "BOOTSEL" in str(err.value)


def test_no_boot_drive_says_hold_bootsel(tmp_path):
    image = tmp_path / "pico.uf2"
    image.write_bytes(uf2_image())
    trust = tmp_path / "images.toml"
    with pytest.raises(UserError) as err:
        flash.flash("pico-w", image=image, trust_file=trust, record_sha256=True,
                    drive_roots=[tmp_path / "media"])
    assert err.value.exit_code == 3 and "hold its BOOTSEL button" in str(err.value)
    not_a_drive = tmp_path / "usbstick"
    not_a_drive.mkdir()
    with pytest.raises(UserError) as err:
        flash.flash("pico-w", image=image, trust_file=trust, drive=not_a_drive)
    assert err.value.exit_code == 3 and "not an RP2 boot drive" in str(err.value)
    assert list(not_a_drive.iterdir()) == []


def test_two_boot_drives_need_a_choice(tmp_path):
    for name in ("RPI-RP2", "RPI-RP21"):
        d = tmp_path / "media" / "tech" / name
        d.mkdir(parents=True)
        (d / "INFO_UF2.TXT").write_text("Board-ID: RPI-RP2\n")
    with pytest.raises(UserError) as err:
        flash.find_boot_drive(roots=[tmp_path / "media"])
    assert err.value.exit_code == 2 and "--drive" in str(err.value)


def test_missing_image_says_where_to_get_it(tmp_path):
    with pytest.raises(UserError) as err:
        flash.flash("pico-w", cache_dir=tmp_path / "empty", trust_file=tmp_path / "t.toml")
    assert err.value.exit_code == 2
    assert "RPI_PICO_W-v1.27.0.uf2" in str(err.value)
    assert "https://micropython.org/download/RPI_PICO_W/" in str(err.value)


@pytest.mark.parametrize("board,data,why", [
    ("pico-w", esp_image(), "not a UF2 file"),
    ("pico-w", uf2_image(family=0xE48BFF59), "another chip family (0xe48bff59"),
    ("pico-w", uf2_image(family=0xE48BFF59, absolute_first=True), "another chip family"),
    ("pico-w", uf2_image()[:512] + esp_image(512), "block 1 is not one"),
    ("pico-w", uf2_image()[:700], "512-byte blocks"),
    ("esp32-s3-devkitc-1", uf2_image(), "an ESP image starts with byte 0xe9"),
    ("esp32-s3-devkitc-1", b"", "empty"),
])
def test_an_image_for_another_board_is_refused_before_its_hash(tmp_path, board, data, why):
    image = tmp_path / "image"
    image.write_bytes(data)
    port = "/dev/no-such-port" if board.startswith("esp32") else None
    with pytest.raises(UserError) as err:
        flash.flash(board, image=image, record_sha256=True, trust_file=tmp_path / "t.toml",
                    port=port, drive_roots=[tmp_path])
    assert err.value.exit_code == 2 and why in str(err.value)
    assert not (tmp_path / "t.toml").exists()


def test_an_rp2040_image_may_start_with_an_absolute_block():
    board = flash.board_profile("pico-w")
    assert flash.image_format_problem(board, uf2_image(absolute_first=True)) is None


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(UserError) as err:
        flash.flash("pico", image=tmp_path / "x.uf2")
    assert err.value.exit_code == 2 and "Did you mean 'pico-w'?" in str(err.value)
    with pytest.raises(UserError) as err:
        flash.flash("pico-w", image=tmp_path / "x.uf2", port="/dev/ttyACM0")
    assert err.value.exit_code == 2 and "--port is for ESP32" in str(err.value)
    with pytest.raises(UserError) as err:
        flash.flash("esp32-s3-devkitc-1", image=tmp_path / "x.bin", drive=tmp_path)
    assert err.value.exit_code == 2 and "--drive is for RP2" in str(err.value)
    trust = tmp_path / "images.toml"
    trust.write_text("[[images]]\nboard = 3\n")
    image = tmp_path / "pico.uf2"
    image.write_bytes(uf2_image())
    with pytest.raises(UserError) as err:
        flash.flash("pico-w", image=image, trust_file=trust, drive=tmp_path)
    assert err.value.exit_code == 2 and str(trust) in str(err.value)


def test_esp_port_is_found_when_there_is_exactly_one():
    board = flash.board_profile("esp32-s3-devkitc-1")

    def found(*names):
        return [ports.FoundPort(n, "serial", board.id, board.name, "10C4:EA60", "x")
                for n in names]

    assert flash.pick_serial_port(board, found("/dev/ttyUSB0")) == "/dev/ttyUSB0"
    with pytest.raises(UserError) as err:
        flash.pick_serial_port(board, found())
    assert err.value.exit_code == 3 and "dordt provision ports" in str(err.value)
    with pytest.raises(UserError) as err:
        flash.pick_serial_port(board, found("/dev/ttyUSB0", "/dev/ttyACM0"))
    assert err.value.exit_code == 2 and "--port" in str(err.value)


@pytest.fixture
def silent_port():
    """A real pty pair: esptool writes to the slave; the master side drains what it
    writes, as a USB-UART with no bootloader behind it would, and never answers."""
    master, slave = os.openpty()
    stop = threading.Event()

    def drain():
        while not stop.is_set():
            try:
                os.read(master, 4096)
            except OSError:
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    yield os.ttyname(slave)
    stop.set()
    os.close(slave)
    os.close(master)
    reader.join(5)


def test_no_bootloader_on_the_port_says_hold_boot(tmp_path, silent_port):
    """As the technician sees it: the command in its own process (so no other test's
    threads write into what is checked), exit 3, the BOOT advice, no traceback."""
    image = tmp_path / "ESP32_GENERIC_S3-v1.27.0.bin"
    image.write_bytes(esp_image())
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "dordt.cli", "provision", "flash", "--board",
         "esp32-s3-devkitc-1", "--image", str(image), "--port", silent_port,
         "--record-sha256", "--trust-file", str(tmp_path / "images.toml")],
        capture_output=True, text=True, timeout=120)
    took_s = time.monotonic() - started
    print(f"esptool gave up on the silent pty after {took_s:.1f} s")
    assert done.returncode == 3, done.stderr
    assert f"no ESP bootloader answers on {silent_port}" in done.stderr
    assert "hold BOOT, press and release RESET, release BOOT" in done.stderr
    assert took_s < 60
    assert "Traceback" not in done.stdout + done.stderr


def test_a_missing_port_is_a_link_error(tmp_path):
    image = tmp_path / "esp.bin"
    image.write_bytes(esp_image())
    with pytest.raises(UserError) as err:
        flash.flash("esp32-s3-devkitc-1", image=image, port=str(tmp_path / "ttyUSB9"),
                    record_sha256=True, trust_file=tmp_path / "t.toml")
    assert err.value.exit_code == 3 and "dordt provision ports" in str(err.value)
