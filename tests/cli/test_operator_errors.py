"""Operator mistakes and environment faults, as a new user meets them on the command line.

Each case runs the real `dordt` process and checks what a person sees: one or two lines
on stderr (what happened, what to do), a documented exit code (dordt/errors.py), and no
Python traceback.  The TLS case needs a broker with the shipped configuration and lives
in tests/gateway/test_broker_security.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.keyring import Keyring, NodeEntry
from simulators.recording import Message, RecordingWriter
from tests.fixtures.services import free_port

NO_BROKER = "mqtt://127.0.0.1:1"  # nothing listens: the gateway keeps retrying, quietly


def dordt(*args, timeout=60, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dordt.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def assert_told(r: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The command failed with `code`, in at most two lines naming `words`, untraced."""
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out
    assert r.returncode == code, out
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert 1 <= len(lines) <= 2, r.stderr
    assert all(x.startswith("dordt: ") for x in lines), r.stderr
    for word in words:
        assert word in r.stderr, r.stderr
    return r.stderr


@pytest.fixture
def keyring(tmp_path) -> Path:
    ring = Keyring()
    ring.add(NodeEntry(0x0001001A, "air", "spoorzone", "spz-01", keys={0: bytes(32)}))
    path = tmp_path / "keyring.json"
    ring.save(path)
    return path


def run_gateway(keyring: Path, store: str, data_dir: Path, *extra: str):
    return dordt("gateway", "run", "--broker", NO_BROKER, "--keyring", keyring, "--store",
                 store, "--data-dir", data_dir, "--duration", "1", *extra)


def write_config(tmp_path: Path, keyring: Path, **sections: dict) -> Path:
    values = {
        "gateway": {"id": "gw-test", "data_dir": str(tmp_path / "gw"),
                    "keyring": str(keyring)},
        "mqtt": {"url": NO_BROKER},
        "store": {"url": f"sqlite:{tmp_path / 'store.sqlite'}"},
        "health": {"listen": "127.0.0.1:0"},
    }
    for name, more in sections.items():
        values.setdefault(name, {}).update(more)
    text = "".join(f"[{name}]\n" + "".join(f'{k} = "{v}"\n' for k, v in body.items())
                   for name, body in values.items())
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return path


# -- the store ------------------------------------------------------------------------------


def test_a_corrupt_store_is_named_with_what_to_do(tmp_path, keyring):
    store = tmp_path / "store.sqlite"
    store.write_bytes(os.urandom(20_000))
    r = run_gateway(keyring, f"sqlite:{store}", tmp_path / "gw")
    assert_told(r, 1, str(store), "not an SQLite database")
    q = dordt("gateway", "query", "--store", store)
    assert_told(q, 1, "not an SQLite database")
    p = dordt("sim", "plot", "--store", store, "--out", tmp_path / "day.png")
    assert_told(p, 1, "not an SQLite database")


def test_stale_wal_and_shm_beside_a_new_store_are_blamed_not_the_disk(tmp_path, keyring):
    # Found by a new user: the -wal and -shm of an earlier store (here a folder where the
    # WAL must go) beside a new store.sqlite made SQLite report "disk I/O error", printed
    # as a traceback advising to check the storage device.
    store = tmp_path / "store.sqlite"
    store.touch()
    (tmp_path / "store.sqlite-wal").mkdir()
    (tmp_path / "store.sqlite-shm").write_bytes(b"\0" * 32768)
    r = run_gateway(keyring, f"sqlite:{store}", tmp_path / "gw")
    assert_told(r, 1, "store.sqlite-wal and store.sqlite-shm", "move them aside")


def test_an_unreachable_store_is_named_by_verify(tmp_path, keyring):
    pub = tmp_path / "gw" / "gateway.pub"
    # a gateway run makes the key pair (and keeps running with the store away: it buffers)
    r = run_gateway(keyring, f"http://127.0.0.1:{free_port()}", tmp_path / "gw")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    v = dordt("gateway", "verify", "--store", f"http://127.0.0.1:{free_port()}", "--pubkey",
              pub, "--gateway", "gw", "--from", "0", "--to", "10")
    assert_told(v, 1, "cannot read http://127.0.0.1:")


# -- the outbox -----------------------------------------------------------------------------


def test_a_corrupt_outbox_is_named_with_what_to_do(tmp_path, keyring):
    data = tmp_path / "gw"
    data.mkdir()
    (data / "outbox.sqlite").write_bytes(b"SQLite format 3\0" + os.urandom(8000))
    r = run_gateway(keyring, f"sqlite:{tmp_path / 'store.sqlite'}", data)
    assert_told(r, 1, "outbox.sqlite", "move it aside")


