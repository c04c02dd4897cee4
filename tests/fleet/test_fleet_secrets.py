"""No secret of the registry or of gateway keyrings appears where people or programs read:
every `dordt fleet registry | gateway | keyring` command and a running gateway are run as
real processes (good and failing, also with --debug for tracebacks), and their stdout,
stderr, logs, health pages and every file they wrote are searched for the node keys
(rotated ones too), the master key, the keyring-signing key, the gateway's keyring key and
the enrolment key, raw and in hex and base64.  The only files allowed to hold a secret are
the key files themselves (0600)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from firmware import protocol
from fleet.registry import Registry
from simulators.framegen import FrameSigner
from tests.fixtures.services import free_port, publish_qos1
from tests.fleet.enrolment import make_bundle
from tests.helpers import wait_until

pytestmark = pytest.mark.services

NODES = [("00010011", "air", "spoorzone", "spz-01"), ("00010012", "noise", "spoorzone", "spz-01"),
         ("00010021", "air", "spoorzone", "spz-02"), ("00020011", "air", "maasterras", "mst-01")]


def forms(secret: bytes) -> list[bytes]:
    out = [secret, secret.hex().encode(), secret.hex().upper().encode()]
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        out += [enc(secret), enc(secret).rstrip(b"=")]
    return out


def raw_private(path: Path) -> bytes:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def pem_body(path: Path) -> bytes:
    return b"".join(line for line in path.read_bytes().splitlines() if b"-----" not in line)


class Run:
    def __init__(self, root: Path, env: dict):
        self.root, self.env = root, env
        self.seen: list[tuple[str, str]] = []  # (what, text) of every output

    def __call__(self, *argv: str, code: int = 0, env: dict | None = None) -> str:
        p = subprocess.run([sys.executable, "-m", "dordt.cli", *argv], capture_output=True,
                           text=True, cwd=self.root, env={**self.env, **(env or {})},
                           timeout=60)
        self.seen.append((" ".join(argv), p.stdout + p.stderr))
        assert p.returncode == code, (argv, p.stdout, p.stderr)
        return p.stdout + p.stderr


def test_no_key_material_in_any_output_log_export_or_exception(tmp_path, mosquitto):
    root = tmp_path
    env = {k: v for k, v in os.environ.items() if not k.startswith("DORDT_FLEET")}
    env["DORDT_FLEET_REGISTRY"] = str(root / "fleet.sqlite")
    run = Run(root, env)

    # the technician's bundle (provisioning writes it; here its library does)
    _, _, node_keys = make_bundle(root, NODES)
    run("fleet", "registry", "init", "--master-key", "master.key")
    env["DORDT_FLEET_MASTER_KEY_FILE"] = str(root / "master.key")
    run("fleet", "registry", "init")  # again: an upgrade is a no-op
    run("fleet", "registry", "import", "bundle.json", "--enrol-key", "enrol/enrol-x25519.pem")
    run("fleet", "registry", "import", "bundle.json", "--enrol-key", "enrol/enrol-x25519.pem")
    run("fleet", "keyring", "signer", "init", "--dir", "signer")
    pub = run("gateway", "keyring-key", "init", "--data-dir", "gw-data").strip()
    run("fleet", "gateway", "add", "gw-leak", "--zone", "spoorzone", "--keyring-pub", pub)
    run("fleet", "gateway", "assign", "00020011", "gw-leak")
    run("fleet", "keyring", "issue", "--gateway", "gw-leak", "--out", "keyring.dgk",
        "--signer-key", "signer/keyring-signer.pem")
    out = run("fleet", "registry", "rotate-key", "00010021", "--rekey-out", "rekey.json")
    assert "rekey.json" in out
    with Registry.open(root / "fleet.sqlite", bytes.fromhex(
            (root / "master.key").read_text().strip())) as reg:
        node_keys["00010021/1"] = reg.node_key("00010021", 1)
    run("fleet", "keyring", "issue", "--gateway", "gw-leak", "--out", "keyring.dgk",
        "--signer-key", "signer/keyring-signer.pem")
    run("fleet", "registry", "rotate-key", "00010021", "--finish")
    run("fleet", "registry", "retire", "00010012")
    run("fleet", "registry", "revoke", "00010011")
    for listing in (("registry", "ls"), ("registry", "ls", "--json"),
                    ("registry", "show", "00010021"), ("registry", "show", "00010021", "--json"),
                    ("gateway", "ls"), ("gateway", "ls", "--json")):
        run("fleet", *listing)
    run("fleet", "registry", "backup", "backup.sqlite")
    run("fleet", "registry", "master-key", "master2.key")
    env["DORDT_FLEET_MASTER_KEY_FILE"] = str(root / "master2.key")
    run("fleet", "keyring", "issue", "--gateway", "gw-leak", "--out", "keyring.dgk",
        "--signer-key", "signer/keyring-signer.pem")

    # failing commands, plain and with --debug (tracebacks)
    wrong = {"DORDT_FLEET_MASTER_KEY_FILE": "", "DORDT_FLEET_MASTER_KEY": os.urandom(32).hex()}
    for debug in ((), ("--debug",)):
        run(*debug, "fleet", "keyring", "issue", "--gateway", "gw-leak", "--out", "x.dgk",
            "--signer-key", "signer/keyring-signer.pem", code=1 if debug else 2, env=wrong)
        run(*debug, "fleet", "registry", "rotate-key", "00010011", code=1 if debug else 2)
        run(*debug, "fleet", "keyring", "issue", "--gateway", "gw-leak", "--out", "x.dgk",
            "--signer-key", "gw-data/keyring-x25519.pem", code=1 if debug else 2)
    run("fleet", "registry", "ls", code=2,
        env={"DORDT_FLEET_MASTER_KEY_FILE": "enrol/enrol-x25519.pem"})

    # the gateway: check its config, run it, send it frames (a good one, a revoked one)
    health_port = free_port()
    (root / "gw.toml").write_text(f"""
