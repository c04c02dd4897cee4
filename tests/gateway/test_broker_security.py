"""The shipped broker configuration, on real Mosquitto, with certificates from the fleet CA.

Each broker runs exactly what gateway/mosquitto.py's `install()` wrote (only ports and
paths are the test's).  A node's certificate binds it to its own topics; anything without
a certificate from the fleet CA stays out; revocation works through the CRL; the gateway
stores a legitimate node's frames over TLS and refuses a revoked node's at the frame level.

"Never receives" is shown without sleeping: after the message that must not arrive, a
message that must arrive is sent along the same path; the broker delivers in order, so
once the second is in, the first would have been too.

A denied publish gets a PUBACK or, sometimes, a closed connection: MQTT 3.1.1 allows either
([MQTT-3.3.5-2]) and Mosquitto 2.0 does both (eclipse-mosquitto/mosquitto#2579).  Either
way the message is dropped, so forged messages go out on connections of their own
(`attempt`), each of which may end.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from firmware import protocol
from fleet.ca import FleetCA, Layout, write_file_atomic
from gateway.forward.local import LocalStore
from gateway.ingest.mqtt import MqttIngest, MqttTls, parse_broker_url
from gateway.mosquitto import ACL, ACL_LOCAL, CONF, BrokerSettings, install, render
from gateway.pipeline import Gateway
from hardware.sites import load_placements
from simulators.fleet import SimFleet
from tests.fixtures.services import Mosquitto, _mqtt_connack, _stop_all, free_port

GATEWAY = "gw-lamp17"
UPLINKS = protocol.TOPIC_ROOT + "/+/+/up"
TIMEOUT_S = 10.0


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


# -- the fleet: three nodes in three zones, their keys and certificates --------------------


def _placements():
    by_zone = {}
    for p in load_placements():
        by_zone.setdefault(p.zone, p)
    return list(by_zone.values())[:3]


@dataclass(frozen=True)
class Identity:
    """A TLS client identity: certificate and key files (None: connect without one)."""

    cert: Path | None
    key: Path | None


@pytest.fixture
def fleet(tmp_path) -> SimFleet:
    return SimFleet(_placements(), seed=21, status_every=0)


@pytest.fixture
def ca(tmp_path, fleet) -> FleetCA:
    ca = FleetCA.init(tmp_path / "ca")
    for node in fleet.nodes:
        ca.issue_node(node.node_id)
    ca.issue_gateway(GATEWAY, ["lamp17.local"])
    return ca


def node_identity(ca: FleetCA, node_id: int) -> Identity:
    name = protocol.node_name(node_id)
    return Identity(ca.layout.node_cert(name), ca.layout.node_key(name))


def gateway_identity(ca: FleetCA) -> Identity:
    return Identity(ca.layout.client_cert(GATEWAY), ca.layout.client_key(GATEWAY))


# -- a broker with the shipped configuration --------------------------------------------


class ShippedMosquitto(Mosquitto):
    """Mosquitto started with exactly the files `gateway.mosquitto.install()` wrote."""

    def __init__(self, workdir: Path, ca_dir: Path, local_port: int | None = None):
        self.ca_dir = ca_dir
        self.local_port = local_port
        self._reloads = 0
        super().__init__(workdir)

    @property
    def broker_dir(self) -> Path:
        return self.workdir / "broker"

    def settings(self) -> BrokerSettings:
        root = hasattr(os, "geteuid") and os.geteuid() == 0
        return BrokerSettings(
            tls_port=self.port, tls_bind=self.host, local_port=self.local_port,
            persistence_dir=str(self.data_dir),
            # as root Mosquitto would switch to user "mosquitto", who cannot read pytest's
            # temporary directories
            run_as="root" if root else None)

    def install(self) -> Path:
        """(Re)write the broker directory from the CA material, as an operator does."""
        return install(self.ca_dir, self.broker_dir, settings=self.settings())

    def _config(self, extra: list[str]) -> str:
        return self.install().read_text()

    def _argv(self) -> list[str]:
        return [self.binary, "-c", str(self.broker_dir / CONF)]

    def _probe(self) -> bool:
        lay = Layout(self.ca_dir)
        ctx = ssl.create_default_context(cafile=str(lay.ca_cert))
        ctx.load_cert_chain(lay.client_cert(GATEWAY), lay.client_key(GATEWAY))
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock, \
                    ctx.wrap_socket(sock, server_hostname=self.host):
                return True
        except OSError:
            return False

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its configuration, ACLs and TLS files."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGHUP)
        wait_until(lambda: self.log_text().count("Reloading config") >= self._reloads + 1,
                   "the broker to reload")
        self._reloads += 1

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def broker_factory(tmp_path_factory, ca) -> Iterator[Callable[..., ShippedMosquitto]]:
    started: list[ShippedMosquitto] = []

    def start(local_port: int | None = None) -> ShippedMosquitto:
        broker = ShippedMosquitto(tmp_path_factory.mktemp("broker"), ca.layout.root, local_port)
        started.append(broker)
        broker.start()
        return broker

    try:
        yield start
    finally:
        _stop_all(started)


@pytest.fixture
def broker(broker_factory) -> ShippedMosquitto:
    return broker_factory()


# -- MQTT clients over TLS --------------------------------------------------------------


class Client:
    """A paho client over TLS with a fleet identity, recording what it receives."""

    def __init__(self, broker: ShippedMosquitto, who: Identity, client_id: str,
                 clean_session: bool = True, ca_file: Path | None = None):
        self.broker = broker
        self.received: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.disconnects = 0
        self._paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                 clean_session=clean_session)
        self._paho.tls_set(ca_certs=str(ca_file or Layout(broker.ca_dir).ca_cert),
                           certfile=str(who.cert) if who.cert else None,
                           keyfile=str(who.key) if who.key else None)
        self._paho.reconnect_delay_set(0.1, 0.5)
        self._paho.on_connect = self._on_connect
        self._paho.on_disconnect = self._on_disconnect
        self._paho.on_message = lambda c, u, m: self.received.append((m.topic, m.payload))

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.disconnects += 1

    def start(self) -> Client:
        try:
            self._paho.connect(self.broker.host, self.broker.port, keepalive=30)
        except OSError:
            pass  # a refused TLS handshake; paho's loop keeps trying, `connected` stays clear
        self._paho.loop_start()
        return self

    def connects(self, timeout_s: float = 3.0) -> bool:
        return self.connected.wait(timeout_s)

    def subscribe(self, *topics: str) -> None:
        done = threading.Event()
        self._paho.on_subscribe = lambda *a: done.set()
        self._paho.subscribe([(t, 1) for t in topics])
        assert done.wait(TIMEOUT_S), "no SUBACK"

    def send(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        """QoS 1, without waiting."""
        return self._paho.publish(topic, payload, qos=1)

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1, and wait for the broker's PUBACK (which it sends for a denied publish too:
        MQTT 3.1.1 has no way to say no)."""
        info = self.send(topic, payload)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published()

    def attempt(self, topic: str, payload: bytes) -> None:
        """Publish something the broker should refuse: wait for its PUBACK or for it to
        close the connection, whichever comes first."""
        before = self.disconnects
        info = self.send(topic, payload)
        wait_until(lambda: info.is_published() or self.disconnects > before,
                   f"the broker to answer a publish on {topic}")

    def wait_for(self, topic: str, payload: bytes) -> None:
        wait_until(lambda: (topic, payload) in self.received, f"{payload!r} on {topic}")

    def close(self) -> None:
        self._paho.disconnect()
        self._paho.loop_stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def connect(broker, who, client_id, must_connect=True, **kwargs) -> Client:
        c = Client(broker, who, client_id, **kwargs).start()
        made.append(c)
        if must_connect:
            assert c.connects(TIMEOUT_S), f"{client_id} could not connect:\n" + \
                broker.log_text()[-2000:]
        return c

    try:
        yield connect
    finally:
        for c in made:
            c.close()


