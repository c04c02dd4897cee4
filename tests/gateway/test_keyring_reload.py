"""A running gateway (`dordt gateway run`, a real process) takes new signed keyrings from the
fleet registry without a restart, through a real Mosquitto: a revoked node's frames are
refused within a minute (here: a 1 s poll), a rotated key works and the old one stops, and
a wrongly signed, older, other-gateway or plain keyring is refused with the last good one
kept, also across a restart (issue 12, "Keyrings for gateways")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware import protocol
from fleet import keyring_file, rekey
from fleet.files import write_file_atomic
from fleet.registry import Registry
from hardware.sites import load_placements
from simulators.fleet import SimFleet
from simulators.framegen import FrameSigner
from tests.fixtures.services import free_port, publish_qos1
from tests.helpers import wait_until

pytestmark = pytest.mark.services

GATEWAY = "gw-reload"


class Setup:
    """A registry with two Spoorzone nodes, a signer, and one gateway's files."""

    def __init__(self, tmp_path: Path, mosquitto):
        self.root = tmp_path
        self.mosquitto = mosquitto
        self.master_key = os.urandom(32)
        self.reg = Registry.open(tmp_path / "fleet.sqlite", self.master_key, create=True)
        self.reg.sync_zones()
        signer_private, self.signer_pub = keyring_file.init_signer(tmp_path / "signer")
        self.signer = keyring_file.load_private(signer_private, Ed25519PrivateKey)
        self.data_dir = tmp_path / "gw-data"
        # the gateway makes its own keyring key; the fleet gets only the .pub
        out = subprocess.run([sys.executable, "-m", "dordt.cli", "gateway", "keyring-key",
                              "init", "--data-dir", str(self.data_dir)],
                             capture_output=True, text=True, check=True)
        pub_path = Path(out.stdout.strip())
        assert pub_path == self.data_dir / "keyring-x25519.pub"
        self.reg.add_gateway(GATEWAY, "spoorzone", pub_path.read_text())
        placements = [p for p in load_placements() if p.zone == "spoorzone"
                      and p.kind == "air"][:2]
        self.fleet = SimFleet(placements, seed=71, status_every=0)
        self.a, self.b = self.fleet.nodes
        for n in self.fleet.nodes:
            self.reg.add_node(protocol.node_name(n.node_id), n.placement.kind,
                              n.placement.zone, n.placement.site, n.key)
        self.keyring = tmp_path / "keyring.dgk"
        self.health_port = free_port()
        self.log = tmp_path / "gateway.log"
        self.config = tmp_path / "gw.toml"
        self.config.write_text(f"""
[gateway]
id = "{GATEWAY}"
data_dir = "gw-data"
keyring = "keyring.dgk"
keyring_signer = "signer/keyring-signer.pub"
keyring_poll_s = 1.0
[mqtt]
url = "{mosquitto.url}"
client_id = "reload-gateway"
[store]
url = "sqlite:store.sqlite"
[health]
listen = "127.0.0.1:{self.health_port}"
[log]
format = "json"
level = "info"
""")
        self.proc = None

    def issue(self, signer=None, gateway=GATEWAY) -> tuple[bytes, int]:
        return self.reg.issue_keyring(gateway, signer or self.signer)

    def install(self, data: bytes) -> None:
        write_file_atomic(self.keyring, data, 0o600)

    def start(self) -> None:
        self.log_file = open(self.log, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dordt.cli", "gateway", "run", "--config", str(self.config)],
            stdout=subprocess.PIPE, stderr=self.log_file, text=True, cwd=self.root)
        line = self.proc.stdout.readline()
        assert line.startswith("gateway:"), (line, self.log.read_text())
        wait_until(lambda: self.health()["broker_connected"], 15, "the gateway to connect")

    def stop(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=30)
            self.log_file.close()
            return out
        return ""

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz",
                                    timeout=5) as r:
            return json.loads(r.read())

    def counters(self) -> dict:
        return self.health()["counters"]

    def send(self, node, signer: FrameSigner | None = None, frame: bytes | None = None
             ) -> bytes:
        """One frame of `node` (a new one, signed with its current signer or `signer`, or
        `frame` again); the frame."""
        if signer is not None:
            node._signer = signer
        frame = frame or node.frame(time.time())
        publish_qos1(self.mosquitto.host, self.mosquitto.port, [(node.topic, frame)],
                     client_id="reload-nodes")
        return frame

    def wait_counter(self, name: str, at_least: int, timeout_s: float = 15) -> None:
        wait_until(lambda: self.counters().get(name, 0) >= at_least, timeout_s,
                   f"{name} >= {at_least} (have {self.counters()})")


