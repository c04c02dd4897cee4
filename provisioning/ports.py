"""`dordt provision ports`: which boards are plugged in, and where.

In:  the serial ports the OS lists (pyserial's `comports()`, or a list of `ListPortInfo`
     given by a test), running virtual boards (`provisioning.virtual_board.running_boards()`,
     when that module is there) and mounted RP2 boot drives (a Pico W held in BOOTSEL mode:
     a directory holding INFO_UF2.TXT with `Board-ID: RPI-RP2`, under /media, /run/media or
     /mnt).
Out: `FoundPort`s: the port (device path, pty or drive directory), the board recognised
     from its USB VID:PID by the hardware profiles (hardware/data/boards/*.toml), the USB id
     and what the port is.  USB serial devices no profile knows are listed too, marked
     unknown; ports without a USB id (built-in UARTs) are not.
On failure: nothing raises for "no board": `command_ports` prints what to try (cable,
     driver, dialout group, BOOTSEL, the virtual board) and exits 1.  A broken hardware
     profile is a `UserError` with exit code 2.

Exit codes of `command_ports`: 0 at least one board recognised (serial, BOOTSEL drive or
virtual), 1 none.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from dordt.errors import UserError
from hardware.profiles import ProfileError, board_for_usb, load_boards

EXIT_NONE_FOUND = 1
EXIT_BAD_INPUT = 2

# The RP2040 boot ROM's USB id (RP2040 datasheet §2.8.4 "USB mass storage interface"): in
# BOOTSEL mode the board is a UF2 drive plus a PICOBOOT vendor interface, never a serial port.
RP2_BOOTSEL_USB = (0x2E8A, 0x0003)
BOOTSEL_WHAT = "in BOOTSEL mode: a UF2 drive, not a serial port (`dordt provision flash`)"
# Where desktop Linux (udisks: /media/USER, /run/media/USER) and people (/mnt) mount drives.
DRIVE_ROOTS = (Path("/media"), Path("/run/media"), Path("/mnt"))
RP2_BOARD_ID_LINE = "Board-ID: RPI-RP2"

NONE_FOUND_ADVICE = """\
No board found. What to try:
  - Use a data cable: many USB cables only charge. Try another cable and another USB port.
  - ESP32-S3-DevKitC-1: the port marked UART needs the Silicon Labs CP210x driver (built into
    Linux and macOS, a download on Windows); the port marked USB needs no driver.
  - Linux: to open serial ports your user must be in the dialout group:
    `sudo usermod -aG dialout $USER`, then log out and back in.
  - Pico W: plug it in without holding BOOTSEL. Hold BOOTSEL only to flash MicroPython; the
    board then shows up as a drive (RPI-RP2), not as a serial port.
  - No board at hand? Practise on a virtual one: `dordt provision virtual-board`."""


@dataclass(frozen=True)
class FoundPort:
    """One place a board (or an unknown USB serial device) was found."""

    port: str              # /dev/ttyACM0, a virtual board's pty, or a boot drive directory
    kind: str              # "serial", "uf2-drive", "virtual" or "unknown-usb"
    board: str | None      # hardware profile id, None when no profile knows the device
    board_name: str
    usb_id: str | None     # "2E8A:0005"
    what: str

    @property
    def recognised(self) -> bool:
        return self.board is not None

    def as_dict(self) -> dict:
        return asdict(self)


def usb_id_text(vid: int, pid: int) -> str:
    return f"{vid:04X}:{pid:04X}"


def list_ports(serial_ports: Iterable | None = None,
               virtual_boards: Iterable[Mapping] | None = None,
               drive_roots: Iterable[Path] | None = None,
               profiles_root: Path | None = None) -> list[FoundPort]:
    """Every board found: USB serial ports first (by device name), then RP2 boot drives,
    then virtual boards.  Each source defaults to what this machine has; tests pass their
    own (`ListPortInfo` objects, dicts as `running_boards()` returns, drive directories)."""
    if serial_ports is None:
        from serial.tools.list_ports import comports

        serial_ports = comports()
    if virtual_boards is None:
        virtual_boards = running_virtual_boards()
    try:
        boards = load_boards(profiles_root)
        found = [p for info in sorted(serial_ports, key=lambda i: i.device)
                 if (p := _serial_port(info, profiles_root)) is not None]
        bootsel = board_for_usb(*RP2_BOOTSEL_USB, profiles_root)
    except ProfileError as exc:
        raise UserError(f"hardware profile: {exc}", EXIT_BAD_INPUT) from None
    for drive in find_rp2_boot_drives(drive_roots):
        found.append(FoundPort(
            str(drive), "uf2-drive", bootsel[0].id if bootsel else None,
            bootsel[0].name if bootsel else "RP2040 board",
            usb_id_text(*RP2_BOOTSEL_USB),
            # the boot ROM is the same on a Pico and a Pico W: the drive cannot tell them apart
            "in BOOTSEL mode: RP2040 boot drive, ready for `dordt provision flash`"))
    for vb in virtual_boards:
        found.append(_virtual_port(vb, boards))
    return found


def _serial_port(info, profiles_root: Path | None) -> FoundPort | None:
    vid, pid = getattr(info, "vid", None), getattr(info, "pid", None)
    if vid is None or pid is None:
        return None  # a built-in UART or a pty: nothing says a board is on it
    usb = usb_id_text(vid, pid)
    match = board_for_usb(vid, pid, profiles_root)
    if match is None:
        described = " ".join(x for x in (getattr(info, "manufacturer", None),
                                         getattr(info, "product", None)
                                         or getattr(info, "description", None)) if x)
        return FoundPort(info.device, "unknown-usb", None, "unknown", usb,
                         f"{described or 'USB serial device'}: no hardware profile has "
                         "this USB id")
    board, usb_id = match
    if (vid, pid) == RP2_BOOTSEL_USB:
        return FoundPort(info.device, "serial", board.id, board.name, usb, BOOTSEL_WHAT)
    what = usb_id.what
    if os.path.exists(info.device) and not os.access(info.device, os.R_OK | os.W_OK):
        what += " (no permission to open it: join the dialout group, log in again)"
    return FoundPort(info.device, "serial", board.id, board.name, usb, what)


def _virtual_port(vb: Mapping, boards: dict) -> FoundPort:
    # running_boards() dicts (provisioning/virtual_board.py): port, profile, usb_vid and
    # usb_pid of the profile it plays, and pid, the OS process serving the board.
    profile = vb.get("profile")
    board = boards.get(profile) if isinstance(profile, str) else None
    vid, pid = vb.get("usb_vid"), vb.get("usb_pid")
    usb = usb_id_text(vid, pid) if isinstance(vid, int) and isinstance(pid, int) else None
    process = vb.get("pid")
    what = "virtual board (MicroPython in Node on a pty" + \
        (f", process {process})" if process is not None else ")")
    return FoundPort(str(vb.get("port")), "virtual", board.id if board else profile,
                     board.name if board else str(profile), usb, what)


def running_virtual_boards() -> list[dict]:
    """The virtual boards running on this machine; none when the module is not there."""
    try:
        from provisioning.virtual_board import running_boards
    except ModuleNotFoundError as exc:
        if exc.name == "provisioning.virtual_board":
            return []
        raise
    except ImportError:
        return []  # the module is there but has no running_boards() (yet)
    return list(running_boards())


def is_rp2_boot_drive(path: Path) -> bool:
    """A mounted RP2040 boot ROM drive: INFO_UF2.TXT names Board-ID RPI-RP2."""
    try:
        info = (path / "INFO_UF2.TXT").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return any(line.strip() == RP2_BOARD_ID_LINE for line in info.splitlines())


def find_rp2_boot_drives(roots: Iterable[Path] | None = None) -> list[Path]:
    """RP2 boot drives mounted under `roots` (default /media, /run/media, /mnt), looked
    for at the root itself and up to two levels down (/media/USER/RPI-RP2)."""
    drives: list[Path] = []
    for root in DRIVE_ROOTS if roots is None else roots:
        for candidate in _dirs_to_depth(Path(root), 2):
            if is_rp2_boot_drive(candidate) and candidate not in drives:
                drives.append(candidate)
    return drives


def _dirs_to_depth(root: Path, depth: int) -> list[Path]:
    out = [root]
    if depth == 0:
        return out
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:  # missing, not a directory, not ours to read, or a drive going away
        return out
    for child in children:
        out.extend(_dirs_to_depth(child, depth - 1))
    return out


# -- command ---------------------------------------------------------------------------------


def add_ports_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: {\"ports\": [...], \"boards_found\": N}")


def command_ports(args: argparse.Namespace) -> int:
    found = list_ports()
    boards = sum(1 for p in found if p.recognised)
    if getattr(args, "json", False):
        print(json.dumps({"ports": [p.as_dict() for p in found], "boards_found": boards},
                         sort_keys=True))
    else:
        from rich.console import Console

        out = Console(highlight=False)
        if found:
            out.print(ports_table(found))
    if boards == 0:
        # plain print: rich would re-wrap the advice (and split the commands in it)
        print(NONE_FOUND_ADVICE, file=sys.stderr)
        return EXIT_NONE_FOUND
    return 0


def ports_table(found: list[FoundPort]):
    from rich.table import Table
    from rich.text import Text

    table = Table("port", "board", "USB id", "what", title="boards found", title_justify="left")
    for p in found:
        # Text, not markup: a device's own description may hold "[...]"
        board = p.board_name if p.board is None else f"{p.board_name} ({p.board})"
        table.add_row(Text(p.port), Text(board), Text(p.usb_id or "-"), Text(p.what))
    return table
