"""`dordt provision flash`: put MicroPython onto a board, from an image already on this laptop.

In:  a board profile (hardware/data/boards/<id>.toml), an image (a file, or the file the
     profile's [micropython] image names in a local cache directory: the field is offline),
     and where the board is: a serial port for an ESP32-S3, the RP2 boot drive for a Pico W.
Out: the image written.  ESP32-S3: esptool's Python API (connect, stub, attach flash,
     write at the profile's image_offset with esptool's own MD5 check of what was written,
     hard reset).  Pico W: the UF2 copied onto the boot drive in one pass and fsynced; the
     boot ROM flashes blocks as they arrive and reboots when the last one is in, so the
     drive going away is the sign the board took it.
On failure: `UserError`, with nothing written whenever the fault is found before writing:
     exit 2  bad input: unknown profile, image missing, an image of the wrong format for the
             board, an image whose sha256 neither the profile nor this laptop's trust file
             names (until the technician records it with --record-sha256), the wrong chip on
             the port, more than one board or drive to choose from;
     exit 3  the board or its link: no bootloader answering on the port (hold BOOT, press
             RESET, release BOOT), no RP2 boot drive (hold BOOTSEL while plugging in), the
             link or the drive lost mid-write;
     exit 1  written, but the board did not take it (the boot drive never went away).

Trust: an image is written only when its sha256 is the one its board profile names, or one
the technician recorded for that board in the trust file (default
~/.config/dordt/images.toml) with `--record-sha256` after checking it.  The hash is taken
of the very bytes that are then written.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import hashlib
import json
import os
import struct
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dordt.errors import UserError
from hardware.profiles import Board, ProfileError, load_boards
from provisioning import ports
from provisioning.build import user_cache_dir

EXIT_NOT_TAKEN = 1
EXIT_BAD_INPUT = 2
EXIT_BOARD = 3

ESP_BAUD = 460800  # MicroPython's documented esptool rate; native USB ignores it
ESP_CONNECT_ATTEMPTS = 7  # esptool's own default (a few seconds on a silent port)
ESP_IMAGE_MAGIC = 0xE9  # first byte of an ESP image (esptool bin_image.ESPLoader.ESP_IMAGE_MAGIC)
# UF2 block (github.com/microsoft/uf2, "File format"): 512 bytes, magics at 0, 4 and 508;
# flag 0x2000 says word 7 holds a family id (pico-sdk boot/uf2.h: RP2040 0xE48BFF56,
# "absolute" 0xE48BFF57 for blocks written at a fixed address on any RP2 chip).
UF2_BLOCK_BYTES = 512
UF2_MAGIC_START = (0x0A324655, 0x9E5D5157)
UF2_MAGIC_END = 0x0AB16F30
UF2_FAMILY_FLAG = 0x00002000
UF2_FAMILY_RP2040 = 0xE48BFF56
UF2_FAMILY_ABSOLUTE = 0xE48BFF57
UF2_REBOOT_WAIT_S = 15.0
COPY_CHUNK_BYTES = 64 * 1024

BOOTLOADER_HINT = ("put the board in bootloader mode: hold BOOT, press and release RESET, "
                   "release BOOT; then run the same command again")
BOOTSEL_HINT = ("unplug the Pico W, hold its BOOTSEL button while plugging it back in, "
                "release it when the RPI-RP2 drive appears, then run the same command again")
TRUST_FILE_HEADER = """\
# MicroPython images checked by a technician and recorded with
# `dordt provision flash --record-sha256`.  `dordt provision flash` writes an image only when
# its sha256 is named by the board's hardware profile or listed here for that board.
"""

Progress = Callable[[int, int], None]  # (bytes written so far, total bytes)


@dataclass(frozen=True)
class Image:
    """An image as read once from disk: the bytes that are hashed are the bytes written."""

    path: Path
    data: bytes
    sha256: str

    @property
    def size_bytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class FlashResult:
    board: str
    image: str
    sha256: str
    size_bytes: int
    method: str              # "esptool" or "uf2"
    trusted_by: str          # "profile", "trust file" or "recorded now"
    target: str              # the serial port or the boot drive written to
    rebooted: bool
    seconds: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# -- profile and image ---------------------------------------------------------------------


def board_profile(board_id: str, profiles_root: Path | None = None) -> Board:
    try:
        boards = load_boards(profiles_root)
    except ProfileError as exc:
        raise UserError(f"hardware profile: {exc}", EXIT_BAD_INPUT) from None
    if board_id not in boards:
        near = difflib.get_close_matches(board_id, boards, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise UserError(f"--board {board_id!r} is not a board profile; known: "
                        f"{', '.join(sorted(boards))}.{hint}", EXIT_BAD_INPUT)
    return boards[board_id]


def default_cache_dir() -> Path:
    return user_cache_dir("images")


def default_trust_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".config")
    return Path(base) / "dordt" / "images.toml"


def image_path(board: Board, image: Path | None = None, cache_dir: Path | None = None) -> Path:
    """The image file: `image` itself, or the profile's image name in `cache_dir`."""
    if image is not None:
        return Path(image)
    return Path(cache_dir or default_cache_dir()) / board.micropython["image"]