[gateway]
id = "gw-leak"
data_dir = "gw-data"
keyring = "keyring.dgk"
keyring_signer = "signer/keyring-signer.pub"
keyring_poll_s = 1.0
[mqtt]
url = "{mosquitto.url}"
client_id = "leak-gateway"
[store]
url = "sqlite:store.sqlite"
[health]
listen = "127.0.0.1:{health_port}"
[log]
format = "json"
level = "debug"
""")
    run("gateway", "check-config", "--config", "gw.toml")
    gw = subprocess.Popen([sys.executable, "-m", "dordt.cli", "gateway", "run", "--config",
                           "gw.toml"], cwd=root, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        assert gw.stdout.readline().startswith("gateway:")
        base = f"http://127.0.0.1:{health_port}"

        def health():
            return json.loads(urllib.request.urlopen(base + "/healthz", timeout=5).read())

        wait_until(lambda: health()["broker_connected"], 15, "the gateway to connect")
        t = int(time.time())
        frames = [(protocol.topic_up("spoorzone", 0x00010021), FrameSigner(
            node_keys["00010021/1"], 1).encode(1, 0x00010021, 1, t, 10, [(1, 100)])),
                  (protocol.topic_up("spoorzone", 0x00010011), FrameSigner(
                      node_keys["00010011"], 0).encode(1, 0x00010011, 1, t, 10, [(1, 100)]))]
        publish_qos1(mosquitto.host, mosquitto.port, frames, client_id="leak-nodes")
        wait_until(lambda: health()["counters"].get("received", 0) >= 2, 15, "two frames")
        # a keyring that does not open here: refused, logged
        (root / "keyring.dgk").write_bytes((root / "backup.sqlite").read_bytes()[:64])
        wait_until(lambda: health()["keyring"]["refused"], 15, "the bad keyring refused")
        pages = [urllib.request.urlopen(base + p, timeout=5).read().decode()
                 for p in ("/healthz", "/metrics")]
    finally:
        gw.terminate()
        gw_out, gw_err = gw.communicate(timeout=30)
    run.seen += [("gateway run", gw_out + gw_err)] + [("health", p) for p in pages]
    assert "keyring refused" in gw_err
    counters = json.loads(pages[0])["counters"]
    assert counters.get("rejected.revoked") == 1, counters

    # a gateway whose keyring opens nowhere and has no last good copy: a clean error
    (root / "gw2").mkdir()
    run("gateway", "run", "--broker", mosquitto.url, "--keyring", "keyring.dgk",
        "--keyring-signer", "signer/keyring-signer.pub", "--store", "sqlite:gw2/s.sqlite",
        "--data-dir", "gw2", "--client-id", "gw-leak", "--keyring-key",
        "enrol/enrol-x25519.pem", code=2)

    secrets_by_name = {f"node key {n}": k for n, k in node_keys.items()}
    for name in ("master.key", "master2.key"):
        secrets_by_name[name] = bytes.fromhex((root / name).read_text().strip())
    for name, path in (("signer key", root / "signer" / "keyring-signer.pem"),
                       ("gateway keyring key", root / "gw-data" / "keyring-x25519.pem"),
                       ("enrolment key", root / "enrol" / "enrol-x25519.pem")):
        secrets_by_name[name] = raw_private(path)
        secrets_by_name[name + " (PEM)"] = pem_body(path)
    key_files = {root / "master.key", root / "master2.key",
                 root / "signer" / "keyring-signer.pem",
                 root / "gw-data" / "keyring-x25519.pem", root / "enrol" / "enrol-x25519.pem"}
    written = [p for p in root.rglob("*") if p.is_file() and p not in key_files]
    assert {p.name for p in written} >= {
        "fleet.sqlite", "backup.sqlite", "keyring.dgk", "rekey.json", "bundle.json",
        "keyring.last-good", "audit.log", "outbox.sqlite", "store.sqlite"}
    places = [(what, text.encode()) for what, text in run.seen] + [
        (str(p.relative_to(root)), p.read_bytes()) for p in written]
    for what, data in places:
        for name, secret in secrets_by_name.items():
            for form in forms(secret) if "(PEM)" not in name else [secret]:
                assert form not in data, f"{name} found in {what}"
    for path in key_files:
        assert oct(path.stat().st_mode & 0o777) == "0o600", path
