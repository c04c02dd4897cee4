"""Hardware profiles: boards, sensor kits, BOM and power model, loaded from hardware/data/
and validated before anything uses them.  Errors name the file, the key and the fix.

One loader for everyone: provisioning (USB ids, images, flash layout), firmware config
generation (pins, sensor settings), power budgets and the BOM all read from here.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from firmware import metrics

KINDS = tuple(metrics.KIND_IDS)


class ProfileError(ValueError):
    """A profile file that cannot be used; the message says where and what to do."""


def data_dir() -> Path:
    return Path(str(resources.files("hardware") / "data"))


# -- a tiny schema checker ------------------------------------------------------------------

_NUMBER = (int, float)


def _check(doc: dict, schema: dict, where: str) -> None:
    """`schema` maps key → (type or tuple of types, required).  Unknown keys are errors
    with a suggestion, as in ESPHome."""
    for key in doc:
        if key not in schema:
            near = difflib.get_close_matches(key, schema, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ProfileError(f"{where}: {key!r} is not a valid option.{hint}")
    for key, (types, required) in schema.items():
        if key not in doc:
            if required:
                raise ProfileError(f"{where}: {key!r} is required")
            continue
        value = doc[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
            names = "/".join(t.__name__ for t in _tuple(types))
            raise ProfileError(f"{where}.{key}: expected {names}, got {value!r}")


def _tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _load_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path}: {exc}") from None


# -- boards -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsbId:
    vid: int
    pid: int
    what: str


@dataclass(frozen=True)
class Board:
    id: str
    name: str
    mcu: str
    ble: bool
    supply_v: float
    usb: tuple[UsbId, ...]
    pins: dict[str, Any]
    flash_size_mb: int
    image_offset: int
    partitions: tuple[dict, ...]
    micropython: dict[str, str]

    @property
    def image_verified(self) -> bool:
        sha = self.micropython.get("sha256", "")
        return len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)


_BOARD = {
    "id": (str, True), "name": (str, True), "mcu": (str, True), "ble": (bool, True),
    "supply_v": (_NUMBER, True), "usb": (list, True), "pins": (dict, True),
    "flash": (dict, True), "micropython": (dict, True),
}
_PINS = {name: ((int, str), True) for name in (
    "i2c_sda", "i2c_scl", "uart_tx", "uart_rx", "i2s_sck", "i2s_ws", "i2s_sd", "led")}
_FLASH = {"size_mb": (int, True), "image_offset": (int, True), "partitions": (list, True)}
_PART = {"name": (str, True), "offset": (int, True), "size": (int, True)}
_MPY = {"board": (str, True), "version": (str, True), "image": (str, True),
        "sha256": (str, True)}
_USB = {"vid": (int, True), "pid": (int, True), "what": (str, True)}


def load_board(path: Path) -> Board:
    doc = _load_toml(path)
    where = str(path)
    _check(doc, _BOARD, where)
    if doc["id"] != path.stem:
        raise ProfileError(f"{where}: id {doc['id']!r} must match the file name {path.stem!r}")
    _check(doc["pins"], _PINS, f"{where}: pins")
    ints = [v for v in doc["pins"].values() if isinstance(v, int)]
    if len(ints) != len(set(ints)):
        raise ProfileError(f"{where}: pins: a GPIO is assigned twice")
    _check(doc["flash"], _FLASH, f"{where}: flash")
    _check(doc["micropython"], _MPY, f"{where}: micropython")
    sha = doc["micropython"]["sha256"]
    if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise ProfileError(f"{where}: micropython.sha256 must be 64 lower-case hex digits "
                           "or empty (unverified)")
    usb = []
    for i, u in enumerate(doc["usb"]):
        _check(u, _USB, f"{where}: usb[{i}]")
        if not (0 <= u["vid"] <= 0xFFFF and 0 <= u["pid"] <= 0xFFFF):
            raise ProfileError(f"{where}: usb[{i}]: vid and pid are 16-bit numbers")
        usb.append(UsbId(u["vid"], u["pid"], u["what"]))
    size = doc["flash"]["size_mb"] * 1024 * 1024
    end = 0
    parts = doc["flash"]["partitions"]
    for i, p in enumerate(parts):
        _check(p, _PART, f"{where}: flash.partitions[{i}]")
        if p["offset"] < end:
            raise ProfileError(f"{where}: flash.partitions[{i}] ({p['name']}) overlaps the one "
                               "before it")
        end = p["offset"] + p["size"]
    if end > size:
        raise ProfileError(f"{where}: flash.partitions end at {end:#x}, past the "
                           f"{doc['flash']['size_mb']} MB flash")
    return Board(doc["id"], doc["name"], doc["mcu"], doc["ble"], float(doc["supply_v"]),
                 tuple(usb), dict(doc["pins"]), doc["flash"]["size_mb"],
                 doc["flash"]["image_offset"], tuple(parts), dict(doc["micropython"]))


def load_boards(root: Path | None = None) -> dict[str, Board]:
    folder = (root or data_dir()) / "boards"
    boards = {}
    for path in sorted(folder.glob("*.toml")):
        board = load_board(path)
        boards[board.id] = board
    if not boards:
        raise ProfileError(f"{folder}: no board profiles (*.toml)")
    return boards


def board_for_usb(vid: int, pid: int, root: Path | None = None) -> tuple[Board, UsbId] | None:
    """The board profile a USB device belongs to, for provisioning's board detection."""
    for board in load_boards(root).values():
        for usb in board.usb:
            if (usb.vid, usb.pid) == (vid, pid):
                return board, usb
    return None


