# Firmware slots on the node's flash: two copies (A/B), one active, switched atomically.
# The one place that decides which firmware a node boots.  Provisioning's install (over USB)
# and the fleet's over-the-air updates both stage a build into the inactive slot, check it
# with check_slot(), and switch() to it; boot.py (BOOT_PY below) calls boot() at every start.
#
# Layout under the flash root:
#   fw/a/, fw/b/      a slot: MANIFEST.json + firmware/*.mpy (the build, provisioning/build.py)
#   fw/active         the pointer, JSON: {"slot", "manifest" (sha256 of MANIFEST.json),
#                     "previous", "trial", "boots"}; written with hal.Flash.replace, so after a
#                     power cut either `active` or a complete `active.new` holds the newest one
#   boot.py, main.py  fixed stubs (BOOT_PY, MAIN_PY), written once by install_stubs()
#
# In:  a slot staged by the caller (files written, MANIFEST.json written last).
# Out: switch() points the node at it; boot() puts the chosen slot on sys.path.
# On failure: SlotError with a sentence saying what is wrong (a file missing or with the
#   wrong hash, a manifest that is not the one switched to, a trial that never confirmed);
#   the pointer is never changed to a slot that does not check out, so a cut or corrupt
#   install leaves the previous firmware in use.  boot.py falls back to the other slot
#   when the active one fails its check, and the REPL stays reachable when neither works.
#
# RAM: one 512-byte read buffer while hashing; the manifest of one slot while checking.

import json
import os

try:
    import hashlib
except ImportError:  # pragma: no cover - some MicroPython ports name it uhashlib
    import uhashlib as hashlib  # type: ignore

from binascii import hexlify

from firmware.hal import Flash

SLOTS = ("a", "b")
FW_DIR = "fw"
MANIFEST = "MANIFEST.json"
POINTER = "active"
POINTER_NEW = POINTER + ".new"  # hal.Flash.replace's temporary name
MAX_TRIAL_BOOTS = 3  # a trial switch that has not confirmed after this many boots rolls back
_SOFT_RESET = 5  # machine.reset_cause() numbering (hal.py)

# The stubs at the flash root.  boot.py holds no logic that can need an update: it reads the
# pointer, puts a slot on sys.path and lets that slot's own firmware.slots.boot() check it,
# trying the other slot when that fails.
BOOT_PY = """# dordt node boot (written by the installer from firmware/slots.py; do not edit).
# Puts the active firmware slot on sys.path; falls back to the other slot; never blocks the REPL.
import sys
def _dordt_boot():
    import json
    order = []
    for name in ("/fw/active", "/fw/active.new"):
        try:
            with open(name) as f:
                p = json.load(f)
            order = [p.get("slot"), p.get("previous")]
            break
        except Exception:
            pass
    tried = []
    for s in order + ["a", "b"]:
        if s not in ("a", "b") or s in tried:
            continue
        tried.append(s)
        path = "/fw/" + s
        sys.path.insert(0, path)
        try:
            from firmware import slots
            slots.boot(s)
            del sys.modules["firmware.slots"]  # its RAM back to the node
            return
        except Exception as e:
            print("dordt boot: slot %s not used: %s" % (s, e))
        sys.path.remove(path)
        for m in [m for m in sys.modules if m == "firmware" or m.startswith("firmware.")]:
            del sys.modules[m]
    print("dordt boot: no firmware installed (dordt provision install)")
_dordt_boot()
del _dordt_boot
"""
MAIN_PY = """# dordt node entry point (written by the installer from firmware/slots.py).
from firmware import main
main.start()
"""


class SlotError(Exception):
    pass


def _join(*parts):
    out = ""
    for part in parts:
        if not out:
            out = part
        elif out.endswith("/"):
            out = out + part
        else:
            out = out + "/" + part
    return out


def fw_dir(root="/"):
    return _join(root, FW_DIR)


def slot_dir(slot, root="/"):
    if slot not in SLOTS:
        raise SlotError("no slot %r: slots are %s" % (slot, ", ".join(SLOTS)))
    return _join(root, FW_DIR, slot)


