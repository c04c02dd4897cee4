# The node's checks of a firmware release (docs/ota.md §2): whether to take it, and whether
# what was downloaded into the inactive slot is exactly what the fleet signed.  The OTA
# client (firmware/ota.py) loads this module for an update only and gives it back after:
#     v = firmware.use_module("firmware.ota_verify") ... drop_module("firmware.ota_verify")
# (and "firmware.slots" when the client had not loaded it itself), so a node in service
# holds none of it (tests/firmware/test_installed_heap.py).  check_release loads
# firmware.ed25519 (and firmware.sha512) for the signature and drops them itself.
#
# API (for the OTA client and tests):
#   read_release_pub(root="/") -> 32 bytes     the fleet's key from /release.pub (64 hex)
#   check_release(release_json, sig_hex, release_pub, node) -> doc
#       release_json: release.json's bytes as downloaded; sig_hex: release.sig's text
#       (128 hex digits, whitespace around it ignored); release_pub: 32 bytes;
#       node: dict {"kind": "air", "board": "pico-w" (hardware profile id),
#                   "version": (0, 1, 0) (running FIRMWARE_VERSION),
#                   "serial": last installed release serial (0 when none)}.
#       Returns the parsed release.json (a dict) when the node may take it.
#   check_staged(slot, doc, root="/") -> manifest_sha
#       every file of doc["files"] staged under the slot with its size and SHA-256, and the
#       staged MANIFEST.json the one release.json names and naming exactly those files;
#       returns MANIFEST.json's sha256 for slots.switch(slot, manifest_sha, trial=True).
#   check_document(release_json) -> doc, check_files(dir, doc) -> manifest_sha: the same
#       rules without the node (fleet/release.py runs them on the host)
#   parse_version("M.m.p") -> (M, m, p)
#
# On failure: ReleaseRefused(reason, sentence): `reason` is a short stable code for the OTA
# `state` message and for tests, str() a sentence for people:
#   check_release: too_large (release.json above MAX_RELEASE_JSON), no_key, bad_signature,
#                  unknown_format, malformed, wrong_kind, wrong_hardware, replayed,
#                  downgrade, too_old
#   check_staged:  missing_file, wrong_size (a truncated or overlong download), bad_hash,
#                  wrong_manifest
# The checks run in the order of docs/ota.md §2: the signature first, so nothing of an
# unsigned document is believed (not even its format).
#
# RAM: release.json's bytes and the parsed document (a few KB), Ed25519's working ints, one
# 512-byte hashing buffer (firmware/slots.py's sha256_file).  Measured under MicroPython
# 1.27 from .mpy files (bench/ota.py): ~25 KB held while an update runs (this module,
# slots, hal and a 33-file release.json), plus ~13 KB for ed25519 + sha512 during the
# signature check only.

import json
import os
from binascii import unhexlify

from firmware import drop_module, slots, use_module

FORMAT = "dordt-release"
FORMAT_VERSION = 1
_ED25519 = "firmware.ed25519"
_SHA512 = "firmware.sha512"
RELEASE_PUB = "release.pub"  # at the flash root, outside the slots: no update changes it
# The largest release.json a node takes (a full release of today's firmware is ~4.3 KB):
# the OTA client fetches no more than this, and check_release hashes no more, so an
# offer cannot make the node read or hash without end before its signature is known.
MAX_RELEASE_JSON = 32768


class ReleaseRefused(Exception):
    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


def parse_version(text):
    """"M.m.p" -> (M, m, p); ValueError when it is not three decimal numbers."""
    if not isinstance(text, str):
        raise ValueError("a version is a string M.m.p, not %r" % (text,))
    parts = text.split(".")
    if len(parts) != 3 or not all(p and p.isdigit() for p in parts):
        raise ValueError("a version is M.m.p (three numbers), not %r" % text)
    return (int(parts[0]), int(parts[1]), int(parts[2]))


def _version_text(v):
    return "%d.%d.%d" % (v[0], v[1], v[2])