def assert_refused(broker: ShippedMosquitto, connect: Callable[[], Client], why: str) -> None:
    """`connect()` starts a client the broker must turn away, logging `why` (OpenSSL's
    words); wait for that line rather than for a connection that does not come.  The
    client is closed afterwards, so its retries cannot stand in for the next refusal."""
    before = broker.log_text().count(why)
    client = connect()
    try:
        wait_until(lambda: broker.log_text().count(why) > before,
                   f"the broker to refuse: {why}")
        assert not client.connected.is_set()
    finally:
        client.close()


def up(zone: str, node_id: int) -> str:
    return protocol.topic_up(zone, node_id)


def down(zone: str, node_id: int) -> str:
    return f"{protocol.TOPIC_ROOT}/{zone}/{protocol.node_name(node_id)}/down"


# -- the rendered configuration (no broker) -------------------------------------------------


def test_the_shipped_configuration_has_the_options_the_issue_asks_for(ca):
    files = render(ca.layout.root, "/etc/dordt/mosquitto")
    assert set(files) == {CONF, ACL}
    conf = [line for line in files[CONF].splitlines() if line and not line.startswith("#")]
    for option in ("per_listener_settings true", "listener 8883", "require_certificate true",
                   "use_identity_as_username true", "use_username_as_clientid true",
                   "allow_anonymous false", "persistence true", "max_queued_messages 0",
                   "max_inflight_messages 1000", "tls_version tlsv1.2",
                   "cafile /etc/dordt/mosquitto/ca.crt",
                   "certfile /etc/dordt/mosquitto/server.crt",
                   "keyfile /etc/dordt/mosquitto/server.key",
                   "crlfile /etc/dordt/mosquitto/crl.pem",
                   "acl_file /etc/dordt/mosquitto/acl"):
        assert option in conf, option
    # one listener, TLS, no anonymous access anywhere unless asked for
    assert [line for line in conf if line.startswith("listener")] == ["listener 8883"]
    assert "allow_anonymous true" not in conf
    acl = [line for line in files[ACL].splitlines() if line and not line.startswith("#")]
    assert acl == ["pattern write dordt/v1/+/%u/up", "pattern read dordt/v1/+/%u/down",
                   "pattern write dordt/v1/+/%u/ota/get", "pattern write dordt/v1/+/%u/ota/state",
                   "pattern read dordt/v1/+/%u/ota/offer", "pattern read dordt/v1/+/%u/ota/chunk",
                   f"user {GATEWAY}", "topic read dordt/v1/+/+/up",
                   "topic write dordt/v1/+/+/down",
                   "topic read dordt/v1/+/+/ota/get", "topic read dordt/v1/+/+/ota/state",
                   "topic write dordt/v1/+/+/ota/offer", "topic write dordt/v1/+/+/ota/chunk"]