def read_image(board: Board, path: Path) -> Image:
    """Read the image once, and check it is an image for this kind of board."""
    mpy = board.micropython
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(
            f"no image at {path}: the {board.name} needs MicroPython {mpy['version']} "
            f"({mpy['image']}); download it from https://micropython.org/download/"
            f"{mpy['board']}/ while online and keep it in that folder (or give --image FILE)",
            EXIT_BAD_INPUT) from None
    except OSError as exc:
        raise UserError(f"cannot read the image {path}: {exc.strerror or exc}",
                        EXIT_BAD_INPUT) from None
    problem = image_format_problem(board, data)
    if problem:
        raise UserError(f"{path} is not a MicroPython image for the {board.name}: {problem}. "
                        f"Use {mpy['image']} from https://micropython.org/download/"
                        f"{mpy['board']}/", EXIT_BAD_INPUT)
    return Image(path, data, hashlib.sha256(data).hexdigest())


def flash_method(board: Board) -> str:
    if board.mcu.startswith("esp32"):
        return "esptool"
    if board.mcu.startswith("rp2"):
        return "uf2"
    raise UserError(f"board {board.id}: no way to flash an {board.mcu} is known", EXIT_BAD_INPUT)


def image_format_problem(board: Board, data: bytes) -> str | None:
    """Why `data` cannot be an image for `board` (None when it can)."""
    if not data:
        return "the file is empty"
    if flash_method(board) == "esptool":
        if data[0] != ESP_IMAGE_MAGIC:
            return (f"an ESP image starts with byte {ESP_IMAGE_MAGIC:#04x}, this one with "
                    f"{data[0]:#04x}")
        return None
    if len(data) % UF2_BLOCK_BYTES or len(data) < UF2_BLOCK_BYTES:
        return f"a UF2 file is made of {UF2_BLOCK_BYTES}-byte blocks"
    families = set()
    for offset in range(0, len(data), UF2_BLOCK_BYTES):
        start0, start1, flags = struct.unpack_from("<III", data, offset)
        (family,) = struct.unpack_from("<I", data, offset + 28)
        (end,) = struct.unpack_from("<I", data, offset + UF2_BLOCK_BYTES - 4)
        if (start0, start1) != UF2_MAGIC_START or end != UF2_MAGIC_END:
            return f"it is not a UF2 file (block {offset // UF2_BLOCK_BYTES} is not one)"
        if flags & UF2_FAMILY_FLAG:
            families.add(family)
    # an "absolute" block (a partition table, or picotool's RP2350-E10 workaround) goes
    # with any chip: the chip is told by the other blocks
    families.discard(UF2_FAMILY_ABSOLUTE)
    if families - {UF2_FAMILY_RP2040}:
        others = ", ".join(f"{f:#010x}" for f in sorted(families - {UF2_FAMILY_RP2040}))
        return f"it is a UF2 for another chip family ({others}; RP2040 is " \
               f"{UF2_FAMILY_RP2040:#010x})"
    return None


# -- trust -----------------------------------------------------------------------------------


def load_trusted(trust_file: Path) -> list[dict]:
    """The recorded images ([[images]] board, file, sha256, recorded_utc); [] if no file."""
    try:
        doc = tomllib.loads(trust_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"trust file {trust_file}: {exc}; fix or remove it (then record the "
                        "images again with --record-sha256)", EXIT_BAD_INPUT) from None
    images = doc.get("images", [])
    if not isinstance(images, list) or not all(
            isinstance(i, dict) and isinstance(i.get("board"), str)
            and isinstance(i.get("sha256"), str) for i in images):
        raise UserError(f"trust file {trust_file}: every [[images]] entry needs board and "
                        "sha256 strings; fix or remove it", EXIT_BAD_INPUT)
    return images