def other(slot):
    return SLOTS[1] if slot == SLOTS[0] else SLOTS[0]


def sha256_file(path, buf=None):
    """Hex SHA-256 of a file, read in place (no copy of the file in RAM)."""
    h = hashlib.sha256()
    if buf is None:
        buf = bytearray(512)
    mv = memoryview(buf)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
    return hexlify(h.digest()).decode()


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def makedirs(path):
    """mkdir -p (MicroPython's os has no makedirs)."""
    done = ""
    for part in path.split("/"):
        if not part:
            if not done:
                done = "/"
            continue
        done = _join(done, part) if done else part
        if not exists(done):
            os.mkdir(done)


def rmtree(path):
    """rm -r; nothing happens when `path` does not exist."""
    try:
        mode = os.stat(path)[0]
    except OSError:
        return
    if mode & 0x4000:
        for name in os.listdir(path):
            rmtree(_join(path, name))
        os.rmdir(path)
    else:
        os.remove(path)


def prepare(slot, root="/"):
    """Empty `slot` for staging a new build.  Refuses the active slot."""
    if slot == active_slot(root):
        raise SlotError("slot %s is the active firmware; stage into slot %s" % (slot, other(slot)))
    path = slot_dir(slot, root)
    rmtree(path)
    makedirs(path)


def copy_file(src, dst, buf=None):
    if buf is None:
        buf = bytearray(512)
    mv = memoryview(buf)
    with open(src, "rb") as fi:
        with open(dst, "wb") as fo:
            while True:
                n = fi.readinto(buf)
                if not n:
                    break
                fo.write(mv[:n])


def read_manifest(slot, root="/"):
    """(manifest dict, sha256 hex of its bytes), or (None, None) when absent or unreadable."""
    path = _join(slot_dir(slot, root), MANIFEST)
    try:
        with open(path, "rb") as f:
            data = f.read()
        doc = json.loads(data)
    except (OSError, ValueError):
        return None, None
    h = hashlib.sha256(data)
    return doc, hexlify(h.digest()).decode()


def file_hashes(slot, root="/"):
    """{path: sha256} of every file the slot's manifest names that exists on flash."""
    doc, _ = read_manifest(slot, root)
    out = {}
    if not doc:
        return out
    base = slot_dir(slot, root)
    buf = bytearray(512)
    for entry in doc.get("files", ()):
        try:
            out[entry["path"]] = sha256_file(_join(base, entry["path"]), buf)
        except OSError:
            pass
    return out


def check_slot(slot, root="/", manifest_sha=None):
    """The problems with `slot` as a list of sentences; [] when every file is there with its
    size and hash, and (given `manifest_sha`) the manifest is that one."""
    doc, sha = read_manifest(slot, root)
    if doc is None or sha is None:
        return ["slot %s has no readable %s" % (slot, MANIFEST)]
    if manifest_sha is not None and sha != manifest_sha:
        return ["slot %s holds manifest %s, not %s" % (slot, sha[:12], manifest_sha[:12])]
    problems = []
    base = slot_dir(slot, root)
    buf = bytearray(512)
    for entry in doc.get("files", ()):
        path = _join(base, entry["path"])
        try:
            size = os.stat(path)[6]
        except OSError:
            problems.append("%s is missing" % entry["path"])
            continue
        if size != entry["size"]:
            problems.append("%s has %d bytes, not %d" % (entry["path"], size, entry["size"]))
        elif sha256_file(path, buf) != entry["sha256"]:
            problems.append("%s does not match its SHA-256" % entry["path"])
    return problems


def _flash(root):
    return Flash(fw_dir(root))


def read_pointer(root="/"):
    """The pointer dict, or None before the first switch.  A complete `active.new` left by a
    power cut between replace()'s two steps counts (hal.Flash.replace)."""
    flash = _flash(root)
    for name in (POINTER, POINTER_NEW):
        data = flash.read(name)
        if not data:
            continue
        try:
            doc = json.loads(data)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("slot") in SLOTS:
            return doc
    return None


def active_slot(root="/"):
    pointer = read_pointer(root)
    return pointer["slot"] if pointer else None


