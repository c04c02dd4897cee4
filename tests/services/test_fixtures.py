"""Smoke tests of the service fixtures: what later tests rely on Mosquitto and
VictoriaMetrics to do."""

from __future__ import annotations

import queue
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.fixtures.services import (
    Mosquitto,
    VictoriaMetrics,
    find_binary,
    free_port,
    publish_qos1,
)

pytestmark = pytest.mark.services


class Subscriber:
    """A paho 2.x client that records what it receives."""

    def __init__(self, host: str, port: int, client_id: str, clean_session: bool):
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.session_present: bool | None = None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = lambda client, userdata, msg: self.messages.put(msg)
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(5), f"{client_id} did not connect"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.session_present = flags.session_present
        self.connected.set()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(5), f"no SUBACK for {topic}"

    def receive(self, n: int, timeout_s: float = 10) -> list[bytes]:
        deadline = time.monotonic() + timeout_s
        got = []
        while len(got) < n:
            left = deadline - time.monotonic()
            try:
                got.append(self.messages.get(timeout=max(left, 0.01)).payload)
            except queue.Empty:
                raise AssertionError(f"received {len(got)} of {n} messages") from None
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(host: str, port: int, topic: str, payloads: list[bytes]) -> None:
    publish_qos1(host, port, [(topic, p) for p in payloads], client_id="fixture-publisher")


def test_mosquitto_carries_qos1_publish_and_subscribe(mosquitto: Mosquitto):
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    sub = Subscriber(mosquitto.host, mosquitto.port, "smoke-sub", clean_session=True)
    try:
        sub.subscribe("dordt/smoke/#")
        publish(mosquitto.host, mosquitto.port, "dordt/smoke/a", [b"one", b"two", b"three"])
        assert sub.receive(3) == [b"one", b"two", b"three"]
    finally:
        sub.close()
    assert "smoke-sub" in mosquitto.log_text()


def test_a_restart_keeps_a_persistent_sessions_queued_messages(mosquitto: Mosquitto):
    host, port = mosquitto.host, mosquitto.port
    sub = Subscriber(host, port, "gateway-session", clean_session=False)
    sub.subscribe("dordt/queued/#")
    sub.close()
    # More than Mosquitto's default max_queued_messages (1000), which would drop the rest.
    payloads = [b"%d" % i for i in range(1500)]
    publish(host, port, "dordt/queued/x", payloads)
    old_pid = mosquitto.pid
    mosquitto.stop()
    assert not mosquitto.running
    mosquitto.start()
    assert mosquitto.pid != old_pid
    assert (mosquitto.host, mosquitto.port) == (host, port)
    sub = Subscriber(host, port, "gateway-session", clean_session=False)
    try:
        assert sub.session_present is True
        assert sub.receive(len(payloads)) == payloads
    finally:
        sub.close()


def test_mosquitto_factory_appends_config_lines(mosquitto_factory):
    second = free_port()
    broker = mosquitto_factory([f"listener {second} 127.0.0.1"])
    assert f"listener {second} 127.0.0.1" in broker.conf_path.read_text()
    for port in (broker.port, second):
        sub = Subscriber("127.0.0.1", port, f"on-{port}", clean_session=True)
        sub.close()


def test_a_broker_that_does_not_start_fails_with_its_log(mosquitto_factory):
    with pytest.raises(pytest.fail.Exception) as err:
        mosquitto_factory(["no_such_option true"])
    message = str(err.value)
    assert "mosquitto exited with code" in message
    assert "no_such_option" in message  # the broker's own complaint, from its log


def test_a_missing_binary_fails_with_the_fix():
    with pytest.raises(pytest.fail.Exception, match="run `make test`, it installs mosquitto"):
        find_binary("dordt-no-such-broker")


def test_victoriametrics_write_and_export(victoriametrics: VictoriaMetrics):
    name = f"fixture_smoke_{time.time_ns()}"
    body = f"{name},node=0a0b0c0d,zone=spoorzone v=1.5,w=-inf 1700000000\n".encode()
    req = urllib.request.Request(
        victoriametrics.url + "/api/v2/write?precision=s", data=body, method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 204
    assert victoriametrics.export(f'{{__name__=~"{name}_.*"}}') == [
        {
            "metric": {"__name__": f"{name}_v", "node": "0a0b0c0d", "zone": "spoorzone"},
            "values": [1.5],
            "timestamps": [1_700_000_000_000],
        },
        {
            "metric": {"__name__": f"{name}_w", "node": "0a0b0c0d", "zone": "spoorzone"},
            "values": [float("-inf")],
            "timestamps": [1_700_000_000_000],
        },
    ]


def test_victoriametrics_restart_keeps_data_on_the_same_port(victoriametrics_factory):
    vm = victoriametrics_factory()
    req = urllib.request.Request(
        vm.url + "/write?precision=s", data=b"kept,a=b v=2 1700000000", method="POST"
    )
    urllib.request.urlopen(req, timeout=10).close()
    url = vm.url
    vm.stop()
    vm.start()
    assert vm.url == url
    [series] = vm.export("kept_v")
    assert series["values"] == [2.0]
