"""Signed firmware releases (docs/ota.md §1): the release key, building a release directory
and checking one on the host.

In:  the fleet's release key (Ed25519 from `cryptography`, PEM, mode 0600), a firmware
     source tree (a `firmware/` directory; its FIRMWARE_VERSION line gives the version), a
     serial, the node kinds and board profiles it is for.
Out: a release directory: release.json (compact, sorted keys: the signed bytes),
     release.sig (128 hex digits), files/ (the slot's MANIFEST.json and every module compiled
     by mpy-cross, provisioning/build.py).  `load_release(dir)` reads one and
     `verify_release(dir, public_key)` checks it by the node's rules (for publish, rollout
     and `dordt fleet release verify`).
On failure: `ReleaseError` with what is wrong and what to do; it never holds key material
     (the private key is read by build only and is never printed, logged or put in an
     exception).

Layout of a key directory (`dordt fleet release key init`):
    release.key     the private key (PEM PKCS#8, mode 0600): keep it offline
    release.pub     the public key: 64 hex digits and a newline, as /release.pub on a node
    release.serial  the highest serial signed with this key (written by build just before
                    it signs), so a serial is never signed twice: a node refuses a serial at
                    or below the last one it installed (docs/ota.md §1)

The document checks (format, fields, files against a directory) are the node's own,
firmware/ota_verify.py, run here under CPython: one rule set, not two.  The signature is
checked with `cryptography` here and with firmware/ed25519.py on the node.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from firmware import ota_verify
from fleet.files import mkdirs_private, write_file_atomic, write_key_pair

if TYPE_CHECKING:  # cryptography is imported where it is used: `dordt --help` stays quick
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

FORMAT = ota_verify.FORMAT
FORMAT_VERSION = ota_verify.FORMAT_VERSION
PRIVATE_KEY_NAME = "release.key"
PUBLIC_KEY_NAME = "release.pub"
SERIAL_NAME = "release.serial"
RELEASE_JSON = "release.json"
RELEASE_SIG = "release.sig"
FILES_DIR = "files"
KINDS = ("air", "noise", "crowd")


class ReleaseError(ValueError):
    """A release, key or argument that cannot be used; the message names the file and
    the fix and never holds key material."""


# -- the release key -------------------------------------------------------------------------


def public_key_text(public: Ed25519PublicKey) -> str:
    """release.pub's text: 64 hex digits and a newline (the node's /release.pub, too)."""
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex() + "\n"


def init_release_key(directory: Path) -> tuple[Path, Path]:
    """Make the fleet's release key pair in `directory`; refuses to overwrite one."""
    private_path = Path(directory) / PRIVATE_KEY_NAME
    public_path = Path(directory) / PUBLIC_KEY_NAME
    if private_path.exists() or public_path.exists():
        raise ReleaseError(f"{private_path.parent} holds a release key already: the fleet has "
                           "one; use it (nodes trust only it), or move it away first if it "
                           "is to be replaced")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    write_key_pair(private, private_path, public_path, public_key_text(private.public_key()))
    return private_path, public_path


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReleaseError(f"{path}: no release key there (make one with `dordt fleet "
                           "release key init`, or mount the offline key)") from None
    except OSError as exc:
        raise ReleaseError(f"{path}: cannot read the release key ({exc.strerror}); check its "
                           "permissions (0600, owned by you)") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ReleaseError(f"{path}: not a PEM Ed25519 private key (an unencrypted "
                           f"{PRIVATE_KEY_NAME} from `dordt fleet release key init`)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(f"{path}: holds a {type(key).__name__}, not an Ed25519 key")
    return key


def parse_public_key(text: str, where: str) -> bytes:
    raw = b""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        pass
    if len(raw) != 32:
        raise ReleaseError(f"{where}: not a release public key (64 hex digits, as "
                           f"{PUBLIC_KEY_NAME} from `dordt fleet release key init`)")
    return raw


def load_public_key(path: Path) -> bytes:
    """The 32 raw bytes of a release.pub file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ReleaseError(f"{path}: no release public key there ({PUBLIC_KEY_NAME} from "
                           "`dordt fleet release key init`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"{path}: cannot read the release public key ({exc})") from None
    return parse_public_key(text, str(path))


# -- a release directory ---------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """A release directory as read: the signed bytes, the signature and the document."""

    root: Path
    json_bytes: bytes
    signature: bytes
    doc: dict

    @property
    def serial(self) -> int:
        return self.doc["serial"]

    @property
    def version(self) -> str:
        return self.doc["version"]

    @property
    def rollback(self) -> bool:
        return self.doc.get("rollback") is True

    @property
    def kinds(self) -> list[str]:
        return list(self.doc["kinds"])

    @property
    def hardware(self) -> list[str]:
        return list(self.doc["hardware"])

    @property
    def size(self) -> int:
        return self.doc["size"]

    @property
    def files(self) -> list[dict]:
        return list(self.doc["files"])

    @property
    def files_dir(self) -> Path:
        return self.root / FILES_DIR

    @property
    def manifest_sha256(self) -> str:
        """The slot manifest's hash: what a node's slots.switch() and boot() check."""
        return next(f["sha256"] for f in self.doc["files"] if f["path"] == "MANIFEST.json")

    def file_path(self, path: str) -> Path:
        """Where a file of `files` (or release.json / release.sig) is in the directory;
        ReleaseError for a name the release does not have (a gateway serves only these)."""
        if path in (RELEASE_JSON, RELEASE_SIG):
            return self.root / path
        if not any(f["path"] == path for f in self.doc["files"]):
            raise ReleaseError(f"release {self.serial} has no file {path!r}")
        return self.files_dir / path


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_release(directory: Path) -> Release:
    """Read a release directory and check its document's form (ota_verify's rules); the
    signature and files are checked by verify_release()."""
    root = Path(directory)
    try:
        json_bytes = (root / RELEASE_JSON).read_bytes()
        sig_text = (root / RELEASE_SIG).read_text(encoding="ascii")
    except FileNotFoundError as exc:
        raise ReleaseError(f"{root}: not a release directory (no {Path(exc.filename).name}); "
                           "make one with `dordt fleet release build`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"{root}: cannot read the release ({exc})") from None
    try:
        signature = bytes.fromhex(sig_text.strip())
    except ValueError:
        signature = b""
    if len(signature) != 64:
        raise ReleaseError(f"{root / RELEASE_SIG}: not an Ed25519 signature (128 hex digits)")
    try:
        doc = ota_verify.check_document(json_bytes)
    except ota_verify.ReleaseRefused as exc:
        raise ReleaseError(f"{root / RELEASE_JSON}: {exc}") from None
    return Release(root, json_bytes, signature, doc)


def verify_release(directory: Path, public_key: bytes | Ed25519PublicKey) -> Release:
    """The release, when its signature verifies with `public_key` (32 bytes or a key) and
    every file under files/ is the one release.json names (size, SHA-256), the slot
    MANIFEST.json names exactly the other files, and files/ holds nothing else."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    release = load_release(directory)
    if isinstance(public_key, (bytes, bytearray)):
        public_key = Ed25519PublicKey.from_public_bytes(bytes(public_key))
    try:
        public_key.verify(release.signature, release.json_bytes)
    except InvalidSignature:
        raise ReleaseError(f"{release.root}: release.json's signature does not verify with "
                           "this release key: not this fleet's release, or altered; do not "
                           "publish it") from None
    try:
        ota_verify.check_files(str(release.files_dir), release.doc)
    except ota_verify.ReleaseRefused as exc:
        raise ReleaseError(f"{release.root}: {exc} ({exc.reason}); build the release "
                           "again") from None
    named = {f["path"] for f in release.doc["files"]}
    present = {p.relative_to(release.files_dir).as_posix()
               for p in release.files_dir.rglob("*") if p.is_file()}
    extra = sorted(present - named)
    if extra:
        raise ReleaseError(f"{release.root}: files/ holds {', '.join(extra[:3])}"
                           f"{' ...' if len(extra) > 3 else ''}, which release.json does not "
                           "name; build the release again")
    return release