def read_release_pub(root="/"):
    """The fleet's release public key (32 bytes) from /release.pub; ReleaseRefused("no_key")
    when the node has none or it is not 64 hex digits (written at enrolment)."""
    path = slots._join(root, RELEASE_PUB)
    try:
        with open(path, "rb") as f:
            text = f.read().strip()
        key = unhexlify(text)
    except (OSError, ValueError):
        key = b""
    if len(key) != 32:
        raise ReleaseRefused("no_key", "this node has no valid /release.pub (64 hex digits "
                             "written at enrolment), so it takes no update over the air")
    return key


def _verify_signature(release_json, sig_hex, release_pub):
    try:
        if isinstance(sig_hex, str):
            sig_hex = sig_hex.encode()
        sig = unhexlify(bytes(sig_hex).strip())
    except ValueError:
        sig = b""
    if len(sig) != 64:
        raise ReleaseRefused("bad_signature", "release.sig is not 128 hex digits")
    # Ed25519 (and the pure SHA-512 it may load) only for this call: ~13 KB of bytecode and
    # constants a node in service should not hold.
    ed25519 = use_module(_ED25519)
    try:
        ok = len(release_pub) == 32 and ed25519.verify(release_pub, release_json, sig)
    finally:
        drop_module(_ED25519)
        drop_module(_SHA512)
    if not ok:
        raise ReleaseRefused("bad_signature", "release.json's signature does not verify with "
                             "this node's release key: not a release of this fleet, or altered")


def _parse(release_json):
    try:
        doc = json.loads(bytes(release_json).decode())
    except (ValueError, UnicodeError, RuntimeError):  # RuntimeError: nested too deep
        raise ReleaseRefused("malformed", "release.json is not JSON") from None
    if not isinstance(doc, dict):
        raise ReleaseRefused("malformed", "release.json is not a JSON object")
    return doc


def _wrong_type(key):
    return ReleaseRefused("malformed", "release.json's %r is missing or of the wrong type" % key)


def _list_field(doc, key):
    value = doc.get(key)
    if not isinstance(value, list):
        raise _wrong_type(key)
    return value


def _int_field(doc, key):
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong_type(key)
    return value


def _version_field(doc, key):
    try:
        return parse_version(doc.get(key))
    except ValueError:
        raise ReleaseRefused("malformed",
                             "release.json's %r is not a version M.m.p" % key) from None


def _check_files(doc):
    files = _list_field(doc, "files")
    total = 0
    seen = {}
    for entry in files:
        if not isinstance(entry, dict):
            raise ReleaseRefused("malformed", "release.json's files are not all objects")
        path = entry.get("path")
        size = entry.get("size")
        sha = entry.get("sha256")
        if (not isinstance(path, str) or not path or path.startswith("/")
                or ".." in path.split("/") or path in seen):
            raise ReleaseRefused("malformed", "release.json names a bad or repeated file "
                                 "path %r" % (path,))
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ReleaseRefused("malformed", "release.json gives %s no valid size" % path)
        if not isinstance(sha, str) or len(sha) != 64:
            raise ReleaseRefused("malformed", "release.json gives %s no valid sha256" % path)
        seen[path] = True
        total += size
    if slots.MANIFEST not in seen:
        raise ReleaseRefused("malformed", "release.json does not name the slot's %s"
                             % slots.MANIFEST)
    if doc.get("size") != total:
        raise ReleaseRefused("malformed", "release.json's size is not the sum of its files")


def _check_size(release_json):
    if len(release_json) > MAX_RELEASE_JSON:
        raise ReleaseRefused("too_large", "release.json has %d bytes, more than the %d a "
                             "node takes" % (len(release_json), MAX_RELEASE_JSON))


def check_document(release_json):
    """release.json parsed, when its format is known and its fields are well formed (no
    signature check: that is check_release's first step on the node, `cryptography`'s on the
    host, fleet/release.py); else ReleaseRefused("too_large", "unknown_format" or
    "malformed")."""
    _check_size(release_json)
    doc = _parse(release_json)
    if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
        raise ReleaseRefused("unknown_format", "release format %r version %r is not one this "
                             "firmware knows (%s %d)" % (doc.get("format"),
                                                         doc.get("format_version"), FORMAT,
                                                         FORMAT_VERSION))
    for key in ("kinds", "hardware"):
        values = _list_field(doc, key)
        if not all(isinstance(v, str) for v in values):
            raise ReleaseRefused("malformed", "release.json's %r are not all names" % key)
    if _int_field(doc, "serial") < 1:
        raise ReleaseRefused("malformed", "release.json's serial is below 1")
    if not isinstance(doc.get("rollback", False), bool):
        raise ReleaseRefused("malformed", "release.json's 'rollback' is not true or false")
    _version_field(doc, "version")
    _version_field(doc, "min_firmware")
    _check_files(doc)
    return doc


