"""pyright type-checks firmware/ against MicroPython 1.27 for the ESP32 (the
micropython-esp32-stubs of the test extras, wired up in pyrightconfig.json), and finds no
errors.  A failure lists every error as file:line: message."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "pyrightconfig.json"
SETUP_HINT = "run `make test` (or `make setup-test`), which installs the test extras"


def pyright(*args):
    binary = Path(sys.executable).parent / "pyright"
    if not binary.is_file():
        pytest.fail(f"pyright is not installed next to {sys.executable}: {SETUP_HINT}",
                    pytrace=False)
    proc = subprocess.run([str(binary), "--outputjson", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, check=False)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"pyright did not report (exit {proc.returncode}):\n{proc.stdout}\n"
                    f"{proc.stderr}", pytrace=False)


def errors(report):
    out = []
    for d in report["generalDiagnostics"]:
        if d["severity"] == "error":
            path = Path(d["file"]).resolve()
            where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
            out.append(f"{where}:{d['range']['start']['line'] + 1}: {d['message']}"
                       f" ({d.get('rule', '')})")
    return out


def test_the_config_checks_against_micropython_not_cpython(tmp_path):
    typeshed = REPO / json.loads(
        "\n".join(line for line in CONFIG.read_text().splitlines()
                  if not line.lstrip().startswith("//")))["typeshedPath"]
    assert (typeshed / "stdlib" / "VERSIONS").is_file(), (
        f"{CONFIG.name}: typeshedPath {typeshed} holds no micropython-stdlib-stubs (a venv on "
        f"another Python version?): {SETUP_HINT}, or correct the path")
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import time\n\nimport bluetooth\nimport machine\n\n"
        "time.ticks_ms()  # MicroPython's time only\n"
        "machine.Pin(2)\n"
        "bluetooth.BLE()\n"
        "import sqlite3  # noqa: E402  CPython's stdlib only\n"
    )
    found = errors(pyright("-p", str(CONFIG), str(probe)))
    assert len(found) == 1 and 'Import "sqlite3" could not be resolved' in found[0], found


def test_firmware_has_no_type_errors():
    report = pyright("firmware")
    assert report["summary"]["filesAnalyzed"] >= len(list((REPO / "firmware").rglob("*.py")))
    found = errors(report)
    assert not found, f"{len(found)} pyright errors in firmware/:\n" + "\n".join(found)
