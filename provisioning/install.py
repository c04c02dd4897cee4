"""Install the firmware on a board: stage a build into the inactive slot, check every file's
SHA-256 on the board, switch, and boot it (the switch is firmware/slots.py, run on the board).

In:  an open `BoardLink`, a `FirmwareBuild` (provisioning/build.py) for the board's
     architecture, an optional progress callback `progress(done_bytes, total_bytes, path)`.
Out: `InstallReport`: which slot, what was sent over USB and what was reused on the board,
     what was found wrong on the board, the time taken.
On failure: `LinkError` (exit 3) when the link drops, `InstallError` (exit 1) when the board
     does not hold what was sent even after one resend (a failing flash) or does not boot
     it.  In every case the pointer still names the previous slot, which stays untouched,
     so the board boots its previous firmware: a cut install is finished by running the
     same command again, which sends only what is still missing.

How, in order (each step one or a few raw-REPL commands through mpremote's transport):
 1. Ask the active slot's own firmware.slots what is installed and what each of its files
    hashes to on flash now (corrupt files show up here).
 2. Same manifest and every hash right: nothing to send (a re-install takes seconds).
 3. Otherwise empty the inactive slot (unless it holds a cut install of this same build,
    whose good files are kept), write the new manifest into it, copy on the board every
    file whose bytes the active slot already holds, and send the rest in base64 chunks of
    a few KB per command (far fewer round trips than mpremote's one per 256 bytes).
 4. Hash every staged file on the board; resend any that differ, once.
 5. From the staged slot's own code: write boot.py/main.py if they differ, then
    slots.switch() (which checks every file again before it moves the pointer).
 6. Soft reset and check that boot.py chose the new slot.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mpremote.transport import TransportError

from firmware import slots
from provisioning.build import MANIFEST_NAME, FirmwareBuild
from provisioning.link import BoardCodeError, BoardLink, LinkError

CHUNK_BYTES = 3072  # raw bytes per write() call on the board (4 KB of base64)
COMMAND_BYTES = 12288  # raw bytes per raw-REPL command: a few chunks, well inside the heap

Progress = Callable[[int, int, str], None]
# How a board says ENOSPC: ports with errno names print "[Errno 28] ENOSPC", others "28".
_NO_SPACE = re.compile(r"OSError: (\[Errno 28\]|28\b)|ENOSPC")


class InstallError(Exception):
    """The board did not take the firmware; the previous firmware still boots."""

    exit_code = 1


@dataclass
class InstallReport:
    slot: str
    version: str
    manifest_sha256: str
    unchanged: bool = False
    sent_files: list[str] = field(default_factory=list)
    sent_bytes: int = 0
    reused_files: list[str] = field(default_factory=list)  # copied on the board
    resumed_files: list[str] = field(default_factory=list)  # staged by a cut install before
    found_wrong: list[str] = field(default_factory=list)  # files corrupt on the board before
    resent: list[str] = field(default_factory=list)  # files that did not land right once
    stubs_written: list[str] = field(default_factory=list)
    seconds: float = 0.0
    send_seconds: float = 0.0

    @property
    def bytes_per_s(self) -> float:
        return self.sent_bytes / self.send_seconds if self.send_seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "slot": self.slot, "version": self.version,
            "manifest_sha256": self.manifest_sha256, "unchanged": self.unchanged,
            "sent_files": len(self.sent_files), "sent_bytes": self.sent_bytes,
            "reused_files": len(self.reused_files),
            "resumed_files": len(self.resumed_files), "found_wrong": self.found_wrong,
            "resent": self.resent, "stubs_written": self.stubs_written,
            "seconds": round(self.seconds, 3),
            "bytes_per_s": round(self.bytes_per_s),
        }


# Board-side code.  `firmware.slots` comes from a slot's own build (after the soft reset
# boot.py has put the active slot on sys.path); a board without our firmware has none.
_FORGET_FIRMWARE = """
import sys
def _forget():
    for m in [m for m in sys.modules if m == "firmware" or m.startswith("firmware.")]:
        del sys.modules[m]
_forget()
"""
_STATE = _FORGET_FIRMWARE + """
import json
try:
    from firmware import slots
except Exception:
    slots = None
# boot.py found no slot that checks out: a slot's own code still tells which files are bad
for s in ("a", "b") if slots is None else ():
    sys.path.insert(0, "/fw/" + s)
    try:
        from firmware import slots
        break
    except Exception:
        sys.path.remove("/fw/" + s)
        _forget()
if slots is None:
    print(json.dumps(None))
