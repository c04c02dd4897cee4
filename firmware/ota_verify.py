# The node's checks of a firmware release (docs/ota.md §2): whether to take it, and whether
# what was downloaded into the inactive slot is exactly what the fleet signed.  The OTA
# client (firmware/ota.py) loads this module for an update only and gives it back after:
#     v = firmware.use_module("firmware.ota_verify") ... drop_module("firmware.ota_verify")
# (and drops "firmware.ed25519" / "firmware.sha512" too), so a node in service holds none
# of it (tests/firmware/test_installed_heap.py).
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
#   parse_version("M.m.p") -> (M, m, p)
#
# On failure: ReleaseRefused(reason, sentence): `reason` is a short stable code for the OTA
# `state` message and for tests, str() a sentence for people:
#   check_release: no_key, bad_signature, malformed, unknown_format, wrong_kind,
#                  wrong_hardware, replayed, downgrade, too_old
#   check_staged:  missing_file, wrong_size (a truncated or overlong download), bad_hash,
#                  wrong_manifest
# The checks run in the order of docs/ota.md §2: the signature first, so nothing of an
# unsigned document is believed (not even its format).
#
# RAM: release.json's bytes and the parsed document (a few KB), Ed25519's working ints, one
# 512-byte hashing buffer (firmware/slots.py's sha256_file).

import json
import os
from binascii import unhexlify

from firmware import slots

FORMAT = "dordt-release"
FORMAT_VERSION = 1
RELEASE_PUB = "release.pub"  # at the flash root, outside the slots: no update changes it


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
    from firmware import ed25519

    try:
        if isinstance(sig_hex, str):
            sig_hex = sig_hex.encode()
        sig = unhexlify(bytes(sig_hex).strip())
    except ValueError:
        sig = b""
    if len(sig) != 64:
        raise ReleaseRefused("bad_signature", "release.sig is not 128 hex digits")
    if len(release_pub) != 32 or not ed25519.verify(release_pub, release_json, sig):
        raise ReleaseRefused("bad_signature", "release.json's signature does not verify with "
                             "this node's release key: not a release of this fleet, or altered")


def _parse(release_json):
    try:
        doc = json.loads(bytes(release_json).decode())
    except (ValueError, UnicodeError):
        raise ReleaseRefused("malformed", "release.json is not JSON") from None
    if not isinstance(doc, dict):
        raise ReleaseRefused("malformed", "release.json is not a JSON object")
    return doc


def _field(doc, key, kind):
    value = doc.get(key)
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ReleaseRefused("malformed", "release.json's %r is missing or of the wrong type"
                             % key)
    return value


def _version_field(doc, key):
    try:
        return parse_version(doc.get(key))
    except ValueError:
        raise ReleaseRefused("malformed",
                             "release.json's %r is not a version M.m.p" % key) from None


def _check_files(doc):
    files = _field(doc, "files", list)
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


def check_release(release_json, sig_hex, release_pub, node):
    """The parsed release.json when this node may take the release; else ReleaseRefused."""
    _verify_signature(release_json, sig_hex, release_pub)
    doc = _parse(release_json)
    if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
        raise ReleaseRefused("unknown_format", "release format %r version %r is not one this "
                             "firmware knows (%s %d)" % (doc.get("format"),
                                                         doc.get("format_version"), FORMAT,
                                                         FORMAT_VERSION))
    kinds = _field(doc, "kinds", list)
    if node["kind"] not in kinds:
        raise ReleaseRefused("wrong_kind", "the release is for %s nodes, not %s"
                             % (", ".join(str(k) for k in kinds) or "no", node["kind"]))
    hardware = _field(doc, "hardware", list)
    if node["board"] not in hardware:
        raise ReleaseRefused("wrong_hardware", "the release is for %s boards, not %s"
                             % (", ".join(str(h) for h in hardware) or "no", node["board"]))
    serial = _field(doc, "serial", int)
    if serial <= node.get("serial", 0):
        raise ReleaseRefused("replayed", "release serial %d is not above %d, the last one "
                             "installed: an old release offered again" % (serial,
                                                                          node.get("serial", 0)))
    version = _version_field(doc, "version")
    running = tuple(node["version"])
    rollback = doc.get("rollback") is True
    if version <= running and not rollback:
        raise ReleaseRefused("downgrade", "release %s is not newer than the running %s and "
                             "is not signed as a rollback" % (_version_text(version),
                                                              _version_text(running)))
    minimum = _version_field(doc, "min_firmware")
    if running < minimum:
        raise ReleaseRefused("too_old", "the running firmware %s is older than %s, the oldest "
                             "this release updates from: install an intermediate release "
                             "first" % (_version_text(running), _version_text(minimum)))
    _check_files(doc)
    return doc


def check_staged(slot, doc, root="/"):
    """MANIFEST.json's sha256 when every file of `doc` (a release.json that check_release
    accepted) is staged in `slot` with its size and hash; else ReleaseRefused."""
    base = slots.slot_dir(slot, root)
    buf = bytearray(512)
    manifest_sha = None
    for entry in doc["files"]:
        path = slots._join(base, entry["path"])
        try:
            size = os.stat(path)[6]
        except OSError:
            raise ReleaseRefused("missing_file", "%s was not staged" % entry["path"]) from None
        if size != entry["size"]:
            raise ReleaseRefused("wrong_size", "%s has %d bytes, not %d: a cut or overlong "
                                 "download" % (entry["path"], size, entry["size"]))
        if slots.sha256_file(path, buf) != entry["sha256"]:
            raise ReleaseRefused("bad_hash", "%s does not match its SHA-256 in release.json"
                                 % entry["path"])
        if entry["path"] == slots.MANIFEST:
            manifest_sha = entry["sha256"]
    manifest, sha = slots.read_manifest(slot, root)
    if manifest is None or sha != manifest_sha:
        raise ReleaseRefused("wrong_manifest", "the staged %s is not the one release.json "
                             "names" % slots.MANIFEST)
    # The slot manifest must name exactly the release's other files: slots.check_slot (which
    # boot() runs) then checks the same bytes the signature covered, and nothing unsigned.
    signed = {}
    for e in doc["files"]:
        if e["path"] != slots.MANIFEST:
            signed[e["path"]] = (e["sha256"], e["size"])
    named = manifest.get("files", ())
    if len(named) != len(signed):
        raise ReleaseRefused("wrong_manifest", "the staged %s names other files than "
                             "release.json" % slots.MANIFEST)
    for entry in named:
        if signed.get(entry.get("path")) != (entry.get("sha256"), entry.get("size")):
            raise ReleaseRefused("wrong_manifest", "the staged %s names %s, which "
                                 "release.json does not sign as it is" % (slots.MANIFEST,
                                                                          entry.get("path")))
    return manifest_sha