def trusted_by(board: Board, image: Image, trust_file: Path) -> str | None:
    """"profile" or "trust file" when the image's hash is named there; None otherwise."""
    if board.image_verified and board.micropython["sha256"] == image.sha256:
        return "profile"
    for entry in load_trusted(trust_file):
        if entry["board"] == board.id and entry["sha256"] == image.sha256:
            return "trust file"
    return None


def record_trusted(board: Board, image: Image, trust_file: Path) -> None:
    """Add the image's hash for this board to the trust file (written atomically)."""
    from fleet.files import write_file_atomic

    entries = load_trusted(trust_file)
    entries.append({"board": board.id, "file": image.path.name, "sha256": image.sha256,
                    "recorded_utc": datetime.datetime.now(datetime.UTC)
                    .strftime("%Y-%m-%dT%H:%M:%SZ")})
    # json.dumps of a str is a valid TOML basic string (same escapes, \uXXXX for the rest)
    text = TRUST_FILE_HEADER + "".join(
        "\n[[images]]\n" + "".join(f"{key} = {json.dumps(str(value))}\n"
                                   for key, value in entry.items())
        for entry in entries)
    write_file_atomic(trust_file, text.encode(), 0o644)


def unknown_hash_message(board: Board, image: Image, trust_file: Path) -> str:
    mpy = board.micropython
    return (f"refusing to flash {image.path.name}: its sha256 {image.sha256} is not named by "
            f"the {board.id} profile nor recorded in {trust_file}. Check it: download "
            f"{mpy['image']} from https://micropython.org/download/{mpy['board']}/ on a "
            "trusted connection (or take your team's recorded hash) and compare "
            f"`sha256sum {image.path}`; if they match, run the same command again with "
            "--record-sha256 to trust it on this laptop")


# -- RP2: the boot drive ----------------------------------------------------------------------


def find_boot_drive(drive: Path | None = None, roots=None) -> Path:
    """The RP2 boot drive to copy onto: `drive` (checked), or the one mounted drive found."""
    if drive is not None:
        drive = Path(drive)
        if not ports.is_rp2_boot_drive(drive):
            raise UserError(f"{drive} is not an RP2 boot drive (no INFO_UF2.TXT saying "
                            f"{ports.RP2_BOARD_ID_LINE}): {BOOTSEL_HINT}", EXIT_BOARD)
        return drive
    drives = ports.find_rp2_boot_drives(roots)
    if not drives:
        where = ", ".join(str(r) for r in (ports.DRIVE_ROOTS if roots is None else roots))
        raise UserError(f"no RP2 boot drive is mounted (looked under {where}): "
                        f"{BOOTSEL_HINT}; if the drive appears but is not mounted, mount it "
                        "and give --drive PATH", EXIT_BOARD)
    if len(drives) > 1:
        raise UserError(f"{len(drives)} RP2 boot drives are mounted "
                        f"({', '.join(map(str, drives))}): give --drive PATH for the one to "
                        "flash", EXIT_BAD_INPUT)
    return drives[0]


def copy_uf2(image: Image, drive: Path, progress: Progress | None = None,
             reboot_wait_s: float = UF2_REBOOT_WAIT_S) -> str:
    """Copy the UF2 onto the boot drive in one pass and fsync it.  Returns "rebooted" (the
    drive went away afterwards: the board took the image), "gone at close" (every byte was
    handed over and the drive vanished while the file was being closed: most likely the
    reboot, which can come before the file system's last writes) or "stayed" (the drive is
    still there after `reboot_wait_s`: the board did not take it).

    Straight to its final name: the boot ROM flashes each block as it arrives whatever the
    file is called, so a temporary name and a rename would protect nothing."""
    target = drive / image.path.name
    written = 0
    total = image.size_bytes
    try:
        with open(target, "wb") as f:
            view = memoryview(image.data)
            while written < total:
                written += f.write(view[written:written + COPY_CHUNK_BYTES])
                if progress:
                    progress(written, total)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        if written < total or drive_present(drive):
            raise UserError(
                f"the copy onto {drive} stopped after {written} of {total} bytes "
                f"({exc.strerror or exc}); the Pico W cannot be harmed this way (its boot ROM "
                f"is read-only): {BOOTSEL_HINT}", EXIT_BOARD) from None
        return "gone at close"
    deadline = time.monotonic() + reboot_wait_s
    while drive_present(drive):
        if time.monotonic() >= deadline:
            return "stayed"
        time.sleep(0.1)
    return "rebooted"


def drive_present(drive: Path) -> bool:
    # os.path.exists, not Path.exists: a drive yanked from under its mount answers EIO
    return os.path.exists(drive / "INFO_UF2.TXT")


