"""firmware/slots.py: A/B firmware slots, the atomic switch, boot-time checks and rollback,
under CPython on a host directory and under real MicroPython with the compiled build
(the .mpy files an install puts on a board), booted through the real boot.py stub."""

import json

import pytest

from firmware import slots
from provisioning.build import MANIFEST_NAME, build_firmware


@pytest.fixture(scope="module")
def build():
    return build_firmware()


def stage(root, slot, build, manifest=None):
    """What an installer does: files into the slot, the manifest last."""
    base = root / "fw" / slot
    for f in build.files:
        (base / f.path).parent.mkdir(parents=True, exist_ok=True)
        (base / f.path).write_bytes(f.data)
    (base / MANIFEST_NAME).write_bytes(manifest or build.manifest_bytes())


def test_switch_then_boot(tmp_path, build):
    root = str(tmp_path)
    assert slots.read_pointer(root) is None
    stage(tmp_path, "a", build)
    assert slots.check_slot("a", root, build.manifest_sha256) == []
    slots.switch("a", build.manifest_sha256, root)
    assert slots.active_slot(root) == "a"
    slots.boot("a", root)  # no error: every file checks out
    assert slots.status(root)["slots"]["a"]["version"] == build.version


def test_a_slot_with_a_missing_or_corrupt_file_is_never_switched_to(tmp_path, build):
    root = str(tmp_path)
    stage(tmp_path, "a", build)
    slots.switch("a", build.manifest_sha256, root)
    stage(tmp_path, "b", build)
    victim = tmp_path / "fw" / "b" / build.files[3].path
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    with pytest.raises(slots.SlotError, match="does not match its SHA-256"):
        slots.switch("b", build.manifest_sha256, root)
    victim.unlink()
    with pytest.raises(slots.SlotError, match="is missing"):
        slots.switch("b", build.manifest_sha256, root)
    assert slots.active_slot(root) == "a"


def test_prepare_refuses_the_active_slot(tmp_path, build):
    root = str(tmp_path)
    stage(tmp_path, "a", build)
    slots.switch("a", build.manifest_sha256, root)
    with pytest.raises(slots.SlotError, match="active firmware; stage into slot b"):
        slots.prepare("a", root)
    slots.prepare("b", root)
    assert (tmp_path / "fw" / "b").is_dir() and not any((tmp_path / "fw" / "b").iterdir())


def test_a_torn_pointer_update_leaves_a_complete_pointer(tmp_path, build):
    root = str(tmp_path)
    stage(tmp_path, "a", build)
    slots.switch("a", build.manifest_sha256, root)
    stage(tmp_path, "b", build)
    # FAT: replace() removed `active` and was cut before renaming `active.new` over it.
    pointer = tmp_path / "fw" / "active"
    doc = json.loads(pointer.read_text())
    doc.update(slot="b", previous="a")
    (tmp_path / "fw" / "active.new").write_text(json.dumps(doc))
    pointer.unlink()
    assert slots.active_slot(root) == "b"
    # Cut while writing active.new: the old pointer is intact and wins.
    pointer.write_text(json.dumps(dict(doc, slot="a")))
    (tmp_path / "fw" / "active.new").write_text('{"slot": "b", "man')
    assert slots.active_slot(root) == "a"


def test_a_trial_that_never_confirms_rolls_back(tmp_path, build):
    root = str(tmp_path)
    stage(tmp_path, "a", build)
    slots.switch("a", build.manifest_sha256, root)
    stage(tmp_path, "b", build)
    slots.switch("b", build.manifest_sha256, root, trial=True)
    for _ in range(slots.MAX_TRIAL_BOOTS):
        slots.boot("b", root)
    with pytest.raises(slots.SlotError, match="not confirmed"):
        slots.boot("b", root)
    slots.boot("a", root)  # boot.py's fallback: the pointer follows
    pointer = slots.read_pointer(root)
    assert pointer["slot"] == "a" and pointer["rolled_back_from"] == "b"