else:
    st = slots.status()
    a = slots.active_slot()
    st["active"] = a
    st["hashes"] = slots.file_hashes(a) if a else {}
    b = slots.other(a) if a else "a"
    staged = st["slots"].get(b)
    # a cut install of this same build: what it staged already need not be sent again
    st["staged"] = slots.file_hashes(b) if staged and staged["manifest"] == NEW else {}
    print(json.dumps(st))
"""


def _use_slot_code(slot: str) -> str:
    """Board code that makes `from firmware import slots` load `slot`'s own build."""
    dirs = [slots.slot_dir(s) for s in slots.SLOTS]
    return _FORGET_FIRMWARE + (
        f"for _p in {dirs!r}:\n"
        "    while _p in sys.path: sys.path.remove(_p)\n"
        f"sys.path.insert(0, {slots.slot_dir(slot)!r})\n"
        "from firmware import slots\n")


def board_state(link: BoardLink, manifest_sha256: str = "") -> dict | None:
    """What the board's active firmware says about its slots; None without our firmware.
    `staged`: hashes of the inactive slot's files when it holds `manifest_sha256`."""
    return link.exec_json(_STATE.replace("NEW", repr(manifest_sha256)),
                          "reading the installed firmware")


def install(link: BoardLink, build: FirmwareBuild, progress: Progress | None = None,
            force: bool = False) -> InstallReport:
    try:
        return _install(link, build, progress, force)
    except BoardCodeError as exc:
        if _NO_SPACE.search(exc.traceback):
            raise InstallError(
                f"the board's flash is full: the new firmware ({build.size} bytes) does not "
                "fit beside the one in use; remove files of your own from the board "
                "(`mpremote connect PORT ls`, `rm`), then install again; the previous "
                "firmware still boots") from None
        raise


def _install(link: BoardLink, build: FirmwareBuild, progress: Progress | None,
             force: bool) -> InstallReport:
    started = time.monotonic()
    state = board_state(link, build.manifest_sha256)
    expected = {f.path: f.sha256 for f in build.files}
    active = state["active"] if state else None
    on_board = state["hashes"] if state else {}
    active_manifest = (state["slots"].get(active, {}).get("manifest")
                       if state and active else None)
    report = InstallReport(slot=active or "a", version=build.version,
                           manifest_sha256=build.manifest_sha256)
    if active_manifest == build.manifest_sha256:
        # Same build: anything that hashes differently now was damaged on the board.
        report.found_wrong = sorted(p for p, sha in expected.items() if on_board.get(p) != sha)
    if active_manifest == build.manifest_sha256 and not report.found_wrong and not force:
        report.unchanged = True
        report.stubs_written = _stubs(link, active)
        report.seconds = time.monotonic() - started
        return report

    target = slots.other(active) if active else "a"
    report.slot = target
    base = slots.slot_dir(target)
    staged = state["staged"] if state else {}
    if not staged or force:
        staged = {}
        _empty_slot(link, target, active is not None)
        _write(link, f"{base}/{MANIFEST_NAME}", build.manifest_bytes(), "the manifest")
    report.resumed_files = sorted(p for p, sha in expected.items() if staged.get(p) == sha)

    reuse = [f for f in build.files
             if on_board.get(f.path) == f.sha256 and staged.get(f.path) != f.sha256]
    if reuse:
        pairs = [(f"{slots.slot_dir(active)}/{f.path}", f"{base}/{f.path}") for f in reuse]
        link.exec(_use_slot_code(active) + _mkdirs_code([d for _, d in pairs]) +
                  f"for _s, _d in {pairs!r}:\n    slots.copy_file(_s, _d)\n",
                  "copying unchanged files on the board")
        report.reused_files = [f.path for f in reuse]
    send = [f for f in build.files
            if on_board.get(f.path) != f.sha256 and staged.get(f.path) != f.sha256]
    total = sum(f.size for f in send)
    sent = 0
    send_started = time.monotonic()
    if send:
        code = _mkdirs_code([f"{base}/{f.path}" for f in send])
        link.exec(_use_slot_code(active) + code if active else _MKDIRS_DEF + code,
                  "making directories")
    for f in send:
        _write(link, f"{base}/{f.path}", f.data, f.path,
               lambda n, f=f, before=sent: progress and progress(before + n, total, f.path))
        sent += f.size
    report.sent_files = [f.path for f in send]
    report.sent_bytes = sent

    staged = _staged_hashes(link, target)
    wrong = [f for f in build.files if staged.get(f.path) != f.sha256]
    for f in wrong:  # a file that did not land right: once more, then give up
        _write(link, f"{base}/{f.path}", f.data, f.path)
        report.sent_bytes += f.size
    report.send_seconds = time.monotonic() - send_started
    if wrong:
        report.resent = [f.path for f in wrong]
        staged = _staged_hashes(link, target)
        still = [f.path for f in wrong if staged.get(f.path) != f.sha256]
        if still:
            raise InstallError(
                f"the board does not keep what was written to {', '.join(still)} (its flash "
                "may be failing): the previous firmware still boots; try again, and if it "
                "fails again set the board aside")

    report.stubs_written = _stubs(link, target)
    try:
        link.exec(_use_slot_code(target) +
                  f"slots.switch({target!r}, {build.manifest_sha256!r})\n",
                  "switching to the new firmware")
    except BoardCodeError as exc:
        raise InstallError(f"the board refused to switch to the new firmware: "
                           f"{exc.traceback.strip().splitlines()[-1]}; the previous "
                           "firmware still boots") from None
    _check_boots(link, target, build)
    report.seconds = time.monotonic() - started
    return report