def test_the_loopback_listener_appears_only_when_configured(ca):
    files = render(ca.layout.root, "/b", settings=BrokerSettings(local_port=1883))
    conf = files[CONF].splitlines()
    assert conf[conf.index("listener 1883 127.0.0.1") + 1:][:2] == [
        "allow_anonymous true", "acl_file /b/acl-local"]
    assert [line for line in files[ACL_LOCAL].splitlines() if not line.startswith("#")] == [
        "topic read dordt/v1/+/+/up", "topic write dordt/v1/+/+/down",
        "topic read dordt/v1/+/+/ota/get", "topic read dordt/v1/+/+/ota/state",
        "topic write dordt/v1/+/+/ota/offer", "topic write dordt/v1/+/+/ota/chunk"]


def test_install_copies_the_tls_files_with_a_readable_key_for_the_brokers_group(ca, tmp_path):
    out = tmp_path / "broker"
    conf = install(ca.layout.root, out, key_group=os.getgid())
    assert conf == out / CONF
    assert sorted(p.name for p in out.iterdir()) == [
        "acl", "ca.crt", "crl.pem", "mosquitto.conf", "server.crt", "server.key"]
    assert (out / "server.key").read_bytes() == ca.layout.server_key(GATEWAY).read_bytes()
    assert (out / "server.key").stat().st_mode & 0o777 == 0o640
    assert (out / "server.key").stat().st_gid == os.getgid()
    assert (out / "ca.crt").stat().st_mode & 0o777 == 0o644
    # nothing of the gateway's own identity or of other nodes reaches the broker
    assert not (out / "client.key").exists()


@pytest.mark.parametrize("damage, words", [
    (lambda ca, tmp: ca.write_crl(valid_days=1, now=dt.datetime.now(dt.UTC)
                                  - dt.timedelta(days=2)),
     "crl.pem expired .* re-sign it"),
    (lambda ca, tmp: write_file_atomic(
        ca.layout.ca_cert, FleetCA.init(tmp / "other").layout.ca_cert.read_bytes(), 0o644),
     "server.crt was not issued by"),
    (lambda ca, tmp: write_file_atomic(
        ca.layout.server_key(GATEWAY), ca.layout.client_key(GATEWAY).read_bytes(), 0o600),
     "server.key does not belong to"),
    (lambda ca, tmp: ca.issue_gateway("lamp18", ["lamp18.local"]), "several gateways"),
    (lambda ca, tmp: ca.layout.crl.unlink(), "no such revocation list"),
])
def test_install_refuses_ca_material_the_broker_could_not_use(ca, tmp_path, damage, words):
    damage(ca, tmp_path)
    with pytest.raises(ValueError, match=words):
        install(ca.layout.root, tmp_path / "broker")
    assert not (tmp_path / "broker").exists()


