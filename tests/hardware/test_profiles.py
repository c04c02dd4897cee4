"""Hardware profiles load, cross-check, and refuse broken files with errors that say where."""

from __future__ import annotations

import shutil

import pytest

from hardware import profiles
from hardware.profiles import ProfileError


def test_shipped_profiles_are_valid_and_consistent():
    warnings = profiles.check_all()
    boards = profiles.load_boards()
    assert set(boards) == {"esp32-s3-devkitc-1", "pico-w"}
    # every unverified image is said so, and nothing else is a warning
    assert all("no sha256" in w for w in warnings)
    s3 = boards["esp32-s3-devkitc-1"]
    assert s3.pins["i2c_sda"] != s3.pins["i2c_scl"] and s3.ble
    kits, parts = profiles.load_kits()
    assert set(kits) == {"air", "noise", "crowd"}
    assert parts["inmp441"].states_ma["active_ma"] > 0


def test_usb_ids_identify_boards():
    board, usb = profiles.board_for_usb(0x2E8A, 0x0003)
    assert board.id == "pico-w" and "BOOTSEL" in usb.what
    assert profiles.board_for_usb(0x1234, 0x5678) is None


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(profiles.data_dir(), root)
    return root


def edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("old, new, message", [
    ("i2c_sda = 8", "i2c_sdaa = 8", "'i2c_sdaa' is not a valid option. Did you mean 'i2c_sda'?"),
    ("i2c_sda = 8", "i2c_sda = 9", "a GPIO is assigned twice"),
    ('mcu = "esp32s3"', "mcu = 3", "mcu: expected str"),
    ('sha256 = ""', 'sha256 = "abc"', "64 lower-case hex digits"),
    ("size = 0x600000", "size = 0x700000", "past the 8 MB flash"),
    ('id = "esp32-s3-devkitc-1"', 'id = "other"', "must match the file name"),
])
def test_broken_board_files_name_the_file_key_and_fix(data, old, new, message):
    path = data / "boards" / "esp32-s3-devkitc-1.toml"
    edit(path, old, new)
    with pytest.raises(ProfileError) as err:
        profiles.load_boards(data)
    assert str(path) in str(err.value) and message in str(err.value)


def test_a_kit_for_an_unknown_kind_suggests_the_right_one(data):
    edit(data / "kits.toml", "[kits.noise]", "[kits.noize]")
    with pytest.raises(ProfileError, match="kits.noize: not a node kind. Did you mean 'noise'"):
        profiles.load_kits(data)


def test_a_kit_part_without_a_part_entry_is_refused(data):
    edit(data / "kits.toml", 'part = "inmp441"', 'part = "ics43434"')
    with pytest.raises(ProfileError, match="part 'ics43434' has no"):
        profiles.load_kits(data)


def test_unparseable_toml_says_where(data):
    (data / "bom.toml").write_text("[[items]\n")
    with pytest.raises(ProfileError, match="bom.toml"):
        profiles.load_bom(data)