# -- ESP32-S3: esptool -------------------------------------------------------------------------


def write_esp_image(board: Board, image: Image, port: str, baud: int = ESP_BAUD,
                    connect_attempts: int = ESP_CONNECT_ATTEMPTS,
                    erase_all: bool = False) -> None:
    """Write the image at the profile's image_offset with esptool's API; esptool shows its
    own (rich) progress and checks what it wrote against an MD5 the stub computes."""
    import serial
    from esptool.cmds import (
        attach_flash,
        connect_esp,
        erase_flash,
        reset_chip,
        run_stub,
        write_flash,
    )
    from esptool.util import FatalError

    link_faults = (FatalError, serial.SerialException, OSError)
    if not os.path.exists(port) and "://" not in port:
        raise UserError(f"no serial port {port}: is the board plugged in? "
                        "`dordt provision ports` lists the boards it sees", EXIT_BOARD)
    try:
        esp = connect_esp(port, chip="auto", connect_attempts=connect_attempts)
    except link_faults as exc:
        raise UserError(f"no ESP bootloader answers on {port} ({_first_line(exc)}): "
                        f"{BOOTLOADER_HINT}", EXIT_BOARD) from None
    with esp:  # closes the port whatever happens
        chip = esp.CHIP_NAME.lower().replace("-", "")
        if chip != board.mcu:
            raise UserError(f"the board on {port} is an {esp.CHIP_NAME}, not the {board.mcu} "
                            f"of {board.id}: give the right --board, or plug in a "
                            f"{board.name}", EXIT_BAD_INPUT)
        try:
            esp = run_stub(esp)
            if baud != esp.ESP_ROM_BAUD:
                esp.change_baud(baud)
            attach_flash(esp)
            if erase_all:
                erase_flash(esp)
            write_flash(esp, [(board.image_offset, image.data)])
            reset_chip(esp, "hard-reset")
        except link_faults as exc:
            raise UserError(
                f"flashing {port} stopped ({_first_line(exc)}); the board has no working "
                f"MicroPython until a flash completes, and cannot be harmed this way (its "
                f"bootloader is in ROM): {BOOTLOADER_HINT}", EXIT_BOARD) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def pick_serial_port(board: Board, found: list[ports.FoundPort] | None = None) -> str:
    """The one serial port a board of this profile is on (`--port` left out)."""
    if found is None:
        found = ports.list_ports()
    # a virtual board has no bootloader to flash: only USB serial ports count
    mine = [p.port for p in found if p.board == board.id and p.kind == "serial"]
    if not mine:
        raise UserError(f"no {board.name} found on a serial port: plug it in (a data cable), "
                        "check `dordt provision ports`, or give --port PORT", EXIT_BOARD)
    if len(mine) > 1:
        raise UserError(f"{len(mine)} ports have a {board.name} ({', '.join(mine)}): give "
                        "--port PORT for the one to flash", EXIT_BAD_INPUT)
    return mine[0]


# -- the whole step -----------------------------------------------------------------------------


def flash(board_id: str, *, image: Path | None = None, cache_dir: Path | None = None,
          port: str | None = None, drive: Path | None = None, record_sha256: bool = False,
          trust_file: Path | None = None, drive_roots=None, erase_all: bool = False,
          esp_connect_attempts: int = ESP_CONNECT_ATTEMPTS,
          reboot_wait_s: float = UF2_REBOOT_WAIT_S, progress: Progress | None = None,
          say: Callable[[str], None] = lambda line: None,
          profiles_root: Path | None = None) -> FlashResult:
    """Check, then write.  Every check that can refuse (profile, image, format, hash, which
    board) runs before a byte goes to the board.  `say` gets the lines a technician should
    read (the recorded hash)."""
    started = time.monotonic()
    board = board_profile(board_id, profiles_root)
    method = flash_method(board)
    if method == "esptool" and drive is not None:
        raise UserError(f"--drive is for RP2 boards; the {board.name} is flashed over its "
                        "serial port (--port)", EXIT_BAD_INPUT)
    if method == "uf2" and port is not None:
        raise UserError(f"--port is for ESP32 boards; the {board.name} is flashed by copying "
                        "onto its boot drive (--drive, or found by itself)", EXIT_BAD_INPUT)
    img = read_image(board, image_path(board, image, cache_dir))
    trust_file = Path(trust_file) if trust_file else default_trust_file()
    source = trusted_by(board, img, trust_file)
    if source is not None and record_sha256:
        say(f"image {img.path.name}: sha256 {img.sha256} is trusted already (by the "
            f"{source}); nothing recorded")
    if source is None:
        if not record_sha256:
            raise UserError(unknown_hash_message(board, img, trust_file), EXIT_BAD_INPUT)
        record_trusted(board, img, trust_file)
        source = "recorded now"
        say(f"image {img.path.name}: sha256 {img.sha256}")
        say(f"recorded as trusted for {board.id} in {trust_file}; later runs accept it")
    if method == "uf2":
        target = find_boot_drive(drive, drive_roots)
        outcome = copy_uf2(img, target, progress, reboot_wait_s)
        if outcome == "gone at close":
            say(f"the drive {target} went away while the copy was being closed: the board most "
                "likely took the image and rebooted; `dordt provision ports` lists it as a "
                "serial port (MicroPython USB CDC) when it did")
        rebooted = outcome != "stayed"
        if not rebooted:
            raise UserError(
                f"{img.path.name} was copied onto {target}, but the drive is still there "
                f"after {reboot_wait_s:g} s: the board did not take the image. {BOOTSEL_HINT}",
                EXIT_NOT_TAKEN)
    else:
        target = port or pick_serial_port(board)
        write_esp_image(board, img, target, connect_attempts=esp_connect_attempts,
                        erase_all=erase_all)
        rebooted = True
    return FlashResult(board.id, str(img.path), img.sha256, img.size_bytes, method, source,
                       str(target), rebooted, round(time.monotonic() - started, 3))