def _stubs(link: BoardLink, slot: str) -> list[str]:
    return link.exec_json(_use_slot_code(slot) + "import json\n"
                          "print(json.dumps(slots.install_stubs()))\n",
                          "writing boot.py and main.py")


def _empty_slot(link: BoardLink, slot: str, have_slots_code: bool) -> None:
    if have_slots_code:
        # The active slot's own code (it refuses to empty the active slot).
        link.exec(_use_slot_code(slots.other(slot)) + f"slots.prepare({slot!r})\n",
                  "emptying the inactive firmware slot")
        return
    # No firmware of ours on the board yet: mpremote's file-system calls do it.
    t = link.transport
    path = slots.slot_dir(slot)
    try:
        _rm_tree(t, path)
        for d in (slots.fw_dir(), path):
            if not t.fs_exists(d):
                t.fs_mkdir(d)
    except (TransportError, OSError) as exc:
        raise LinkError(f"could not prepare {path} on the board ({exc}): run the same "
                        "command again") from None


def _rm_tree(t, path: str) -> None:
    if not t.fs_exists(path):
        return
    if t.fs_isdir(path):
        for entry in t.fs_listdir(path):
            _rm_tree(t, f"{path}/{entry.name}")
        t.fs_rmdir(path)
    else:
        t.fs_rmfile(path)


# mkdir -p for a board without our firmware yet (with it, slots.makedirs is the one used).
_MKDIRS_DEF = """
import os
class slots:
    def makedirs(p):
        try:
            os.stat(p)
        except OSError:
            slots.makedirs(p.rsplit('/', 1)[0])
            os.mkdir(p)
"""


def _mkdirs_code(paths: list[str]) -> str:
    dirs = sorted({p.rsplit("/", 1)[0] for p in paths})
    return f"for _p in {dirs!r}:\n    slots.makedirs(_p)\n"


def _write(link: BoardLink, path: str, data: bytes, what: str,
           progress: Callable[[int], None] | None = None) -> None:
    """Write `data` to `path` on the board: open, a few base64 chunks per command, close."""
    link.exec(f"_f = open({path!r}, 'wb')\nfrom binascii import a2b_base64 as _d\n",
              f"opening {what} on the board")
    done = 0
    while done < len(data) or done == 0:
        lines = []
        end = min(len(data), done + COMMAND_BYTES)
        for i in range(done, end, CHUNK_BYTES):
            chunk = base64.b64encode(data[i:min(end, i + CHUNK_BYTES)]).decode("ascii")
            lines.append(f"_f.write(_d(b'{chunk}'))")
        if lines:
            link.exec("\n".join(lines) + "\n", f"sending {what}")
        done = end
        if progress:
            progress(done)
        if not data:
            break
    link.exec("_f.close()\ndel _f\n", f"closing {what}")


def _staged_hashes(link: BoardLink, slot: str) -> dict[str, str]:
    return link.exec_json(_use_slot_code(slot) + "import json\n"
                          f"print(json.dumps(slots.file_hashes({slot!r})))\n",
                          "checking the staged files on the board")


def _check_boots(link: BoardLink, slot: str, build: FirmwareBuild) -> None:
    boot_text = link.soft_reset()
    now = link.exec_json(
        _STATE.replace('st["hashes"] = slots.file_hashes(a) if a else {}',
                       'st["path"] = sys.path[0]').replace("NEW", "None"),
        "checking what the board booted")
    if not now or now.get("active") != slot or now.get("path") != slots.slot_dir(slot):
        said = " ".join(line.strip() for line in boot_text.splitlines() if line.strip())
        raise InstallError(f"after the switch the board did not boot the new firmware "
                           f"(boot.py said: {said or 'nothing'}); run the install again")
    manifest = now["slots"].get(slot, {}).get("manifest")
    if manifest != build.manifest_sha256:
        raise InstallError("the board booted a different build than the one installed: "
                           "run the install again")