def _write_pointer(doc, root):
    makedirs(fw_dir(root))
    _flash(root).replace(POINTER, json.dumps(doc).encode())


def switch(slot, manifest_sha, root="/", trial=False):
    """Make `slot` the firmware the node boots.  `trial` (over the air): boot() rolls back to
    the previous slot unless confirm() is called within MAX_TRIAL_BOOTS boots."""
    problems = check_slot(slot, root, manifest_sha)
    if problems:
        raise SlotError("slot %s not switched to: %s" % (slot, "; ".join(problems)))
    current = read_pointer(root)
    previous = current["slot"] if current and current["slot"] != slot else None
    if current and current["slot"] == slot:
        previous = current.get("previous")
    _write_pointer({"slot": slot, "manifest": manifest_sha, "previous": previous,
                    "trial": bool(trial), "boots": 0}, root)


def confirm(root="/"):
    """The running firmware works: end its trial."""
    pointer = read_pointer(root)
    if pointer and pointer.get("trial"):
        pointer["trial"] = False
        _write_pointer(pointer, root)


def count_trial_boot(root="/"):
    """Count the boot the coming reset starts as one of the trial's MAX_TRIAL_BOOTS, now,
    whatever kind of reset it is (firmware/ota.py: after its switch, and when a trial is
    not healthy in time).  machine.reset() is reported as a soft reset on some ports (the
    virtual board's), whose boot boot() does not count, so a release that can never pass
    would stay on trial for ever; the `counted` mark keeps boot() from counting a hard
    reset's boot twice, and a second call before the reset from counting it twice."""
    pointer = read_pointer(root)
    if pointer and pointer.get("trial") and not pointer.get("counted"):
        pointer["boots"] = pointer.get("boots", 0) + 1
        pointer["counted"] = True
        _write_pointer(pointer, root)


def _reset_cause():
    try:
        import machine  # type: ignore

        return machine.reset_cause()
    except (ImportError, AttributeError):
        return 0


def boot(slot, root="/"):
    """Called by boot.py with the slot it put on sys.path: raises SlotError when that slot
    must not run (its files do not check out, or its trial ran out of boots).  When boot.py
    fell back to a slot the pointer does not name, the pointer is moved to it (rollback)."""
    pointer = read_pointer(root)
    if pointer and pointer["slot"] == slot:
        problems = check_slot(slot, root, pointer.get("manifest"))
        if problems:
            raise SlotError("; ".join(problems))
        if pointer.get("trial"):
            if pointer.pop("counted", False):  # count_trial_boot() counted this boot
                _write_pointer(pointer, root)
            elif _reset_cause() != _SOFT_RESET:
                pointer["boots"] = pointer.get("boots", 0) + 1
                _write_pointer(pointer, root)
            if pointer.get("boots", 0) > MAX_TRIAL_BOOTS:
                raise SlotError("trial not confirmed after %d boots" % MAX_TRIAL_BOOTS)
        return
    problems = check_slot(slot, root)
    if problems:
        raise SlotError("; ".join(problems))
    sha = read_manifest(slot, root)[1] or ""
    _write_pointer({"slot": slot, "manifest": sha,
                    "previous": pointer["slot"] if pointer else None, "trial": False,
                    "boots": 0, "rolled_back_from": pointer["slot"] if pointer else None}, root)


def install_stubs(root="/"):
    """Write boot.py and main.py at the flash root when they differ from BOOT_PY/MAIN_PY.
    Returns the names written."""
    flash = Flash(root)
    written = []
    for name, text in (("boot.py", BOOT_PY), ("main.py", MAIN_PY)):
        data = text.encode()
        if flash.read(name) != data:
            flash.replace(name, data)
            written.append(name)
    return written


def status(root="/"):
    """What install and selftest report: the pointer and each slot's manifest version."""
    out = {"pointer": read_pointer(root), "slots": {}}
    for slot in SLOTS:
        doc, sha = read_manifest(slot, root)
        if doc is not None:
            out["slots"][slot] = {"version": doc.get("version"), "manifest": sha}
    return out