# -- building ---------------------------------------------------------------------------------


def _check_build_args(serial: int, kinds: list[str], hardware: list[str],
                      min_firmware: str, boards: dict) -> None:
    if isinstance(serial, bool) or not isinstance(serial, int) or serial < 1:
        raise ReleaseError(f"--serial {serial!r}: a release serial is a whole number, 1 or "
                           "more, above every serial the fleet signed before")
    if not kinds:
        raise ReleaseError(f"--kinds: name the node kinds the release is for ({', '.join(KINDS)})")
    for kind in kinds:
        if kind not in KINDS:
            raise ReleaseError(f"--kinds {kind!r}: node kinds are {', '.join(KINDS)}")
    for board in hardware:
        if board not in boards:
            raise ReleaseError(f"--hardware {board!r}: board profiles are "
                               f"{', '.join(sorted(boards))} (hardware/data/boards/)")
    try:
        ota_verify.parse_version(min_firmware)
    except ValueError:
        raise ReleaseError(f"--min-firmware {min_firmware!r}: give a version M.m.p, e.g. "
                           "0.1.0") from None


def _last_serial(key_path: Path) -> int:
    path = key_path.parent / SERIAL_NAME
    try:
        return int(path.read_text(encoding="ascii").strip() or 0)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{path}: cannot read the last serial signed ({exc}); it holds one "
                           "number: fix or remove it, then build again") from None