@pytest.mark.parametrize("cause", [2, 5])  # machine.reset() is hard on some ports, soft on others
def test_a_trial_counted_before_each_reset_rolls_back_after_exactly_max_boots(
        tmp_path, build, monkeypatch, cause):
    root = str(tmp_path)
    stage(tmp_path, "a", build)
    slots.switch("a", build.manifest_sha256, root)
    stage(tmp_path, "b", build)
    slots.switch("b", build.manifest_sha256, root, trial=True)
    monkeypatch.setattr(slots, "_reset_cause", lambda: cause)
    attempts = 0
    while True:
        slots.count_trial_boot(root)  # firmware/ota.py before each of its resets
        slots.count_trial_boot(root)  # a second call before the reset counts nothing more
        try:
            slots.boot("b", root)  # boot.py after the reset
        except slots.SlotError as exc:
            assert "not confirmed" in str(exc)
            break
        attempts += 1  # a trial boot whose health check fails
    assert attempts == slots.MAX_TRIAL_BOOTS
    slots.boot("a", root)
    assert slots.read_pointer(root)["rolled_back_from"] == "b"


def test_confirm_ends_the_trial(tmp_path, build):
    root = str(tmp_path)
    stage(tmp_path, "a", build)
    slots.switch("a", build.manifest_sha256, root, trial=True)
    slots.confirm(root)
    for _ in range(slots.MAX_TRIAL_BOOTS + 2):
        slots.boot("a", root)
    assert slots.read_pointer(root)["trial"] is False


def test_install_stubs_writes_only_what_differs(tmp_path):
    root = str(tmp_path)
    assert slots.install_stubs(root) == ["boot.py", "main.py"]
    assert slots.install_stubs(root) == []
    (tmp_path / "boot.py").write_text("print('someone else')\n")
    assert slots.install_stubs(root) == ["boot.py"]


# -- under real MicroPython, with the compiled build and the real boot.py ------------------

BOOT_AND_REPORT = """
exec(open("/boot.py").read())
import sys, json
from firmware import node
print(json.dumps({"node": node.__file__, "path": sys.path[0],
                  "pointer": json.load(open("/fw/active"))}))
"""


def board_files(build, slots_staged, corrupt=None):
    files = {"/boot.py": slots.BOOT_PY, "/main.py": slots.MAIN_PY}
    for slot in slots_staged:
        for f in build.files:
            data = f.data
            if corrupt and corrupt == (slot, f.path):
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            files[f"/fw/{slot}/{f.path}"] = data
        files[f"/fw/{slot}/{MANIFEST_NAME}"] = build.manifest_bytes()
    return files


def pointer(slot, build, previous=None):
    return json.dumps({"slot": slot, "manifest": build.manifest_sha256, "previous": previous,
                       "trial": False, "boots": 0})


def test_micropython_boots_the_active_slot_from_mpy(micropython, build):
    files = board_files(build, ["a", "b"])
    files["/fw/active"] = pointer("b", build, previous="a")
    out = micropython.run_json(BOOT_AND_REPORT, files=files, firmware=False)
    assert out["node"].startswith("/fw/b/firmware/node.mpy")
    assert out["path"] == "/fw/b"


def test_micropython_falls_back_when_the_active_slot_is_corrupt(micropython, build):
    files = board_files(build, ["a", "b"], corrupt=("b", "firmware/protocol.mpy"))
    files["/fw/active"] = pointer("b", build, previous="a")
    out = micropython.run(BOOT_AND_REPORT, files=files, firmware=False)
    assert "slot b not used: firmware/protocol.mpy does not match its SHA-256" in out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["node"].startswith("/fw/a/")
    assert report["pointer"]["slot"] == "a" and report["pointer"]["rolled_back_from"] == "b"


def test_micropython_without_firmware_still_reaches_the_repl(micropython):
    out = micropython.run('exec(open("/boot.py").read())\nprint("repl")',
                          files={"/boot.py": slots.BOOT_PY}, firmware=False)
    assert "no firmware installed" in out and out.strip().endswith("repl")


def test_micropython_switch_on_the_node(micropython, build):
    """The switch the installer and OTA run on the node: slots.switch from the staged slot."""
    files = board_files(build, ["a", "b"])
    files["/fw/active"] = pointer("a", build)
    code = """
import sys
sys.path.insert(0, "/fw/b")
from firmware import slots
slots.switch("b", "SHA")
print(slots.active_slot(), slots.read_pointer()["previous"])
""".replace("SHA", build.manifest_sha256)
    assert micropython.run(code, files=files, firmware=False).split() == ["b", "a"]
