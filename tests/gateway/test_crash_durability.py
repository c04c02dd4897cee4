"""The gateway is killed with SIGKILL at random moments while nodes publish; every reading
the broker accepted must appear in the store exactly once (SQLite's testing culture: a
claim of durability is a test that kills the process mid-write)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from firmware import protocol
from simulators.fleet import SimFleet

pytestmark = pytest.mark.services

KILLS = 20


def write_config(tmp_path, mosquitto, vm_url):
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f"""
[gateway]
id = "gw-crash"
data_dir = "data"
keyring = "keyring.json"
[mqtt]
url = "{mosquitto.url}"
client_id = "crash-gateway"
[store]
url = "{vm_url}"
batch_max = 500
[health]
listen = "127.0.0.1:0"
[log]
format = "text"
level = "warning"
""")
    return cfg


class Publisher(threading.Thread):
    """Publishes a fleet's frames at QoS 1 until stopped; remembers what the broker acked."""

    def __init__(self, fleet, host, port, t0):
        super().__init__(daemon=True)
        self.fleet, self.t0 = fleet, t0
        self.acked: list[bytes] = []
        self.stop_flag = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="crash-fleet")
        self.client.connect(host, port)
        self.client.loop_start()

    def run(self):
        t = self.t0
        while not self.stop_flag.is_set():
            infos = [(f, self.client.publish(topic, f, qos=1)) for topic, f in self.fleet.tick(t)]
            for f, info in infos:
                info.wait_for_publish(10)
                if info.is_published():
                    self.acked.append(f)
            t += 10
            time.sleep(0.05)

    def close(self):
        self.stop_flag.set()
        self.join(30)
        self.client.disconnect()
        self.client.loop_stop()


def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(
        tmp_path, mosquitto, victoriametrics_factory):
    vm = victoriametrics_factory()
    fleet = SimFleet(seed=31, status_every=7)
    fleet.keyring().save(tmp_path / "keyring.json")
    cfg = write_config(tmp_path, mosquitto, vm.url)
    cmd = [sys.executable, "-m", "dordt.cli", "gateway", "run", "--config", str(cfg)]
    rng = random.Random(31)
    t0 = int(time.time()) - 6 * 3600
    # one clean start so the broker knows the gateway's persistent session
    gw = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    assert gw.stdout.readline().startswith("gateway:")
    time.sleep(0.5)
    publisher = Publisher(fleet, mosquitto.host, mosquitto.port, t0)
    publisher.start()
    kills = 0
    try:
        while kills < KILLS:
            time.sleep(rng.uniform(0.2, 1.2))
            gw.send_signal(signal.SIGKILL)
            gw.wait(10)
            kills += 1
            gw = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
            assert gw.stdout.readline().startswith("gateway:")
    finally:
        publisher.close()
    # let the last gateway take everything the broker holds and drain it, then stop it
    time.sleep(3)
    gw.send_signal(signal.SIGTERM)
    out, _ = gw.communicate(timeout=60)
    # whatever is still buffered is forwarded by one more clean run
    gw = subprocess.run([*cmd, "--duration", "5"], capture_output=True, text=True,
                        cwd=tmp_path, timeout=60)
    assert gw.returncode == 0, gw.stderr
    vm.flush()

    expected = {}
    for frame_bytes in publisher.acked:
        f = protocol.decode(frame_bytes)
        measurement = "node_status" if f.is_status else {1: "air", 2: "noise", 3: "crowd"}[f.kind]
        expected[(measurement, protocol.node_name(f.node_id), f.timestamp)] = f.counter
    assert kills == KILLS and len(expected) > 20 * 27
    found = {}
    for series in vm.export('{__name__=~"(air|noise|crowd|node_status)_batch"}'):
        m = series["metric"]
        measurement = m["__name__"].removesuffix("_batch")
        times = [ts // 1000 for ts in series["timestamps"]]
        assert len(times) == len(set(times)), "a reading is in the store twice"
        for ts in times:
            found[(measurement, m["node"], ts)] = True
    missing = set(expected) - set(found)
    assert not missing, f"{len(missing)} acknowledged readings lost, e.g. {sorted(missing)[:3]}"
    print(json.dumps({"kills": kills, "acknowledged": len(expected), "stored": len(found)}))
