"""The gateway's TOML config: the sample is valid, mistakes are named with their fix, and
`dordt gateway run --config` runs what the file says."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from simulators.fleet import SimFleet
from tests.fixtures.services import free_port, publish_qos1

SAMPLE = Path(__file__).resolve().parents[2] / "gateway" / "gateway.sample.toml"


def test_the_sample_config_is_valid_and_documents_every_key():
    cfg = load_config(SAMPLE)
    text = SAMPLE.read_text()
    from gateway.config import SCHEMA
    for section, keys in SCHEMA.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"\n{key} = " in text, f"{section}.{key} is not documented in the sample"
    assert cfg.health_listen == ("127.0.0.1", 9108)


@pytest.mark.parametrize("change, message", [
    (("[buffer]", "[bufer]"), "[bufer] is not a valid section. Did you mean 'buffer'?"),
    (("max_mb = 512", "max_mbs = 512"), "'max_mbs' is not a valid option. Did you mean 'max_mb'?"),
    (("max_mb = 512", 'max_mb = "big"'), "[buffer] max_mb must be a int or float"),
    (('format = "json"', 'format = "jsn"'), "use one of json, text. Did you mean 'json'?"),
    (('id = "gw-spoorzone-01"', ""), "[gateway] id is required"),
    (('url = "mqtts://127.0.0.1:8883"', 'url = "tcp://x"'), "use mqtt://HOST:PORT"),
    (('listen = "127.0.0.1:9108"', 'listen = "0.0.0.0:9108"'), "stay on loopback"),
    (('cert_file = "/etc/dordt/ca/gateways/gw-spoorzone-01/client.crt"', ""),
     "set ca_file, cert_file and key_file"),
    (("keyring_poll_s = 10.0", "keyring_poll_s = 0"), "[gateway] keyring_poll_s = 0"),
    (('keyring_key = ""', 'keyring_key = "k.pem"'), "keyring_signer is not"),
])
def test_mistakes_name_the_key_and_the_fix(tmp_path, change, message):
    path = tmp_path / "gw.toml"
    path.write_text(SAMPLE.read_text().replace(*change, 1))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and message in str(err.value)


def dordt(*args, **kw):
    return subprocess.run([sys.executable, "-m", "dordt.cli", *args], capture_output=True,
                          text=True, timeout=60, **kw)


def test_check_config_exit_codes(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway]\nid = 3\n")
    r = dordt("gateway", "check-config", "--config", str(bad))
    assert r.returncode == 2 and "id must be a str" in r.stderr and "Traceback" not in r.stderr


def test_run_from_a_config_file(tmp_path, mosquitto):
    fleet = SimFleet(seed=21, status_every=0)
    fleet.keyring().save(tmp_path / "keyring.json")
    port = free_port()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f"""
[gateway]
id = "gw-test"
data_dir = "data"
keyring = "keyring.json"
[mqtt]
url = "{mosquitto.url}"
client_id = "cfg-gateway"
[store]
url = "sqlite:{tmp_path / 'store.sqlite'}"
[health]
listen = "127.0.0.1:{port}"
[log]
format = "json"
""")
    ok = dordt("gateway", "check-config", "--config", str(cfg))
    assert ok.returncode == 0 and "27 nodes" in ok.stdout, ok.stderr
    gw = subprocess.Popen([sys.executable, "-m", "dordt.cli", "gateway", "run", "--config",
                           str(cfg), "--duration", "6"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        assert gw.stdout.readline().startswith("gateway: 27 nodes")
        time.sleep(1)  # subscribed
        t0 = int(time.time()) - 60
        publish_qos1(mosquitto.host, mosquitto.port, list(fleet.tick(t0)))
        deadline = time.monotonic() + 5
        snap = {}
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                snap = json.loads(r.read())
            if snap["counters"].get("forwarded") == 27:
                break
            time.sleep(0.2)
        assert snap["counters"].get("forwarded") == 27, snap
        out, err = gw.communicate(timeout=60)
    finally:
        gw.kill()
    assert json.loads(out.strip().splitlines()[-1])["accepted"] == 27
    for line in err.strip().splitlines():  # structured logs: every line is a JSON object
        assert {"time", "level", "logger", "message"} <= json.loads(line).keys()
    assert (tmp_path / "data" / "outbox.sqlite").exists()
