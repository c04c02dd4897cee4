"""Small helpers tests share."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str,
               poll_s: float = 0.05) -> None:
    """Return once `predicate()` is true; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def firmware_with_version(dest, version: tuple[int, int, int]):
    """A copy of this checkout's firmware/ under `dest` (a directory) whose FIRMWARE_VERSION
    line says `version`: the source of a newer (or older) release for OTA tests
    (`fleet.release.build_release(..., source=...)`).  Returns the copy's firmware/ path."""
    import shutil
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "firmware"
    target = Path(dest) / "firmware"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    node = target / "node.py"
    lines = node.read_text(encoding="utf-8").splitlines(keepends=True)
    found = [i for i, line in enumerate(lines) if line.startswith("FIRMWARE_VERSION = (")]
    assert len(found) == 1, "firmware/node.py has no single FIRMWARE_VERSION = (...) line"
    major, minor, patch = version
    lines[found[0]] = f"FIRMWARE_VERSION = ({major}, {minor}, {patch})\n"
    node.write_text("".join(lines), encoding="utf-8")
    return target
