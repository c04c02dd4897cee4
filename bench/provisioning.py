"""Provisioning on the virtual board (real MicroPython 1.27 behind a pty, provisioning/
virtual_board.py), measured against plain mpremote in the same run.

- provision_s: one full `dordt provision run` (install, enrol, self-test, label) on a fresh
  virtual board, wall time.  Goal <= 60 s.
- install_bytes_per_s: bytes of firmware sent over the link per second of sending (each
  file written and then hashed on the board), in a fresh install on a second fresh board;
  install_whole_bytes_per_s: the same bytes over the whole install (board probe, sending,
  hashing, the switch and the boot check).
- mpremote_cp_bytes_per_s: the same .mpy files copied with plain `mpremote cp` (the
  package's own command line, unmodified) to another fresh virtual board of the same kind,
  bytes per second of the whole copy (including mpremote's start, about 0.3 s).  Goal:
  install at least as fast while also verifying.
- reinstall_unchanged_s: `dordt provision install` again on the provisioned board.  Goal
  <= 5 s.

Prints a table, then one JSON object on its last line.  Bounded: about a minute.

    .venv/bin/python bench/provisioning.py
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dordt.cli import main as dordt  # noqa: E402
from fleet.bundle import init_enrol_key  # noqa: E402
from provisioning.build import build_firmware  # noqa: E402
from provisioning.identify import identify  # noqa: E402
from provisioning.install import install  # noqa: E402
from provisioning.link import BoardLink  # noqa: E402
from provisioning.virtual_board import VirtualBoard  # noqa: E402

PROFILE = "esp32-s3-devkitc-1"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def full_run(tmp: Path) -> tuple[float, dict, float]:
    work = tmp / "work"
    init_enrol_key(work)
    (work / "enrol-x25519.pem").unlink()  # the laptop has only the public half
    with VirtualBoard(tmp / "flash-run", profile=PROFILE) as board:
        argv = ["provision", "run", "--port", board.port, "--zone", "spoorzone", "--site",
                "spz-01", "--kind", "air", "--work-dir", str(work), "--json"]
        with contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()) as err:
            provision_s, code = timed(lambda: dordt(argv))
            if code != 0:
                raise SystemExit(f"provision run failed ({code}): {err.getvalue()[-500:]}")
            reinstall_s, code = timed(lambda: dordt(["provision", "install", "--port",
                                                     board.port, "--work-dir", str(work)]))
            if code != 0:
                raise SystemExit(f"re-install failed ({code}): {err.getvalue()[-500:]}")
    # the install's own figures, from a fresh install on a second fresh board
    with VirtualBoard(tmp / "flash-install", profile=PROFILE) as board:
        with BoardLink(board.port) as link:
            report = install(link, build_firmware(identify(link).arch))
    return provision_s, {"install": report.as_dict(),
                         "install_send_s": report.send_seconds}, reinstall_s


def mpremote_cp(tmp: Path) -> tuple[float, int]:
    build = build_firmware(None)
    src = tmp / "cp-src"
    for f in build.files:
        (src / f.path).parent.mkdir(parents=True, exist_ok=True)
        (src / f.path).write_bytes(f.data)
    with VirtualBoard(tmp / "flash-cp", profile=PROFILE) as board:
        argv = [sys.executable, "-m", "mpremote", "connect", board.port, "cp", "-r",
                str(src / "firmware"), ":"]
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"mpremote cp failed: {done.stderr[-500:]}")
    return seconds, build.size


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dordt-bench-prov-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("XDG_CACHE_HOME", str(tmp / "cache"))
        provision_s, run_info, reinstall_s = full_run(tmp)
        cp_s, cp_bytes = mpremote_cp(tmp)
    inst = run_info["install"]
    install_bps = inst["sent_bytes"] / run_info["install_send_s"]
    whole_bps = inst["sent_bytes"] / inst["seconds"]
    cp_bps = cp_bytes / cp_s
    result = {
        "provision_s": round(provision_s, 2),
        "install_bytes": inst["sent_bytes"],
        "install_s": inst["seconds"],
        "install_bytes_per_s": round(install_bps),
        "install_whole_bytes_per_s": round(whole_bps),
        "mpremote_cp_bytes": cp_bytes,
        "mpremote_cp_s": round(cp_s, 2),
        "mpremote_cp_bytes_per_s": round(cp_bps),
        "install_vs_mpremote_cp": round(install_bps / cp_bps, 2),
        "reinstall_unchanged_s": round(reinstall_s, 2),
        "goals": {"provision_s": 60, "reinstall_unchanged_s": 5,
                  "install_vs_mpremote_cp": 1.0},
    }
    print(f"{'full run (install, enrol, self-test, label)':<46} {provision_s:8.1f} s "
          f"(goal <= 60 s)")
    print(f"{'install: firmware sent, verified and switched':<46} {install_bps:8.0f} B/s "
          f"({inst['sent_bytes']} bytes; whole install {inst['seconds']:.1f} s)")
    print(f"{'  over the whole install (send, hash, switch, boot)':<46} {whole_bps:8.0f} B/s")
    print(f"{'plain mpremote cp of the same files':<46} {cp_bps:8.0f} B/s "
          f"({cp_bytes} bytes in {cp_s:.1f} s)")
    print(f"{'install / mpremote cp':<46} {install_bps / cp_bps:8.2f} x (goal >= 1)")
    print(f"{'re-install, unchanged':<46} {reinstall_s:8.2f} s (goal <= 5 s)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
