"""MQTT ingest: QoS 1 frames from `dordt/v1/+/+/up` → Envelopes on a queue.

Persistent session (clean_session=False, a fixed client id) so the broker queues frames
while the gateway is away, and paho's manual ack: the broker's PUBACK is sent only when
the pipeline calls the envelope's ack, after the reading is committed.  A frame that was
never acked is redelivered after a reconnect; the replay window makes that harmless.
paho's network thread reconnects by itself (1 s .. 30 s back-off).

TLS: an `mqtts://` URL with an `MqttTls` (the CA that signed the broker's certificate, and
this gateway's client certificate and key, as fleet/ca.py lays them out).  The broker's
certificate must name the host of the URL (127.0.0.1 and localhost always do).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from firmware import protocol
from gateway.model import Envelope

log = logging.getLogger("dordt.gateway.mqtt")

SUBSCRIPTION = protocol.TOPIC_ROOT + "/+/+/up"

_DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class MqttTls:
    """Files for a TLS connection (paths only; the key stays in its file)."""

    ca_file: str | Path  # the CA that signed the broker's certificate
    cert_file: str | Path  # this client's certificate
    key_file: str | Path  # its private key


def parse_broker_url(url: str) -> tuple[str, int]:
    """'mqtt://host:port' (or 'host:port') → (host, port); port defaults to 1883, and to
    8883 for 'mqtts://host:port' (TLS, see `uses_tls`)."""
    parsed = urlparse(url if "://" in url else "mqtt://" + url)
    if parsed.scheme not in _DEFAULT_PORTS or not parsed.hostname:
        raise ValueError(f"broker URL {url!r}: expected mqtt://HOST[:PORT] or "
                         "mqtts://HOST[:PORT]")
    return parsed.hostname, parsed.port or _DEFAULT_PORTS[parsed.scheme]


def uses_tls(url: str) -> bool:
    """True for an mqtts:// broker URL."""
    return url.lower().startswith("mqtts://")


class MqttIngest:
    """`extra`: more subscriptions on this same session, [(topic filter, qos)], whose
    messages go to `on_extra(topic, payload)` on paho's thread and are acked at once (the
    OTA server's requests, gateway/ota.py: a broker that takes the client id from the
    certificate, use_username_as_clientid, allows the gateway one session only)."""

    def __init__(self, broker_url: str,
                 out: queue.Queue[Envelope] | queue.SimpleQueue[Envelope], client_id: str,
                 topic: str = SUBSCRIPTION, tls: MqttTls | None = None,
                 extra: list[tuple[str, int]] = (), on_extra=None):
        self.host, self.port = parse_broker_url(broker_url)
        if uses_tls(broker_url) != (tls is not None):
            raise ValueError(
                f"broker URL {broker_url!r}: " + (
                    "mqtts:// needs TLS files (the CA certificate, this gateway's client "
                    "certificate and key)" if tls is None else
                    "TLS files were given, so use mqtts://HOST[:PORT]"))
        self.out = out
        self.topic = topic
        self.extra = list(extra)
        self.on_extra = on_extra
        self.connected = threading.Event()
        # Set when the broker confirmed the subscription (SUBACK): only then does a frame
        # published by anyone reach this session.  `connected` alone is set at CONNACK,
        # which is what acks need (a persistent session's queue arrives before SUBACK).
        self.subscribed = threading.Event()
        self.connects = 0
        self._stopping = False
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            manual_ack=True,
        )
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(1, 30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_log = self._on_log
        # Why the broker would not take this gateway's TLS certificate, once it said so:
        # retrying cannot cure that, so the command line stops and tells the operator.
        self.tls_refused: str | None = None
        if tls is not None:
            _set_tls(self._client, tls, broker_url)

    def start(self) -> None:
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def wait_connected(self, timeout_s: float) -> bool:
        """True once connected and subscribed (within `timeout_s` in all)."""
        deadline = time.monotonic() + timeout_s
        return self.connected.wait(timeout_s) and self.subscribed.wait(
            max(0.0, deadline - time.monotonic()))

    def send(self, topic: str, payload: bytes) -> bool:
        """Publish a downlink (QoS 1); False when the broker is not connected."""
        if not self.connected.is_set():
            return False
        self._client.publish(topic, payload, qos=1)
        return True

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker %s:%d refused the connection: %s", self.host, self.port,
                        reason_code)
            return
        self.connects += 1
        client.on_log = None  # the certificate was taken; no formatting of log lines per frame
        client.subscribe([(self.topic, 1)] + self.extra)
        self.connected.set()
        log.info("connected to broker %s:%d (session present: %s)", self.host, self.port,
                 flags.session_present)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if self._stopping:
            return
        log.warning("lost broker %s:%d (%s); reconnecting", self.host, self.port, reason_code)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.error("broker %s:%d refused the subscription to %s: %s", self.host,
                      self.port, self.topic, reason_codes)
            return
        self.subscribed.set()

    def _on_log(self, client, userdata, level, text: str) -> None:
        # paho reports a TLS alert from the broker (a client certificate it does not
        # trust) only as a log line: "failed to receive on socket: [SSL: ...] ...".
        if level == mqtt.MQTT_LOG_ERR and "SSL" in text and not self.connected.is_set():
            self.tls_refused = text.partition(": ")[2] or text

    def _on_message(self, client, userdata, message) -> None:
        mid, qos, session = message.mid, message.qos, self.connects
        if self.extra and not message.topic.endswith("/up"):
            try:
                if self.on_extra is not None:
                    self.on_extra(message.topic, bytes(message.payload))
            finally:
                if qos and self.connected.is_set():
                    client.ack(mid, qos)
            return

        def ack() -> None:
            # A message id is only meaningful on the connection it came on: after a
            # reconnect the broker redelivers the message under a new id, and the same id
            # may name another message that is not yet durable.
            if qos and session == self.connects and self.connected.is_set():
                client.ack(mid, qos)

        self.out.put(Envelope("mqtt", message.topic, bytes(message.payload), time.time(), ack))


def _set_tls(client: mqtt.Client, tls: MqttTls, broker_url: str) -> None:
    # paho's defaults: TLS 1.2 or newer, the broker's certificate verified against
    # ca_file and its name against the URL's host.
    try:
        client.tls_set(ca_certs=str(tls.ca_file), certfile=str(tls.cert_file),
                       keyfile=str(tls.key_file))
    except OSError as exc:  # ssl.SSLError is one; neither quotes a key
        raise ValueError(
            f"broker {broker_url}: cannot use the TLS files (CA {tls.ca_file}, certificate "
            f"{tls.cert_file}, key {tls.key_file}): {exc.strerror or exc}") from None