@pytest.fixture
def setup(tmp_path, mosquitto):
    s = Setup(tmp_path, mosquitto)
    yield s
    s.stop()
    s.reg.close()


def test_revocation_rotation_and_bad_keyrings_apply_to_a_running_gateway(setup):
    s = setup
    s.install(s.issue()[0])
    s.start()
    assert s.health()["keyring"]["serial"] == 1
    s.send(s.a)
    first_b = s.send(s.b)
    s.wait_counter("accepted", 2)

    # -- revocation: refused within a minute of the new keyring, no restart ---------------
    pid = s.proc.pid
    s.reg.set_state(protocol.node_name(s.a.node_id), "revoked")
    s.install(s.issue()[0])
    written = time.monotonic()
    while s.counters().get("rejected.revoked", 0) == 0:
        assert time.monotonic() - written < 60, "revocation not applied within a minute"
        s.send(s.a)
        time.sleep(0.2)
    applied_s = time.monotonic() - written
    print(f"revocation applied {applied_s:.1f} s after the keyring was written (poll 1 s)")
    assert s.proc.pid == pid and s.proc.poll() is None
    assert s.health()["keyring"]["serial"] == 2
    accepted = s.counters()["accepted"]
    s.send(s.b)
    s.wait_counter("accepted", accepted + 1)
    s.send(s.b, frame=first_b)  # the replay windows came through the keyring change
    s.wait_counter("rejected.replay", 1)

    # -- rotation: the rekey file carries key 1; both work, then only key 1 ---------------
    b_name = protocol.node_name(s.b.node_id)
    new_id, _ = s.reg.rotate_key(b_name)
    doc = rekey.wrap(b_name, 0, s.reg.node_key(b_name, 0), new_id, s.reg.node_key(b_name, 1))
    got_id, new_key = rekey.unwrap(doc, s.b.key)  # what the node does with its current key
    old_signer, new_signer = FrameSigner(s.b.key, 0), FrameSigner(new_key, got_id)
    s.install(s.issue()[0])
    wait_until(lambda: s.health()["keyring"]["serial"] == 3, 15, "keyring serial 3")
    accepted = s.counters()["accepted"]
    s.send(s.b, new_signer)  # the counter goes on under the new key id (protocol.md §4)
    s.send(s.b, old_signer)  # overlap: a frame queued under the old key still counts
    s.wait_counter("accepted", accepted + 2)
    s.reg.finish_rotation(b_name)
    s.install(s.issue()[0])
    wait_until(lambda: s.health()["keyring"]["serial"] == 4, 15, "keyring serial 4")
    s.send(s.b, old_signer)
    s.wait_counter("rejected.unknown_key", 1)
    accepted = s.counters()["accepted"]
    s.send(s.b, new_signer)
    s.wait_counter("accepted", accepted + 1)

    # -- bad keyrings: refused, counted, the last good one kept ---------------------------
    older = s.keyring.read_bytes()  # serial 4 itself: not newer
    bad = {
        "signer": s.issue(signer=Ed25519PrivateKey.generate())[0],
        "older": older,
    }
    s.reg.add_gateway("gw-elsewhere", "spoorzone", s.reg.gateway(GATEWAY)["keyring_pub"])
    bad["gateway"] = s.issue(gateway="gw-elsewhere")[0]
    bad["format"] = json.dumps(s.reg.keyring(GATEWAY).to_doc()).encode()  # plain, unsigned
    for reason, data in bad.items():
        s.install(data)
        wait_until(lambda r=reason: s.health()["keyring"]["refused"].get(r, 0) == 1, 15,
                   f"the {reason} keyring to be refused")
    snap = s.health()
    assert snap["keyring"]["serial"] == 4
    assert "alert: keyring_refused" in snap["problems"]
    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{s.health_port}/metrics", timeout=5).read().decode()
    assert 'dordt_gateway_keyring_refused_total{reason="signer"} 1' in metrics
    assert "dordt_gateway_keyring_serial 4" in metrics
    accepted = s.counters()["accepted"]
    s.send(s.b, new_signer)  # still verified with the last good keyring
    s.wait_counter("accepted", accepted + 1)
    refusals = [json.loads(line) for line in s.log.read_text().splitlines()
                if "keyring refused" in line]
    assert [r["message"].split(")")[0] for r in refusals] == [
        "keyring refused (signer", "keyring refused (older", "keyring refused (gateway",
        "keyring refused (format"]

    # -- a restart with a bad file in place starts on the last good copy ------------------
    s.install(bad["signer"])
    s.stop()
    s.start()
    snap = s.health()
    assert snap["keyring"]["serial"] == 4 and snap["keyring"]["refused"] == {"signer": 1}
    accepted = s.counters()["accepted"]
    s.send(s.b, new_signer)
    s.wait_counter("accepted", accepted + 1)
    # and an older keyring is still refused after the restart: the floor was kept
    s.install(older)
    wait_until(lambda: s.health()["keyring"]["refused"].get("older", 0) == 1, 15,
               "the older keyring to be refused after the restart")
    good, serial = s.issue()
    s.install(good)
    wait_until(lambda: s.health()["keyring"]["serial"] == serial, 15, "a good keyring again")


