"""The node's side of a key rotation (firmware/rekey.py): a rekey file sealed by the fleet
(fleet/rekey.py, `dordt fleet registry rotate-key`) opens only with the node's current key,
switches key id and key file together, and a power cut at any write leaves the old pair or
the new one; the same under real MicroPython."""

from __future__ import annotations

import json
import secrets

import pytest

from firmware import config, hal
from firmware import rekey as node_rekey
from fleet import rekey
from tests.firmware.test_config import FILES, GOOD, KEY

NEW_KEY = bytes(range(0xA0, 0xC0))


def board(tmp_path) -> hal.Flash:
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "config.json").write_text(json.dumps(GOOD))
    return hal.Flash(str(tmp_path))


def test_a_rekey_file_switches_the_node_to_the_new_key(tmp_path):
    flash = board(tmp_path)
    doc = rekey.wrap(GOOD["node_id"], 0, KEY, 1, NEW_KEY)
    assert NEW_KEY.hex() not in json.dumps(doc)
    assert node_rekey.apply(flash, doc) == 1
    cfg = config.load(flash)
    assert (cfg.key_id, cfg.key_file, cfg.key) == (1, "node-1.key", NEW_KEY)
    assert not flash.exists("node.key")
    # the next rotation starts from the new key
    newer = secrets.token_bytes(32)
    assert node_rekey.apply(flash, rekey.wrap(GOOD["node_id"], 1, NEW_KEY, 2, newer)) == 2
    assert config.load(flash).key == newer and not flash.exists("node-1.key")


@pytest.mark.parametrize("change, message", [
    ({"key_id": 2}, "does not open"), ({"wrapped": "00" * 32}, "does not open"),
    ({"node": "0d0a0002"}, "is for node 0d0a0002"), ({"from_key_id": 1}, "replaces key 1"),
    ({"nonce": "zz"}, "not a well-formed"), ({"format": "x"}, "not a dordt rekey")])
def test_a_bad_rekey_file_changes_nothing(tmp_path, change, message):
    flash = board(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    doc = dict(rekey.wrap(GOOD["node_id"], 0, KEY, 1, NEW_KEY), **change)
    with pytest.raises(node_rekey.RekeyError, match=message) as exc:
        node_rekey.apply(flash, doc)
    assert NEW_KEY.hex() not in str(exc.value) and KEY.hex() not in str(exc.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_rekey_file_for_another_key_does_not_open(tmp_path):
    flash = board(tmp_path)
    doc = rekey.wrap(GOOD["node_id"], 0, secrets.token_bytes(32), 1, NEW_KEY)
    with pytest.raises(node_rekey.RekeyError, match="does not open with key 0"):
        node_rekey.apply(flash, doc)


class _CutFiles(hal._OsFiles):
    """A file system whose power is cut at the n-th write, rename or remove."""

    def __init__(self, cut_at: int):
        self.left = cut_at

    def _step(self):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt("power cut")

    def open(self, path, mode):
        if "w" in mode:
            self._step()
        return super().open(path, mode)

    def rename(self, old, new):
        self._step()
        super().rename(old, new)

    def remove(self, path):
        self._step()
        super().remove(path)


def test_a_power_cut_at_any_step_leaves_the_old_pair_or_the_new_one(tmp_path):
    outcomes = set()
    for cut_at in range(10):
        root = tmp_path / str(cut_at)
        root.mkdir()
        board(root)
        doc = rekey.wrap(GOOD["node_id"], 0, KEY, 1, NEW_KEY)
        try:
            node_rekey.apply(hal.Flash(str(root), _CutFiles(cut_at)), doc)
        except KeyboardInterrupt:
            pass
        cfg = config.load(hal.Flash(str(root)))
        assert (cfg.key_id, cfg.key) in ((0, KEY), (1, NEW_KEY)), cut_at
        outcomes.add(cfg.key_id)
    assert outcomes == {0, 1}


@pytest.mark.micropython
def test_the_node_opens_the_fleets_rekey_file_under_micropython(micropython):
    doc = rekey.wrap(GOOD["node_id"], 0, KEY, 1, NEW_KEY)
    bad = dict(doc, key_id=3)
    files = {f"/flash/{name}": text for name, text in FILES.items()}
    files["/flash/config.json"] = json.dumps(GOOD)
    code = f"""
import json
from firmware import config, hal, rekey
fl = hal.Flash('/flash')
try:
    rekey.apply(fl, json.loads({json.dumps(bad)!r}))
    refused = None
except rekey.RekeyError as e:
    refused = str(e)
key_id = rekey.apply(fl, json.loads({json.dumps(doc)!r}))
cfg = config.load(fl)
print(json.dumps({{"refused": refused, "key_id": key_id, "cfg_key_id": cfg.key_id,
                  "new_key": cfg.key == bytes(range(0xA0, 0xC0)),
                  "old_gone": not fl.exists('node.key')}}))
"""
    out = micropython.run_json(code, files=files)
    assert out == {"refused": "the rekey document does not open with key 0 of node 0d0a0001 "
                              "(another node or key, or changed)",
                   "key_id": 1, "cfg_key_id": 1, "new_key": True, "old_gone": True}