# -- kits, parts, BOM, power ------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    id: str
    name: str
    supply_v: float
    states_ma: dict[str, float]


@dataclass(frozen=True)
class Kit:
    kind: str
    about: str
    parts: tuple[dict, ...]  # as in kits.toml: part, bus and its settings


def load_kits(root: Path | None = None) -> tuple[dict[str, Kit], dict[str, Part]]:
    path = (root or data_dir()) / "kits.toml"
    doc = _load_toml(path)
    _check(doc, {"kits": (dict, True), "parts": (dict, True)}, str(path))
    parts = {}
    for pid, p in doc["parts"].items():
        _check(p, {"name": (str, True), "supply_v": (_NUMBER, True), "states": (dict, True)},
               f"{path}: parts.{pid}")
        for state, ma in p["states"].items():
            if not isinstance(ma, _NUMBER) or ma < 0:
                raise ProfileError(f"{path}: parts.{pid}.states.{state}: a current in mA >= 0")
        parts[pid] = Part(pid, p["name"], float(p["supply_v"]), dict(p["states"]))
    kits = {}
    for kind, k in doc["kits"].items():
        if kind not in KINDS:
            near = difflib.get_close_matches(kind, KINDS, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ProfileError(f"{path}: kits.{kind}: not a node kind.{hint}")
        _check(k, {"about": (str, True), "parts": (list, True)}, f"{path}: kits.{kind}")
        for i, part in enumerate(k["parts"]):
            if part.get("part") not in parts:
                raise ProfileError(f"{path}: kits.{kind}.parts[{i}]: part {part.get('part')!r}"
                                   f" has no [parts.<id>] entry")
        kits[kind] = Kit(kind, k["about"], tuple(k["parts"]))
    missing = set(KINDS) - set(kits)
    if missing:
        raise ProfileError(f"{path}: no kit for {', '.join(sorted(missing))}")
    return kits, parts


@dataclass(frozen=True)
class BomItem:
    part: str
    number: str
    maker: str
    unit_eur: float
    kinds: tuple[str, ...]
    about: str = ""


def load_bom(root: Path | None = None) -> list[BomItem]:
    path = (root or data_dir()) / "bom.toml"
    doc = _load_toml(path)
    _check(doc, {"items": (list, True)}, str(path))
    items = []
    schema = {"part": (str, True), "number": (str, True), "maker": (str, True),
              "unit_eur": (_NUMBER, True), "kinds": (list, True), "about": (str, False)}
    for i, item in enumerate(doc["items"]):
        _check(item, schema, f"{path}: items[{i}]")
        bad = [k for k in item["kinds"] if k not in KINDS]
        if bad:
            raise ProfileError(f"{path}: items[{i}].kinds: {bad} are not node kinds")
        items.append(BomItem(item["part"], item["number"], item["maker"],
                             float(item["unit_eur"]), tuple(item["kinds"]),
                             item.get("about", "")))
    return items


def load_power_model(root: Path | None = None) -> dict:
    path = (root or data_dir()) / "power.toml"
    doc = _load_toml(path)
    _check(doc, {"boards": (dict, True), "supply": (dict, True), "battery": (dict, True),
                 "lamp": (dict, True)}, str(path))
    state_keys = ("active_ma", "modem_sleep_ma", "ble_scan_ma", "tx_burst_ma", "tx_burst_ms",
                  "board_overhead_ma")
    for board, states in doc["boards"].items():
        _check(states, {k: (_NUMBER, True) for k in state_keys}, f"{path}: boards.{board}")
    _check(doc["supply"], {"rail_v": (_NUMBER, True), "boost_efficiency": (_NUMBER, True),
                           "ldo_efficiency_note": (str, False)}, f"{path}: supply")
    _check(doc["lamp"], {"off_after_sunrise_min": (_NUMBER, True),
                         "on_before_sunset_min": (_NUMBER, True), "margin": (_NUMBER, True)},
           f"{path}: lamp")
    return doc


def check_all(root: Path | None = None) -> list[str]:
    """Load and cross-check every profile; returns warnings (raises ProfileError on errors)."""
    boards = load_boards(root)
    kits, parts = load_kits(root)
    bom = load_bom(root)
    power = load_power_model(root)
    warnings = []
    for board in boards.values():
        if board.id not in power["boards"]:
            raise ProfileError(f"power.toml: no [boards.{board.id}] power figures")
        if not board.image_verified:
            warnings.append(f"board {board.id}: MicroPython image {board.micropython['image']} "
                            "has no sha256 recorded: provisioning will treat it as unverified")
    for kind, kit in kits.items():
        for part in kit.parts:
            if not any(item.part == part["part"] and kind in item.kinds for item in bom):
                warnings.append(f"kit {kind}: part {part['part']} is not in the BOM")
    return warnings