def check_release(release_json, sig_hex, release_pub, node):
    """The parsed release.json when this node may take the release; else ReleaseRefused."""
    _check_size(release_json)  # before hashing it for the signature
    _verify_signature(release_json, sig_hex, release_pub)
    doc = check_document(release_json)
    kinds = doc["kinds"]
    if node["kind"] not in kinds:
        raise ReleaseRefused("wrong_kind", "the release is for %s nodes, not %s"
                             % (", ".join(kinds) or "no", node["kind"]))
    hardware = doc["hardware"]
    if node["board"] not in hardware:
        raise ReleaseRefused("wrong_hardware", "the release is for %s boards, not %s"
                             % (", ".join(hardware) or "no", node["board"]))
    serial = doc["serial"]
    last = node.get("serial") or 0
    if serial <= last:
        raise ReleaseRefused("replayed", "release serial %d is not above %d, the last one "
                             "installed: an old release offered again" % (serial, last))
    version = parse_version(doc["version"])
    running = tuple(node["version"])
    if version <= running and doc.get("rollback") is not True:
        raise ReleaseRefused("downgrade", "release %s is not newer than the running %s and "
                             "is not signed as a rollback" % (_version_text(version),
                                                              _version_text(running)))
    minimum = parse_version(doc["min_firmware"])
    if running < minimum:
        raise ReleaseRefused("too_old", "the running firmware %s is older than %s, the oldest "
                             "this release updates from: install an intermediate release "
                             "first" % (_version_text(running), _version_text(minimum)))
    return doc


def check_files(base, doc):
    """MANIFEST.json's sha256 when every file of `doc` (a checked release.json) is under the
    directory `base` with its size and SHA-256, and that MANIFEST.json names exactly the
    release's other files with the same hashes and sizes; else ReleaseRefused."""
    buf = bytearray(512)
    manifest_sha = None
    for entry in doc["files"]:
        path = slots._join(base, entry["path"])
        try:
            size = os.stat(path)[6]
        except OSError:
            raise ReleaseRefused("missing_file", "%s is missing" % entry["path"]) from None
        if size != entry["size"]:
            raise ReleaseRefused("wrong_size", "%s has %d bytes, not %d: a cut or overlong "
                                 "download" % (entry["path"], size, entry["size"]))
        if slots.sha256_file(path, buf) != entry["sha256"]:
            raise ReleaseRefused("bad_hash", "%s does not match its SHA-256 in release.json"
                                 % entry["path"])
        if entry["path"] == slots.MANIFEST:
            manifest_sha = entry["sha256"]
    try:
        with open(slots._join(base, slots.MANIFEST), "rb") as f:
            manifest = json.loads(f.read())
        named = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ReleaseRefused("wrong_manifest", "%s is not a slot manifest"
                             % slots.MANIFEST) from None
    # The slot manifest must name exactly the release's other files: slots.check_slot (which
    # boot() runs at every start) then checks the bytes the signature covered, nothing else.
    signed = {}
    for e in doc["files"]:
        if e["path"] != slots.MANIFEST:
            signed[e["path"]] = (e["sha256"], e["size"])
    if not isinstance(named, list) or len(named) != len(signed):
        raise ReleaseRefused("wrong_manifest", "%s names other files than release.json"
                             % slots.MANIFEST)
    for entry in named:
        if not isinstance(entry, dict) or \
                signed.get(entry.get("path")) != (entry.get("sha256"), entry.get("size")):
            raise ReleaseRefused("wrong_manifest", "%s names a file that release.json does "
                                 "not sign as it is" % slots.MANIFEST)
    return manifest_sha


def check_staged(slot, doc, root="/"):
    """check_files() on the staged slot: MANIFEST.json's sha256 for
    slots.switch(slot, manifest_sha, trial=True); else ReleaseRefused."""
    return check_files(slots.slot_dir(slot, root), doc)
