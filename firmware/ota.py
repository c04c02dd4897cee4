# The node's over-the-air update client (docs/ota.md §2 and §3): takes a release the
# gateway offers, pulls it in chunks over the node's own MQTT link, stages it into the
# inactive firmware slot, checks it, switches to it on trial and resets; after the boot
# into the trial it confirms the switch once the node is healthy.
#
# Loaded only for an update (node.py: firmware.use_module when an `offer` arrives or a
# job is pending at boot; drop_module when it is done), so a node in service keeps none of
# it in its heap (tests/firmware/test_installed_heap.py).
#
# In:  `offer` and `chunk` messages (on_message), service(now_ms) calls from node.py's loop.
# Out: `get` and `state` messages on the uplink; files in the inactive slot; the slot
# pointer switched (slots.switch(..., trial=True)) and confirmed (slots.confirm()).
#
# Progress lives in /ota/state.json (written with hal.Flash.replace, so a power cut leaves
# the old or the new copy):
#   {"serial", "version"}      the last confirmed release (0 and "" before the first)
#   "job": {"serial", "version", "slot", "phase", "file"}   the update in progress:
#          phase "meta" (pulling release.json/.sig into /ota/), "files" (pulling file
#          number `file` of release.json into the slot; a file's bytes so far are its size
#          on flash, so a cut link or a reboot resumes there), "staged", "switched"
#   "bad": [serial, ...]       releases that rolled back here: never taken again
#
# A power cut at any step leaves a bootable node: nothing touches the active slot, and the
# pointer moves only in slots.switch, after every file was checked (ota_verify.check_staged,
# then slots.check_slot again).  After the switch the node boots the new slot on trial;
# boot.py rolls back by itself after slots.MAX_TRIAL_BOOTS boots without a confirm.
#
# Health check after the boot into a trial (docs/ota.md §2): the sampler delivered a
# window (its sensors read) and the gateway sent a time message whose counter is at or
# above this boot's first frame counter (uplink/mqtt.py: the gateway accepted a frame made
# since this boot; the gateway's OTA server sends that message to a node it saw switch).
# Until both hold the switch is not confirmed; after TRIAL_TIMEOUT_MS the node resets, so
# a release that cannot pass uses up its trial boots and rolls back without anyone.
#
# On failure: a refused release (ota_verify.ReleaseRefused: signature, kind, hardware,
# serial, downgrade) is a `refused` state and its job is dropped; a file that fails its
# hash twice, or flash that cannot be written, is `failed`.  Link faults only pause: the
# `get` is sent again after GET_TIMEOUT_MS, or when the link is back.
#
# RAM: one chunk (the message umqtt.simple hands over, at most CHUNK_MAX_BYTES + header),
# release.json parsed (a few KB), a 512-byte hashing buffer; Ed25519's ints while checking.

import json
import os

from firmware import drop_module, slots, use_module

STATE_DIR = "ota"
STATE_FILE = "ota/state.json"
RELEASE_JSON = "release.json"
RELEASE_SIG = "release.sig"
CHUNK_MAX_BYTES = 1024  # asked for at once: bounds the message the node must hold in RAM
META_MAX_BYTES = 32768  # ota_verify.MAX_RELEASE_JSON: a larger release.json is not pulled
GET_TIMEOUT_MS = 4000  # no chunk in this time: ask again
TRIAL_TIMEOUT_MS = 600000  # a trial not healthy in this time resets (and so rolls back)
FILE_TRIES = 2  # a file whose hash fails this often fails the job
BAD_KEEP = 8  # serials remembered as rolled back
_VERIFY = "firmware.ota_verify"
_VERIFY_DEPS = ("firmware.ed25519", "firmware.sha512")


def read_state(flash):
    """/ota/state.json as a dict; a missing or torn file is a node that never updated."""
    for name in (STATE_FILE, STATE_FILE + ".new"):  # hal.Flash.replace's two steps
        data = flash.read(name)
        if not data:
            continue
        try:
            doc = json.loads(data)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return {"serial": 0, "version": ""}


def pending(flash):
    """True when an update is in progress (node.py loads this module at boot for it)."""
    return "job" in read_state(flash)


