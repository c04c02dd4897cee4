"""The gateway's keyring, taken from its file at start and again whenever the file changes,
while the gateway runs.

In:  the configured keyring file ([gateway] keyring) and, for a signed keyring
     (fleet/keyring_file.py), the fleet's keyring-signing public key ([gateway]
     keyring_signer), this gateway's X25519 keyring key ([gateway] keyring_key, default
     DATA_DIR/keyring-x25519.pem) and its id ([gateway] id).
Out: `load()` at start gives the keyring to use; `poll()` (the pipeline calls it every
     `poll_s` on its own thread, so the verifier never sees a keyring change mid-group)
     gives a newer keyring, or None.
On failure: at start, `KeyringError` when there is no usable keyring at all (exit 2).
     While running, a file that is wrongly signed, undecryptable, for another gateway,
     not newer than the one in use, or malformed is refused with one log line and a count
     by reason (`refused`, shown by /healthz and /metrics); the keyring in use stays.

With a signing key configured, only signed keyrings are taken: a plain JSON file put in
its place is refused (it would bypass the signature).  The last good signed file (still
sealed: no key in the clear) is kept as DATA_DIR/keyring.last-good; at start it is used
when the configured file is refused, and its serial is the floor a new file must exceed,
so a restart does not reopen the door to an older keyring.  Without a signing key the file
is a plain keyring (fleet/keyring.py, mode 0600), re-read when it changes (demo, lab).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path

from fleet import keyring_file
from fleet.files import write_file_atomic
from fleet.keyring import Keyring, KeyringError

log = logging.getLogger("dordt.gateway.keyring")

LAST_GOOD_NAME = "keyring.last-good"
DEFAULT_POLL_S = 10.0


class KeyringSource:
    def __init__(self, path: str | Path, data_dir: str | Path, gateway_id: str,
                 signer_path: str | Path | None = None,
                 private_key_path: str | Path | None = None,
                 poll_s: float = DEFAULT_POLL_S):
        self.path = Path(path)
        self.data_dir = Path(data_dir)
        self.gateway_id = gateway_id
        self.signer_path = Path(signer_path) if signer_path else None
        self.private_key_path = Path(private_key_path) if private_key_path else (
            self.data_dir / keyring_file.GATEWAY_PRIVATE_NAME)
        self.poll_s = poll_s
        self.serial = 0  # of the signed keyring in use; 0: none (plain keyrings have none)
        self.issued_at: str | None = None
        self.loaded = 0  # keyrings taken since start, the first one included
        self.refused: Counter = Counter()
        self.last_refusal: str | None = None
        self.last_refused_s: float | None = None
        self._seen: tuple | None = None  # the file's (inode, size, mtime) when last read
        self._next_poll = 0.0
        self._signer = None
        self._private = None
        self._keep = True

    @property
    def signed(self) -> bool:
        return self.signer_path is not None

    @property
    def last_good_path(self) -> Path:
        return self.data_dir / LAST_GOOD_NAME

    # -- start --------------------------------------------------------------------------

    def load(self, keep: bool = True) -> Keyring:
        """The keyring to start with; KeyringError when none is usable.  keep=False (for
        check-config) writes nothing to the data dir."""
        self._keep = keep
        self._next_poll = time.monotonic() + self.poll_s
        if not self.signed:
            Keyring.check_private(self.path)
            self._seen = self._stat()
            ring = Keyring.load(self.path)
            self.loaded += 1
            return ring
        try:
            self._signer = keyring_file.load_public(self.signer_path, keyring_file.SIGNER_TAG)
            from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

            self._private = keyring_file.load_private(self.private_key_path, X25519PrivateKey)
        except keyring_file.KeyringFileError as exc:
            hint = (" (make it with `dordt gateway keyring-key init`)"
                    if exc.reason == "missing" and "x25519" in str(exc) else "")
            raise KeyringError(f"{exc}{hint}") from None
        last = self._open_last_good()
        self._seen = self._stat()
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            if last is None:
                raise KeyringError(f"{self.path}: cannot read the keyring ({exc.strerror}) "
                                   "and no last good copy is kept") from None
            self._refuse("missing", f"{self.path}: cannot read it ({exc.strerror})", last)
            return self._take(last, None)
        if last is not None and data == self.last_good_path.read_bytes():
            return self._take(last, None)
        try:
            new = self._open(data, last.serial if last else 0)
        except keyring_file.KeyringFileError as exc:
            if last is None:
                raise KeyringError(f"{exc}; and no last good copy is kept in "
                                   f"{self.data_dir}") from None
            self._refuse(exc.reason, str(exc), last)
            return self._take(last, None)
        return self._take(new, data)

    def _open_last_good(self):
        try:
            data = self.last_good_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("keyring: cannot read the last good copy %s (%s); going on without it",
                        self.last_good_path, exc.strerror)
            return None
        try:
            return self._open(data, 0, str(self.last_good_path))
        except keyring_file.KeyringFileError as exc:
            log.warning("keyring: the last good copy is not usable (%s); going on without it",
                        exc)
            return None

    def _open(self, data: bytes, after_serial: int, where: str | None = None):
        if not keyring_file.is_signed_keyring(data):
            raise keyring_file.KeyringFileError(
                "format", f"{where or self.path}: not a signed keyring, and this gateway takes "
                "signed keyrings only ([gateway] keyring_signer is set)")
        return keyring_file.open_signed(data, where or str(self.path), self._signer,
                                        self.gateway_id, self._private, after_serial)

    def _take(self, signed, data: bytes | None) -> Keyring:
        if data is not None and self._keep:
            # keep it before using it: after a crash the floor is never below what was used
            write_file_atomic(self.last_good_path, data, 0o600)
        self.serial, self.issued_at = signed.serial, signed.issued_at
        self.loaded += 1
        return signed.keyring

    def _refuse(self, reason: str, message: str, keeping=None) -> None:
        self.refused[reason] += 1
        self.last_refusal = message
        self.last_refused_s = time.time()
        serial = keeping.serial if keeping is not None else self.serial
        log.warning("keyring refused (%s): %s; keeping the keyring in use%s", reason, message,
                    f" (serial {serial})" if self.signed else "")

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    # -- running ------------------------------------------------------------------------

    def poll(self, now_s: float | None = None) -> Keyring | None:
        """A newer good keyring when the file changed since the last look, else None."""
        now_s = time.monotonic() if now_s is None else now_s
        if now_s < self._next_poll:
            return None
        self._next_poll = now_s + self.poll_s
        seen = self._stat()
        if seen == self._seen or seen is None:
            return None  # unchanged; or gone for a moment (an editor's rename): keep ours
        self._seen = seen
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            self._refuse("missing", f"{self.path}: cannot read it ({exc.strerror})")
            return None
        if not self.signed:
            try:
                Keyring.check_private(self.path)
                ring = Keyring.from_doc(_json(data, self.path), str(self.path))
            except KeyringError as exc:
                self._refuse("content", str(exc))
                return None
            self.loaded += 1
            log.info("keyring: took %s (%d nodes)", self.path, len(ring))
            return ring
        try:
            signed = self._open(data, self.serial)
        except keyring_file.KeyringFileError as exc:
            self._refuse(exc.reason, str(exc))
            return None
        ring = self._take(signed, data)
        log.info("keyring: took serial %d issued %s (%d nodes)", signed.serial,
                 signed.issued_at, len(ring))
        return ring

    def snapshot(self) -> dict:
        return {"signed": self.signed, "serial": self.serial, "issued_at": self.issued_at,
                "loaded": self.loaded, "refused": dict(self.refused),
                "last_refusal": self.last_refusal}


def _json(data: bytes, path: Path):
    import json

    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyringError(f"{path}: not a readable keyring: {exc}") from None