def test_an_outbox_from_a_newer_version_is_refused_not_guessed_at(tmp_path, keyring):
    data = tmp_path / "gw"
    data.mkdir()
    db = sqlite3.connect(data / "outbox.sqlite")
    db.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, shape_from_the_future BLOB)")
    db.execute("INSERT INTO outbox VALUES (1, x'00')")
    db.execute("PRAGMA user_version=7")
    db.commit()
    db.close()
    r = run_gateway(keyring, f"sqlite:{tmp_path / 'store.sqlite'}", data)
    assert_told(r, 1, "format 7", "newer dordt")
    db = sqlite3.connect(data / "outbox.sqlite")  # untouched: its readings are still there
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (1,)
    assert db.execute("PRAGMA user_version").fetchone() == (7,)


# -- the keyring ----------------------------------------------------------------------------


def test_an_unreadable_keyring_is_named(tmp_path, keyring):
    store = f"sqlite:{tmp_path / 'store.sqlite'}"
    as_folder = tmp_path / "ring-folder.json"
    as_folder.mkdir()
    assert_told(run_gateway(as_folder, store, tmp_path / "gw"), 2, "not a readable keyring")
    binary = tmp_path / "ring.bin"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    os.chmod(binary, 0o600)
    assert_told(run_gateway(binary, store, tmp_path / "gw"), 2, "not a readable keyring")


def test_a_keyring_others_may_read_is_refused(tmp_path, keyring):
    os.chmod(keyring, 0o644)
    r = run_gateway(keyring, f"sqlite:{tmp_path / 'store.sqlite'}", tmp_path / "gw")
    assert_told(r, 2, "mode 0644", f"chmod 600 {keyring}")
    c = dordt("gateway", "check-config", "--config", write_config(tmp_path, keyring))
    assert_told(c, 2, "chmod 600")
    key = Keyring.load(keyring).get(0x0001001A).keys[0].hex()
    assert key not in r.stderr + c.stderr


# -- ports, filesystems, recordings -----------------------------------------------------------


def test_a_health_port_in_use_is_named(tmp_path, keyring):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = write_config(tmp_path, keyring, health={"listen": f"127.0.0.1:{port}"})
        r = dordt("gateway", "run", "--config", cfg, "--duration", "1")
    assert_told(r, 1, f"health port {port} is in use", "[health] listen")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_data_dir_on_a_read_only_filesystem_is_named(tmp_path, keyring):
    # A real read-only mount (tmpfs, ro) in a private mount namespace: as root, a chmod
    # would not stop writes.  `unshare -rm` needs no privileges beyond user namespaces.
    ro = tmp_path / "ro"
    ro.mkdir()
    for data_dir in (ro, ro / "gw"):  # the folder exists, or must be made
        argv = [sys.executable, "-m", "dordt.cli", "gateway", "run", "--broker", NO_BROKER,
                "--keyring", str(keyring), "--store", f"sqlite:{tmp_path / 'store.sqlite'}",
                "--data-dir", str(data_dir), "--duration", "1"]
        script = f'mount -t tmpfs -o ro tmpfs "{ro}" && exec "$@"'
        r = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *argv],
                           capture_output=True, text=True, timeout=60)
        assert_told(r, 1, "ead-only", "writable disk")


def test_a_recording_cut_short_is_reported(tmp_path):
    path = tmp_path / "rec.dordtrec"
    with RecordingWriter(path, {"source": "test"}, chunk_bytes=256) as writer:
        for i in range(200):
            writer.write(Message(i * 10, "dordt/v1/spoorzone/0001001a/up", os.urandom(40)))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # the tail chunks and the end mark are lost
    r = dordt("sim", "inspect", path)  # says what survived; exit 1: not whole
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    assert "complete: no" in r.stdout and "cut short in chunk" in r.stdout
    path.write_bytes(whole[:12])  # the header itself is cut
    assert_told(dordt("sim", "inspect", path), 2, "cut short")
    assert_told(dordt("sim", "replay", path, "--broker", NO_BROKER), 2, "cut short")


def test_an_unnamed_environment_fault_has_no_traceback_and_debug_shows_it(tmp_path):
    # A keyring to be written in a folder that is a file: an OSError no handler names.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    enrol = ("fleet", "enrol", "--keyring", blocker / "k.json", "--node", "0001001a",
             "--kind", "air", "--zone", "spoorzone", "--site", "spz-01")
    assert_told(dordt(*enrol), 3, "Not a directory", "--debug")
    d = dordt("--debug", *enrol)
    assert d.returncode != 0 and "Traceback" in d.stderr and "NotADirectoryError" in d.stderr