def test_during_a_rotation_time_downlinks_use_the_key_id_the_node_sent_with(mosquitto,
                                                                            tmp_path):
    import paho.mqtt.client as mqtt

    from firmware.uplink.mqtt import decode_time, topic_down
    from fleet.keyring import Keyring, NodeEntry
    from gateway.forward.local import LocalStore
    from gateway.pipeline import Gateway

    node = SimFleet(seed=17, status_every=0).nodes[0]
    new_key = bytes(range(32))
    ring = Keyring([NodeEntry(node.node_id, node.placement.kind, node.placement.zone,
                              node.placement.site, {0: node.key, 1: new_key})])
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rotating-node")
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe(topic_down(node.placement.zone, node.node_id), qos=1)
    sub.loop_start()
    gateway = Gateway(ring, LocalStore(tmp_path / "s.sqlite"), tmp_path / "gw", mosquitto.url,
                      client_id="rotation-time-gateway")
    gateway.start()
    try:
        assert gateway.ingest.wait_connected(10)
        for key_id, key in ((0, node.key), (1, new_key)):
            node._signer = FrameSigner(key, key_id)
            gateway._time_sent.clear()  # at most one a minute: let the second one go
            frame = node.encode(node.values(0), 42, 10, flags=protocol.FLAG_TIME_UNSYNCED)
            publish_qos1(mosquitto.host, mosquitto.port, [(node.topic, frame)])
            wait_until(lambda n=key_id: len(got) > n, 10, f"a time downlink for key {key_id}")
            assert decode_time(got[key_id], key, node.node_id, key_id) is not None
            assert decode_time(got[key_id], new_key if key_id == 0 else node.key,
                               node.node_id, 1 - key_id) is None
    finally:
        gateway.stop()
        sub.disconnect()
        sub.loop_stop()
