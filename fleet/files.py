"""Files that hold fleet state (keyrings, CA material, gateway keys): written so that a
crash leaves the old file or the new one, never a torn one, and a secret is never readable
by others, not even for a moment.  Shared by fleet/ and the gateway."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_file_atomic(path: Path, data: bytes, mode: int, group: int | None = None) -> None:
    """Temporary file with `mode` (and `group`) from the start, fsync, rename, fsync the
    directory: a crash leaves the old file or the new one, never a torn one or a readable
    key.  Missing parent directories are made with mode 0700."""
    mkdirs_private(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        if group is not None:
            os.fchown(fd, -1, group)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def mkdirs_private(path: Path) -> None:
    # Path.mkdir(parents=True, mode=...) gives the mode to the last directory only.
    for d in reversed([path, *path.parents]):
        if not d.exists():
            d.mkdir(mode=0o700, exist_ok=True)


def write_key_pair(private, private_path: Path, public_path: Path, public_text: str) -> None:
    """A new key pair's files: the private key as unencrypted PKCS#8 PEM, mode 0600, and the
    public key's one-line text, mode 0644 (enrolment, release and keyring keys alike)."""
    from cryptography.hazmat.primitives import serialization

    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_file_atomic(private_path, pem, 0o600)
    write_file_atomic(public_path, public_text.encode(), 0o644)