# -- command ---------------------------------------------------------------------------------


def add_flash_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--board", required=True, metavar="PROFILE",
                        help="board profile: esp32-s3-devkitc-1 or pico-w")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", metavar="FILE", type=Path,
                        help="the MicroPython image (.bin for ESP32-S3, .uf2 for Pico W)")
    source.add_argument("--cache", metavar="DIR", type=Path,
                        help="folder holding the image the profile names "
                        "(default ~/.cache/dordt/images)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--port", metavar="PORT",
                       help="ESP32-S3: its serial port (default: the one such board found)")
    where.add_argument("--drive", metavar="PATH", type=Path,
                       help="Pico W: its mounted RPI-RP2 boot drive (default: found under "
                       "/media, /run/media, /mnt)")
    parser.add_argument("--record-sha256", action="store_true",
                        help="trust this image's sha256 for this board from now on (check it "
                        "against micropython.org first); it is shown and recorded")
    parser.add_argument("--trust-file", metavar="TOML", type=Path,
                        help="where recorded image hashes are kept "
                        "(default ~/.config/dordt/images.toml)")
    parser.add_argument("--erase-all", action="store_true",
                        help="ESP32-S3: erase the whole flash first (its files too)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def command_flash(args: argparse.Namespace) -> int:
    from rich.console import Console

    out = Console(stderr=True, highlight=False)
    as_json = getattr(args, "json", False)
    # esptool draws its own progress; the bar here is for the UF2 copy, shown from its
    # first block on
    with _CopyBar(out, disabled=as_json) as bar:
        result = flash(args.board, image=args.image, cache_dir=args.cache, port=args.port,
                       drive=args.drive, record_sha256=args.record_sha256,
                       trust_file=args.trust_file, erase_all=args.erase_all,
                       progress=bar.update,
                       say=lambda line: out.print(line, markup=False, soft_wrap=True))
    if as_json:
        print(json.dumps(result.as_dict(), sort_keys=True))
        return 0
    then = ("its boot drive went away: the board rebooted into MicroPython"
            if result.method == "uf2" else "the board was reset into MicroPython")
    print(f"flashed {Path(result.image).name} ({result.size_bytes} bytes, sha256 "
          f"{result.sha256[:16]}..., trusted by {result.trusted_by}) onto {result.target} in "
          f"{result.seconds:.1f} s; {then}. Next: `dordt provision ports`, then "
          "`dordt provision install`")
    return 0


class _CopyBar:
    """A rich progress bar started by the first update (none when nothing is copied)."""

    def __init__(self, console, disabled: bool):
        self.console = console
        self.disabled = disabled
        self.progress = None
        self.task = None

    def __enter__(self) -> _CopyBar:
        return self

    def update(self, done: int, total: int) -> None:
        if self.disabled:
            return
        if self.progress is None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TransferSpeedColumn,
            )

            self.progress = Progress(TextColumn("copy onto the boot drive"), BarColumn(),
                                     DownloadColumn(), TransferSpeedColumn(),
                                     console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("copy", total=total)
        self.progress.update(self.task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