def build_release(key_path: Path, serial: int, kinds: list[str], out: Path,
                  hardware: list[str] | None = None, min_firmware: str = "0.0.0",
                  rollback: bool = False, source: Path | None = None, arch: str | None = None,
                  clock=time.time, cache_dir: Path | None = None) -> Release:
    """Compile `source` (default: this checkout's firmware/) and write a signed release
    directory at `out` (which must not exist, or be empty).  The version is the source's
    FIRMWARE_VERSION.  `hardware` defaults to every board profile; `cache_dir` is
    provisioning/build.py's compile cache (default: the user's)."""
    from hardware.profiles import ProfileError, load_boards
    from provisioning.build import FIRMWARE_DIR, BuildError, build_firmware

    try:
        boards = load_boards()
    except ProfileError as exc:
        raise ReleaseError(f"cannot read the board profiles: {exc}") from None
    kinds = list(dict.fromkeys(kinds))
    hardware = list(dict.fromkeys(hardware)) if hardware else sorted(boards)
    _check_build_args(serial, kinds, hardware, min_firmware, boards)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReleaseError(f"{out} exists and is not an empty directory: give --out a new "
                           "directory (one per release)")
    key_path = Path(key_path)
    key = load_signing_key(key_path)
    last = _last_serial(key_path)
    if serial <= last:
        raise ReleaseError(f"--serial {serial}: this key signed serial {last} already "
                           f"({key_path.parent / SERIAL_NAME}); nodes refuse a serial at or "
                           f"below the last they installed: use {last + 1} or more")
    source = Path(source) if source is not None else FIRMWARE_DIR
    try:
        build = build_firmware(arch=arch, source=source, cache_dir=cache_dir)
    except BuildError as exc:
        raise ReleaseError(str(exc)) from None
    manifest = build.manifest_bytes()
    files = [(ota_verify.slots.MANIFEST, manifest)] + [(f.path, f.data) for f in build.files]
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": build.version,
        "serial": serial,
        "rollback": bool(rollback),
        "kinds": kinds,
        "arch": arch,
        "min_firmware": min_firmware,
        "hardware": hardware,
        "files": [{"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
                  for p, d in files],
        "size": sum(len(d) for _, d in files),
        "created": int(clock()),
    }
    json_bytes = _canonical(doc)
    try:
        ota_verify.check_document(json_bytes)  # what a node will check of its form
    except ota_verify.ReleaseRefused as exc:
        raise ReleaseError(f"the release would not be valid: {exc}") from None
    # The serial is recorded before anything is signed, so no crash or full disk after this
    # point can lead to signing it twice; a build that fails from here on skips a serial,
    # which nodes do not mind (serials only have to grow).
    serial_path = key_path.parent / SERIAL_NAME
    try:
        write_file_atomic(serial_path, f"{serial}\n".encode(), 0o644)
    except OSError as exc:
        raise ReleaseError(f"cannot record serial {serial} in {serial_path} ({exc.strerror}): "
                           "the release key's directory must be writable (it keeps the last "
                           "serial signed); nothing was signed") from None
    signature = key.sign(json_bytes)
    _write_release(out, json_bytes, signature, files)
    return Release(out, json_bytes, signature, doc)


def _write_release(out: Path, json_bytes: bytes, signature: bytes,
                   files: list[tuple[str, bytes]]) -> None:
    # Written in a temporary directory beside `out` and renamed into place: a cut build
    # leaves no directory that looks like a release.
    mkdirs_private(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for path, data in files:
            target = tmp / FILES_DIR / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (tmp / RELEASE_JSON).write_bytes(json_bytes)
        (tmp / RELEASE_SIG).write_text(signature.hex() + "\n", encoding="ascii")
        os.chmod(tmp, 0o755)
        if out.exists():
            out.rmdir()  # empty (checked by the caller)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