def _version_text(v):
    return "%d.%d.%d" % (v[0], v[1], v[2])


class OtaClient:
    """The update in progress on one node.  `node` is firmware.node.Node (its hw, cfg,
    uplink and counters); `version` its FIRMWARE_VERSION."""

    def __init__(self, node, version):
        self.node = node
        self.hw = node.hw
        self.flash = node.hw.flash
        self.root = self.flash.root or "/"
        self.version = version
        self.state = read_state(self.flash)
        self.job = self.state.get("job") or {}  # {} while no update is in progress
        self.doc = {}  # release.json, parsed and checked
        self.done = False  # node.py drops this module when set
        self.chunk_bytes = CHUNK_MAX_BYTES
        self._want = []  # [flash path, path, offset, length] asked for, not yet answered
        self._asked_at = 0
        self._tries = 0
        self._state_msg = None  # the latest state message not yet published
        self._trial_start = None
        self._active_shas = None  # {path: sha256} of the active slot's manifest
        self.chunks = 0
        self.bytes_in = 0
        if self.job:
            self._resume_at_boot()

    # -- what node.py calls ------------------------------------------------------------------

    def on_message(self, suffix, msg):
        try:
            if suffix == "offer":
                self._offer(msg)
            elif suffix == "chunk":
                self._chunk(msg)
        except OSError as exc:  # flash full or failing: nothing more can be staged
            self._fail("staging: %s" % (exc,))

    def service(self, now_ms):
        """Bounded work; returns how long the node may sleep (ms)."""
        clock = self.hw.clock
        self._flush_state_msg()
        job = self.job
        if not job:
            self.done = self._state_msg is None
            return 1000
        try:
            phase = job["phase"]
            if phase == "switched":
                return self._trial(now_ms)
            if phase == "staged":
                self._switch()
                return 0
            if not self._want:
                self._next_get(now_ms)
                return 0
            if clock.ticks_diff(now_ms, self._asked_at) >= GET_TIMEOUT_MS:
                self._send_get(now_ms)  # lost on the way (or the link was down): again
            up = self.node.uplink
            if up is not None:
                up.poll()
            return 10 if self._want else 0
        except OSError as exc:  # flash full or failing, or a file that fails its hash twice
            self._fail("staging: %s" % (exc,))
            return 0

    # -- offers ----------------------------------------------------------------------------

    def _offer(self, msg):
        try:
            offer = json.loads(msg)
            serial = offer["serial"]
            chunk = offer.get("chunk", CHUNK_MAX_BYTES)
            if not isinstance(serial, int) or not isinstance(chunk, int):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return  # not an offer: nothing in it is trusted anyway
        job = self.job
        if job and (job["phase"] == "switched" or serial <= job["serial"]):
            return  # the same offer again (this job carries on), or one older than it
        # (a newer release while staging an older one starts over with the newer one)
        if serial == self.state.get("serial", 0):
            # offered again (a gateway that restarted): say so, for the rollout's record
            self._say(serial, self.state.get("version"), "confirmed",
                      "release %d is the one installed" % serial)
            return
        if serial < self.state.get("serial", 0):
            self._say(serial, offer.get("version"), "refused",
                      "serial %d is not above %d, the release installed" % (
                          serial, self.state.get("serial", 0)))
            return
        if serial in self.state.get("bad", ()):
            self._say(serial, offer.get("version"), "refused",
                      "release %d rolled back on this node before" % serial)
            return
        self.chunk_bytes = max(64, min(chunk, CHUNK_MAX_BYTES))
        slot = slots.other(slots.active_slot(self.root) or slots.SLOTS[1])
        self.job = {"serial": serial, "version": str(offer.get("version", "")), "slot": slot,
                    "phase": "meta", "file": 0}
        self.doc = {}
        self._want = []
        self._makedirs(STATE_DIR)
        self._clear_meta()  # an older job's release.json must not pass for this one's
        self._save()
        self._say(serial, self.job["version"], "offered", "pulling release %d" % serial)

    # -- pulling ---------------------------------------------------------------------------

    def _meta(self, name):
        return STATE_DIR + "/" + name

    def _target(self):
        """(flash path relative to root, path in the release, expected size or None) of the
        next bytes needed, or None when everything of this phase is there."""
        job = self.job
        if job["phase"] == "meta":
            for name in (RELEASE_JSON, RELEASE_SIG):
                if not self.flash.exists(self._meta(name) + ".done"):
                    return self._meta(name), name, None
            return None
        files = self._files()
        while job["file"] < len(files):
            entry = files[job["file"]]
            rel = slots.FW_DIR + "/" + job["slot"] + "/" + entry["path"]
            if self._size(rel) < entry["size"] or (
                    entry["size"] == 0 and not self.flash.exists(rel)):
                return rel, entry["path"], entry["size"]
            self._file_done(entry, rel)
        return None

    def _files(self):
        """release.json's files, MANIFEST.json last (slots.py: a slot's manifest is written
        last, so a slot with a manifest is a complete one)."""
        files = self.doc["files"]
        return [e for e in files if e["path"] != slots.MANIFEST] + \
            [e for e in files if e["path"] == slots.MANIFEST]

    def _size(self, rel):
        try:
            return os.stat(self.flash.path(rel))[6]
        except OSError:
            return 0

    def _next_get(self, now_ms):
        job = self.job
        if job["phase"] == "files" and not self.doc:
            self._load_doc()
            if not self.job:
                return
        target = self._target()
        if target is None:
            if job["phase"] == "meta":
                self._check_release()
            else:
                self._check_staged()
            return
        rel, path, size = target
        offset = self._size(rel)
        if job["phase"] == "files" and offset == 0 and self._copy_unchanged(rel, path):
            return
        length = self.chunk_bytes if size is None else min(self.chunk_bytes, size - offset)
        self._want = [rel, path, offset, length]
        self._send_get(now_ms)

    def _send_get(self, now_ms):
        rel, path, offset, length = self._want
        self._asked_at = now_ms
        up = self.node.uplink
        if up is None:
            return
        up.publish_ota("get", json.dumps({"serial": self.job["serial"], "path": path,
                                          "offset": offset, "length": length}).encode())

    def _chunk(self, msg):
        want = self._want
        if not want or not self.job:
            return
        nl = msg.find(b"\n")
        if nl < 0:
            return
        try:
            head = json.loads(msg[:nl])
        except ValueError:
            return
        rel, path, offset, length = want
        if head.get("serial") != self.job["serial"] or head.get("path") != path:
            return  # an answer to an older question
        if "error" in head:
            self._fail("the gateway cannot send %s: %s" % (path, head["error"]))
            return
        if head.get("offset") != offset:
            return
        total = head.get("total")
        data = memoryview(msg)[nl + 1:]
        if not isinstance(total, int) or len(data) > length or offset + len(data) > total:
            return
        if self.job["phase"] == "meta":
            if total > META_MAX_BYTES:
                self._refuse("malformed", "%s has %d bytes, more than %d" % (
                    path, total, META_MAX_BYTES))
                return
        else:
            signed = (self._entry(path) or {}).get("size")
            if total != signed:
                self._fail("the gateway's %s has %d bytes, release.json says %s" % (
                    path, total, signed))
                return
        if not data and offset < total:
            return  # nothing new: asked again after GET_TIMEOUT_MS
        if offset == 0:
            self._makedirs(rel[:rel.rfind("/")])
        with open(self.flash.path(rel), "ab" if offset else "wb") as f:
            f.write(data)
        self.chunks += 1
        self.bytes_in += len(data)
        self._want = []
        if self.job["phase"] == "meta" and offset + len(data) >= total:
            self.flash.write(rel + ".done", b"")  # the whole file is there

    def _copy_unchanged(self, rel, path):
        """Copy a file the active slot has with the same SHA-256 (an update that changes a
        few modules pulls only those).  False when there is none."""
        active = slots.active_slot(self.root)
        if active is None or active == self.job["slot"]:
            return False
        if self._active_shas is None:
            manifest, _ = slots.read_manifest(active, self.root)
            self._active_shas = {}
            for e in (manifest or {}).get("files", ()):
                self._active_shas[e.get("path")] = e.get("sha256")
        entry = self._entry(path)
        if entry is None or self._active_shas.get(path) != entry["sha256"]:
            return False
        src = slots.slot_dir(active, self.root) + "/" + path
        self._makedirs(rel[:rel.rfind("/")])
        try:
            slots.copy_file(src, self.flash.path(rel))
        except OSError:
            self.flash.remove(rel)
            return False
        return True

    def _entry(self, path):
        for e in self.doc["files"]:
            if e["path"] == path:
                return e
        return None

    def _file_done(self, entry, rel):
        """A file reached its size: its hash decides whether the next one is due."""
        if self._size(rel) == entry["size"] and \
                slots.sha256_file(self.flash.path(rel)) == entry["sha256"]:
            self.job["file"] += 1
            self._tries = 0
            self._save()
            return
        self.flash.remove(rel)
        self._tries += 1
        if self._tries >= FILE_TRIES:
            raise OSError("%s failed its SHA-256 %d times" % (entry["path"], self._tries))

    # -- checks ----------------------------------------------------------------------------

    def _verifier(self):
        return use_module(_VERIFY)

    def _drop_verifier(self):
        drop_module(_VERIFY)
        for name in _VERIFY_DEPS:
            drop_module(name)

    def _node_facts(self):
        cfg = self.node.cfg
        board = cfg.board.get("profile") if cfg is not None else None
        return {"kind": cfg.kind if cfg is not None else None, "board": board,
                "version": tuple(self.version), "serial": self.state.get("serial", 0)}

    def _check_release(self):
        """Signature and facts of release.json (ota_verify.check_release); then the slot is
        emptied for staging."""
        v = self._verifier()
        try:
            pub = v.read_release_pub(self.root)
            doc = v.check_release(self.flash.read(self._meta(RELEASE_JSON)) or b"",
                                  self.flash.read(self._meta(RELEASE_SIG)) or b"", pub,
                                  self._node_facts())
        except v.ReleaseRefused as exc:
            self._drop_verifier()
            self._refuse(exc.reason, str(exc))
            return
        self._drop_verifier()
        if doc["serial"] != self.job["serial"]:
            self._refuse("malformed", "release.json is serial %d, the offer %d" % (
                doc["serial"], self.job["serial"]))
            return
        self.doc = doc
        self.job["version"] = doc["version"]
        slots.prepare(self.job["slot"], self.root)  # never the active one
        self.job["phase"] = "files"
        self.job["file"] = 0
        self._save()
        self._say(self.job["serial"], doc["version"], "downloading",
                  "%d files, %d bytes" % (len(doc["files"]), doc["size"]))

    def _load_doc(self):
        """release.json again after a reboot: checked again (a flash that changed since
        is not trusted)."""
        v = self._verifier()
        try:
            facts = self._node_facts()
            self.doc = v.check_release(self.flash.read(self._meta(RELEASE_JSON)) or b"",
                                       self.flash.read(self._meta(RELEASE_SIG)) or b"",
                                       v.read_release_pub(self.root), facts)
        except v.ReleaseRefused as exc:
            self._drop_verifier()
            self._refuse(exc.reason, str(exc))
            return
        self._drop_verifier()

    def _check_staged(self):
        v = self._verifier()
        try:
            sha = v.check_staged(self.job["slot"], self.doc, self.root)
        except v.ReleaseRefused as exc:
            self._drop_verifier()
            # a file changed on flash after its own check: pull everything again
            self._fail("staged slot: %s" % exc)
            return
        self._drop_verifier()
        self.job["phase"] = "staged"
        self.job["manifest"] = sha
        self._save()
        self._say(self.job["serial"], self.job["version"], "staged",
                  "every file checked; switching to slot %s" % self.job["slot"])

    # -- the switch and the trial ----------------------------------------------------------

    def _switch(self):
        job = self.job
        job["phase"] = "switched"
        # the pointer as it was: a boot that finds it unchanged knows the switch never
        # happened (a cut just here); a changed one that is not the job's slot rolled back
        job["before"] = slots.read_pointer(self.root)
        self._save()  # before the pointer moves: a boot finds the job either way
        try:
            slots.switch(job["slot"], job["manifest"], self.root, trial=True)
        except slots.SlotError as exc:
            self._fail(str(exc))
            return
        slots.count_trial_boot(self.root)  # the first trial boot, whatever reset starts it
        self._say(job["serial"], job["version"], "switched",
                  "slot %s on trial; resetting" % job["slot"])
        self._flush_state_msg()
        self._reset()

    def _reset(self):
        reset = getattr(self.hw, "reset", None)
        if reset is not None:
            reset()
            return
        import machine  # type: ignore

        machine.reset()

    def _resume_at_boot(self):
        """A job found at boot: a switch that rolled back, a trial to check, or a download
        to continue."""
        job = self.job
        if job["phase"] != "switched":
            return
        pointer = slots.read_pointer(self.root) or {}
        if pointer.get("slot") != job["slot"]:
            if pointer == (job.get("before") or {}):
                job["phase"] = "staged"  # cut between saving the phase and the switch
            else:
                self._rolled_back(job)
            return
        if not pointer.get("trial"):
            self._confirmed(job)  # cut between slots.confirm() and saving the state

    def _rolled_back(self, job):
        bad = [s for s in self.state.get("bad", []) if s != job["serial"]][-(BAD_KEEP - 1):]
        bad.append(job["serial"])
        self.state["bad"] = bad
        self._end_job()
        self._say(job["serial"], job["version"], "rolled_back",
                  "release %d did not confirm; back on the previous firmware" % job["serial"])

    def _trial(self, now_ms):
        node = self.node
        up = node.uplink
        clock = self.hw.clock
        if self._trial_start is None:
            self._trial_start = now_ms
        # this boot's counts: the Node is new at every boot
        sensors = node.frames_made - node.status_frames > 0
        accepted = up is not None and up.time_messages > 0
        if sensors and accepted:
            slots.confirm(self.root)
            self._confirmed(self.job)
            return 0
        if clock.ticks_diff(now_ms, self._trial_start) >= TRIAL_TIMEOUT_MS:
            print("ota: trial not healthy after %d s (sensors %s, frame accepted %s); "
                  "resetting" % (TRIAL_TIMEOUT_MS // 1000, sensors, accepted))
            slots.count_trial_boot(self.root)  # the next attempt, whatever reset starts it
            self._reset()
        return 1000

    def _confirmed(self, job):
        self.state["serial"] = job["serial"]
        self.state["version"] = job["version"]
        self._end_job()
        print("ota: release %d (%s) confirmed" % (job["serial"], job["version"]))
        self._say(job["serial"], job["version"], "confirmed", "health check passed")

    # -- state -----------------------------------------------------------------------------

    def _refuse(self, reason, sentence):
        job = self.job
        print("ota: release %d refused: %s" % (job["serial"], sentence))
        self._end_job()
        self._say(job["serial"], job["version"], "refused", "%s: %s" % (reason, sentence))

    def _fail(self, sentence):
        job = self.job
        if not job:
            return
        print("ota: release %d failed: %s" % (job["serial"], sentence))
        self._end_job()
        self._say(job["serial"], job["version"], "failed", sentence)

    def _end_job(self):
        self.state.pop("job", None)
        self.job = {}
        self.doc = {}
        self._want = []
        self._save()
        self._clear_meta()

    def _clear_meta(self):
        for name in (RELEASE_JSON, RELEASE_SIG):
            self.flash.remove(self._meta(name) + ".done")  # first: a cut leaves no marker
            self.flash.remove(self._meta(name))

    def _save(self):
        if self.job:
            self.state["job"] = self.job
        self._makedirs(STATE_DIR)
        self.flash.replace(STATE_FILE, json.dumps(self.state).encode())

    def _makedirs(self, rel):
        slots.makedirs(self.flash.path(rel))

    def _say(self, serial, version, state, detail):
        """Queue a `state` message (docs/ota.md §3); the latest one waits for the link."""
        self._state_msg = json.dumps({"serial": serial, "version": version or "",
                                      "state": state, "detail": detail}).encode()
        self._flush_state_msg()

    def _flush_state_msg(self):
        msg = self._state_msg
        up = self.node.uplink
        if msg is not None and up is not None and up.publish_ota("state", msg):
            self._state_msg = None