def test_the_command_line_writes_the_broker_directory(ca, tmp_path, capsys):
    from gateway.mosquitto import main

    assert main(["--ca-dir", str(ca.layout.root), "--out", str(tmp_path / "b"),
                 "--port", "18883", "--local-port", "11883"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert "listener 18883\n" in (tmp_path / "b" / CONF).read_text()
    assert main(["--ca-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "c")]) == 2
    assert "no gateway certificates" in capsys.readouterr().err


# -- the gateway's MQTT ingest over TLS (no broker) ------------------------------------------


def test_broker_urls_keep_mqtt_and_add_mqtts():
    assert parse_broker_url("mqtt://broker:1884") == ("broker", 1884)
    assert parse_broker_url("127.0.0.1") == ("127.0.0.1", 1883)
    assert parse_broker_url("mqtts://127.0.0.1") == ("127.0.0.1", 8883)
    assert parse_broker_url("mqtts://lamp17.local:18883") == ("lamp17.local", 18883)
    with pytest.raises(ValueError, match="expected mqtt://HOST.* or mqtts://"):
        parse_broker_url("https://broker")


def test_the_ingest_takes_tls_files_exactly_with_an_mqtts_url(ca, tmp_path):
    tls = MqttTls(ca.layout.ca_cert, ca.layout.client_cert(GATEWAY),
                  ca.layout.client_key(GATEWAY))
    out: queue.Queue = queue.Queue()
    with pytest.raises(ValueError, match="mqtts:// needs TLS files"):
        MqttIngest("mqtts://127.0.0.1:8883", out, "gw")
    with pytest.raises(ValueError, match="TLS files were given, so use mqtts://"):
        MqttIngest("mqtt://127.0.0.1:1883", out, "gw", tls=tls)
    MqttIngest("mqtts://127.0.0.1:8883", out, "gw", tls=tls)  # files are loaded here
    # a key that is not the certificate's: named, never quoted
    wrong = MqttTls(tls.ca_file, tls.cert_file, ca.layout.server_key(GATEWAY))
    with pytest.raises(ValueError, match="cannot use the TLS files") as err:
        MqttIngest("mqtts://127.0.0.1:8883", out, "gw", tls=wrong)
    assert str(ca.layout.server_key(GATEWAY)) in str(err.value)
    pem = ca.layout.server_key(GATEWAY).read_text()
    assert not any(line in str(err.value) for line in pem.splitlines()[1:-1])


# -- a node's certificate binds it to its own topics --------------------------------------


@pytest.mark.services
def test_a_node_cannot_publish_as_another_node(broker, ca, fleet, clients):
    a, b = fleet.nodes[0], fleet.nodes[1]
    zone_a, zone_b = a.placement.zone, b.placement.zone
    gw = clients(broker, gateway_identity(ca), "gateway")
    gw.subscribe(UPLINKS)
    # One connection at a time: the client id is the certificate's CN, so a second
    # connection with a's certificate would take over the first.
    as_a = node_identity(ca, a.node_id)
    node_a = clients(broker, as_a, "node-a")
    node_a.publish(up(zone_a, a.node_id), b"a's own")
    node_a.close()
    for topic in (up(zone_b, b.node_id), up(zone_a, b.node_id),  # as b, in either zone
                  "dordt/v1/spoorzone/ffffffff/up",  # as a node nobody enrolled
                  down(zone_b, b.node_id)):  # as the gateway, to b
        forger = clients(broker, as_a, "node-a")
        forger.attempt(topic, b"forged by a")
        forger.close()
    clients(broker, as_a, "node-a").publish(up(zone_a, a.node_id), b"marker")
    gw.wait_for(up(zone_a, a.node_id), b"marker")
    assert gw.received == [(up(zone_a, a.node_id), b"a's own"),
                           (up(zone_a, a.node_id), b"marker")]


@pytest.mark.services
def test_a_node_cannot_read_other_nodes_uplinks_or_downlinks(broker, ca, fleet, clients):
    a, b = fleet.nodes[0], fleet.nodes[1]
    gw = clients(broker, gateway_identity(ca), "gateway")
    gw.subscribe(UPLINKS)
    spy = clients(broker, node_identity(ca, a.node_id), "spy")
    # Mosquitto 2.0 grants these subscriptions and filters every delivery by the ACL
    spy.subscribe(UPLINKS, "#", down(b.placement.zone, b.node_id),
                  down(a.placement.zone, a.node_id))
    node_b = clients(broker, node_identity(ca, b.node_id), "node-b")
    node_b.subscribe(down(b.placement.zone, b.node_id))
    node_b.publish(up(b.placement.zone, b.node_id), b"b's reading")
    gw.wait_for(up(b.placement.zone, b.node_id), b"b's reading")
    gw.publish(down(b.placement.zone, b.node_id), b"for b")  # the gateway may
    node_b.wait_for(down(b.placement.zone, b.node_id), b"for b")
    gw.publish(down(a.placement.zone, a.node_id), b"for a")
    spy.wait_for(down(a.placement.zone, a.node_id), b"for a")
    assert spy.received == [(down(a.placement.zone, a.node_id), b"for a")]


@pytest.mark.services
def test_a_node_cannot_take_over_the_gateways_session(broker, ca, fleet, clients):
    a = fleet.nodes[0]
    gw = clients(broker, gateway_identity(ca), "dordt-gateway", clean_session=False)
    gw.subscribe(UPLINKS)
    # same client id as the gateway: the broker replaces it with the node's CN
    clients(broker, node_identity(ca, a.node_id), "dordt-gateway")
    node_b = clients(broker, node_identity(ca, fleet.nodes[1].node_id), "node-b")
    node_b.publish(up(fleet.nodes[1].placement.zone, fleet.nodes[1].node_id), b"after")
    gw.wait_for(up(fleet.nodes[1].placement.zone, fleet.nodes[1].node_id), b"after")
    assert gw.disconnects == 0
    assert f"as {protocol.node_name(a.node_id)} " in broker.log_text()


@pytest.mark.services
def test_a_node_sending_an_oversized_packet_is_disconnected(broker, ca, fleet, clients):
    a, b = fleet.nodes[0], fleet.nodes[1]
    gw = clients(broker, gateway_identity(ca), "gateway")
    gw.subscribe(UPLINKS)
    node_a = clients(broker, node_identity(ca, a.node_id), "node-a")
    node_a.send(up(a.placement.zone, a.node_id), b"x" * 4096)
    wait_until(lambda: node_a.disconnects > 0, "the broker to disconnect the node")
    node_b = clients(broker, node_identity(ca, b.node_id), "node-b")
    node_b.publish(up(b.placement.zone, b.node_id), b"marker")
    gw.wait_for(up(b.placement.zone, b.node_id), b"marker")
    assert [t for t, _ in gw.received] == [up(b.placement.zone, b.node_id)]


# -- only certificates from the fleet CA get in ----------------------------------------------


@pytest.mark.services
@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate for the node",
                                 "an expired certificate", "the broker's server certificate"])
def test_clients_without_a_valid_fleet_certificate_cannot_connect(broker, ca, fleet, clients,
                                                                   tmp_path, who):
    node = fleet.nodes[0].node_id
    if who == "no certificate":
        identity, log = Identity(None, None), "peer did not return a certificate"
    elif who == "another CA's certificate for the node":
        rogue = FleetCA.init(tmp_path / "rogue")
        rogue.issue_node(node)
        identity, log = node_identity(rogue, node), "certificate verify failed"
    elif who == "an expired certificate":
        ca.issue_node(0x0D0A00EE, valid_days=1,
                      now=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
        identity, log = node_identity(ca, 0x0D0A00EE), "certificate verify failed"
    else:
        identity = Identity(ca.layout.server_cert(GATEWAY), ca.layout.server_key(GATEWAY))
        log = "certificate verify failed"
    assert clients(broker, node_identity(ca, node), "control").connects()
    assert_refused(broker, lambda: clients(broker, identity, "outsider", must_connect=False),
                   log)


@pytest.mark.services
def test_plain_mqtt_on_the_tls_port_gets_no_answer(broker):
    assert not _mqtt_connack(broker.host, broker.port)


@pytest.mark.services
def test_the_loopback_listener_when_enabled_reads_uplinks_but_cannot_forge_them(
        broker_factory, ca, fleet, clients):
    local_port = free_port()
    broker = broker_factory(local_port=local_port)
    a = fleet.nodes[0]
    made = []

    def local(client_id: str) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        c.connect("127.0.0.1", local_port)  # anonymous, no TLS
        c.loop_start()
        made.append(c)
        return c

    try:
        reader, got, subscribed = local("local-reader"), [], threading.Event()
        reader.on_message = lambda c, u, m: got.append((m.topic, m.payload))
        reader.on_subscribe = lambda *args: subscribed.set()
        reader.subscribe(UPLINKS, qos=1)
        assert subscribed.wait(TIMEOUT_S)
        forger = local("local-forger")
        forged = forger.publish(up(a.placement.zone, a.node_id), b"forged", qos=1)
        wait_until(lambda: forged.is_published() or not forger.is_connected(),
                   "the broker to answer the forged uplink")
        clients(broker, node_identity(ca, a.node_id), "node-a").publish(
            up(a.placement.zone, a.node_id), b"real")
        wait_until(lambda: got, "the real uplink on the loopback listener")
        assert got == [(up(a.placement.zone, a.node_id), b"real")]
    finally:
        for c in made:
            c.disconnect()
            c.loop_stop()


# -- revocation ---------------------------------------------------------------------------


@pytest.mark.services
def test_a_revoked_certificate_is_refused_after_reload_and_cut_off_by_restart(
        broker, ca, fleet, clients):
    a, b, c = fleet.nodes
    gw = clients(broker, gateway_identity(ca), "gateway", clean_session=False)
    gw.subscribe(UPLINKS)
    node_c = clients(broker, node_identity(ca, c.node_id), "node-c")  # stays connected
    ca.revoke(protocol.node_name(b.node_id), reason="key_compromise")
    ca.revoke(protocol.node_name(c.node_id), reason="key_compromise")
    broker.install()  # the new crl.pem, as an operator does
    broker.reload()
    assert_refused(broker, lambda: clients(broker, node_identity(ca, b.node_id), "node-b",
                                           must_connect=False), "certificate verify failed")
    # A reload checks new connections only: the revoked node that was connected is still
    # in, which is why docs/gateway-operations.md says *restart* after a revocation.
    node_c.publish(up(c.placement.zone, c.node_id), b"still in after reload")
    gw.wait_for(up(c.placement.zone, c.node_id), b"still in after reload")
    def restart_and_let_c_reconnect() -> Client:
        broker.restart()
        return node_c  # its paho reconnects by itself

    assert_refused(broker, restart_and_let_c_reconnect, "certificate verify failed")
    assert gw.connects(TIMEOUT_S)
    assert clients(broker, node_identity(ca, a.node_id), "node-a").connects()


@pytest.mark.services
def test_a_revocation_list_past_its_next_update_shuts_out_every_node(broker, ca, fleet,
                                                                     clients):
    """Why install() refuses an expired CRL and `dordt fleet ca crl` exists."""
    a = fleet.nodes[0]
    ca.write_crl(valid_days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    write_file_atomic(broker.broker_dir / "crl.pem", ca.layout.crl.read_bytes(), 0o644)
    broker.restart()
    assert_refused(broker, lambda: clients(broker, node_identity(ca, a.node_id), "node-a",
                                           must_connect=False), "certificate verify failed")
    ca.write_crl()
    broker.install()
    broker.restart()
    assert clients(broker, node_identity(ca, a.node_id), "node-a-again").connects()


# -- delivery under the shipped limits ------------------------------------------------------


@pytest.mark.services
def test_more_than_a_thousand_frames_queued_for_an_absent_gateway_all_arrive(
        broker, ca, fleet, clients):
    """Mosquitto's default max_queued_messages (1000) would drop the rest silently."""
    a = fleet.nodes[0]
    topic = up(a.placement.zone, a.node_id)
    gw = clients(broker, gateway_identity(ca), "gateway", clean_session=False)
    gw.subscribe(UPLINKS)
    gw.close()  # away; its persistent session queues
    node = clients(broker, node_identity(ca, a.node_id), "node-a")
    payloads = [b"%d" % i for i in range(1500)]
    infos = [node.send(topic, p) for p in payloads]
    for info in infos:
        info.wait_for_publish(TIMEOUT_S)
    broker.restart()  # and the queue survives a broker restart (persistence)
    back = clients(broker, gateway_identity(ca), "gateway", clean_session=False)
    wait_until(lambda: len(back.received) >= len(payloads), "all queued frames", 30)
    assert sorted(p for _, p in back.received) == sorted(payloads)


# -- the gateway over TLS -------------------------------------------------------------------


@pytest.mark.services
def test_the_gateway_stores_frames_over_tls_and_refuses_a_revoked_nodes(broker, ca, fleet,
                                                                       tmp_path, clients):
    a, b, c = fleet.nodes
    keyring = fleet.keyring()
    keyring.revoke(c.node_id)  # revoked in the keyring; its certificate still works
    store_path = tmp_path / "store.sqlite"
    gateway = Gateway(keyring, LocalStore(store_path), tmp_path / "gw")
    # Until Gateway takes TLS settings itself, its ingest is the TLS one made here.
    gateway.ingest = MqttIngest(
        f"mqtts://{broker.host}:{broker.port}", gateway.queue, "dordt-gateway",
        tls=MqttTls(ca.layout.ca_cert, ca.layout.client_cert(GATEWAY),
                    ca.layout.client_key(GATEWAY)))
    t0 = int(time.time()) - 600
    gateway.start()
    try:
        assert gateway.ingest.wait_connected(TIMEOUT_S)
        sent = {n.node_id: 0 for n in fleet.nodes}
        for n in (a, b, c):
            client = clients(broker, node_identity(ca, n.node_id), f"node-{n.node_id:x}")
            for r in range(5):
                client.publish(n.topic, n.frame(t0 + 10 * r))
                sent[n.node_id] += 1
            if n is a:  # a's certificate cannot carry b's frame onto b's topic
                client.attempt(b.topic, b.frame(t0 + 60))
            client.close()
        total = sum(sent.values())
        wait_until(lambda: gateway.stats.received == total, "the gateway to ingest")
        wait_until(lambda: gateway.outbox.depth() == 0, "the outbox to drain")
    finally:
        gateway.stop()
    stats = gateway.stats
    assert stats.accepted == sent[a.node_id] + sent[b.node_id]
    assert dict(stats.rejected) == {"revoked": sent[c.node_id]}
    assert stats.rejected_by_node[(protocol.node_name(c.node_id), "revoked")] == \
        sent[c.node_id]
    stored = LocalStore(store_path).count_by(("zone",))
    assert stored == {(a.placement.zone,): 5, (b.placement.zone,): 5}


@pytest.mark.services
def test_a_gateway_certificate_the_broker_refuses_stops_run_with_two_lines(broker, ca, fleet,
                                                                          tmp_path):
    # An operator's mistake (issue 13): a client certificate from another CA.  paho would
    # retry for ever, silently; `dordt gateway run` says what happened and what to do.
    import subprocess
    import sys

    other = FleetCA.init(tmp_path / "other-ca")
    other.issue_gateway(GATEWAY, ["lamp17.local"])
    keyring = tmp_path / "keyring.json"
    fleet.keyring().save(keyring)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f'[gateway]\nid = "{GATEWAY}"\ndata_dir = "{tmp_path / "gw"}"\nkeyring = "{keyring}"\n'
        f'[mqtt]\nurl = "mqtts://{broker.host}:{broker.port}"\n'
        f'ca_file = "{ca.layout.ca_cert}"\n'
        f'cert_file = "{other.layout.client_cert(GATEWAY)}"\n'
        f'key_file = "{other.layout.client_key(GATEWAY)}"\n'
        f'[store]\nurl = "sqlite:{tmp_path / "store.sqlite"}"\n'
        '[health]\nlisten = "127.0.0.1:0"\n')
    r = subprocess.run([sys.executable, "-m", "dordt.cli", "gateway", "run", "--config",
                        str(cfg), "--duration", "30"], capture_output=True, text=True,
                       timeout=60)
    out = r.stdout + r.stderr
    assert "Traceback" not in out and r.returncode == 1, out
    err = [x for x in r.stderr.splitlines() if x.startswith("dordt: ")]
    assert len(err) == 1 and "refused this gateway's TLS certificate" in err[0], out
    assert "cert_file" in err[0]
