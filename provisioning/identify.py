"""Which board is on the other end of a link: MicroPython's own answer, matched to a hardware
profile (hardware/data/boards/), and the .mpy format and architecture its firmware needs.

In:  an open `BoardLink`.
Out: `BoardInfo`: the profile, MicroPython version, .mpy version and native architecture
     (from `sys.implementation._mpy`, the value mip and mpremote use), free flash and heap,
     whether it is a virtual board.
On failure: `UserError` (exit 2) when the board is not the one asked for or runs a
     MicroPython whose .mpy files this tool cannot write, with what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from dordt.errors import UserError
from hardware.profiles import Board, load_boards

EXIT_BAD_INPUT = 2

# MicroPython's MP_NATIVE_ARCH_* numbering (py/persistentcode.h) as mpy-cross -march names.
NATIVE_ARCHES = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp",
                 "armv7emdp", "xtensa", "xtensawin", "rv32imc", "rv64imc")
MPY_VERSION = (6, 3)  # what mpy-cross 1.27 writes; boards from MicroPython 1.23 on load it

# How each MCU's MicroPython names itself: sys.platform, and a piece of
# sys.implementation._machine ("ESP32S3 module with ESP32S3", "Raspberry Pi Pico W with RP2040").
PLATFORMS = {"esp32s3": ("esp32", "ESP32S3"), "rp2040": ("rp2", "Pico W")}

PROBE = """
import sys, os, gc, json
try:
    import vboard
    v = vboard.PROFILE
except ImportError:
    v = None
try:
    st = os.statvfs("/")
    free = st[0] * st[3]
except (AttributeError, OSError):
    free = None
gc.collect()
print(json.dumps({"platform": sys.platform, "machine": sys.implementation._machine,
    "version": ".".join(str(n) for n in sys.implementation.version[:3]),
    "mpy": getattr(sys.implementation, "_mpy", None), "virtual": v,
    "free_flash": free, "free_heap": gc.mem_free()}))
"""


@dataclass(frozen=True)
class BoardInfo:
    profile: Board | None
    platform: str
    machine: str
    micropython: str
    mpy_version: tuple[int, int] | None
    arch: str | None
    virtual: bool
    free_flash_bytes: int | None
    free_heap_bytes: int

    @property
    def name(self) -> str:
        if self.profile is None:
            return self.machine
        return ("virtual " if self.virtual else "") + self.profile.name


def identify(link, expected: str | None = None) -> BoardInfo:
    """Ask the board what it is; `expected` (a profile id) must match when given."""
    raw = link.exec_json(PROBE, "asking the board what it is")
    boards = load_boards()
    profile = None
    if raw.get("virtual"):
        profile = boards.get(raw["virtual"])
    else:
        for board in boards.values():
            platform, machine = PLATFORMS.get(board.mcu, (None, None))
            if raw["platform"] == platform and machine and machine in raw["machine"]:
                profile = board
    mpy = raw.get("mpy")
    info = BoardInfo(
        profile=profile, platform=raw["platform"], machine=raw["machine"],
        micropython=raw["version"],
        mpy_version=(mpy & 0xFF, (mpy >> 8) & 3) if mpy is not None else None,
        arch=NATIVE_ARCHES[(mpy >> 10) & 0xF] if mpy is not None else None,
        virtual=bool(raw.get("virtual")), free_flash_bytes=raw.get("free_flash"),
        free_heap_bytes=raw["free_heap"],
    )
    if expected is not None:
        check_board(info, expected)
    if info.mpy_version is not None and info.mpy_version != MPY_VERSION:
        raise UserError(
            f"the board runs MicroPython {info.micropython}, whose .mpy format "
            f"({info.mpy_version[0]}.{info.mpy_version[1]}) this tool does not write: flash "
            "MicroPython 1.27 first (`dordt provision flash`)", EXIT_BAD_INPUT)
    return info


def check_board(info: BoardInfo, expected: str) -> None:
    boards = load_boards()
    if expected not in boards:
        raise UserError(f"unknown board profile {expected!r}: use one of "
                        f"{', '.join(sorted(boards))}", EXIT_BAD_INPUT)
    if info.profile is None or info.profile.id != expected:
        raise UserError(
            f"wrong board: the board on this port is a {info.name} ({info.machine}), not a "
            f"{boards[expected].name}: take the right board from the tray, or give "
            f"--board {info.profile.id if info.profile else '...'} if this one is meant",
            EXIT_BAD_INPUT)
