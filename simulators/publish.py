"""Publish simulated frames to an MQTT broker (QoS 1), paced in real time.

In:  a SimFleet, a broker.  Out: every `interval_s`, one frame per node (and, with faults,
a few bad ones), published with paho-mqtt; optionally each one also written to a recording
(`recorder`), stamped with the time it was published.  For replays at speed use
simulators/replay.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt

from gateway.ingest.mqtt import parse_broker_url
from simulators.fleet import SimFleet, forged, stranger, truncated
from simulators.recording import Message, RecordingWriter


class FleetPublisher:
    """Every `interval_s`, one frame from each node of the fleet; with `faults`, also a
    forged frame, a replayed frame, a truncated frame and a frame from an unknown node
    every few rounds, so the gateway's rejection counters have something to count."""

    def __init__(self, fleet: SimFleet, broker_url: str, interval_s: float = 2.0,
                 faults: bool = True, client_id: str = "dordt-sim-fleet",
                 clock: Callable[[], float] = time.time,
                 recorder: RecordingWriter | None = None):
        self.fleet = fleet
        self.interval_s = interval_s
        self.faults = faults
        self.clock = clock
        self.published = 0
        self.published_faults = 0
        self.rounds = 0
        self.recorder = recorder
        self.last_round_s: float | None = None  # the simulated time of the latest round
        host, port = parse_broker_url(broker_url)
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.max_inflight_messages_set(200)
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: list[mqtt.MQTTMessageInfo] = []

    def publish_round(self) -> None:
        now = self.clock()
        self.last_round_s = now
        last = None
        for topic, frame in self.fleet.tick(now, window_s=max(1, round(self.interval_s))):
            self._send(topic, frame)
            last = (topic, frame)
        if self.faults and last is not None and self.rounds % 3 == 1:
            topic, frame = last
            for fault in ((topic, forged(frame)), (topic, frame), (topic, truncated(frame)),
                          stranger(self.fleet.seed, now)):
                self._send(*fault)
                self.published_faults += 1
        self.rounds += 1

    def _send(self, topic: str, frame: bytes) -> None:
        self._pending.append(self._client.publish(topic, frame, qos=1))
        self.published += 1
        if self.recorder is not None:
            self.recorder.write(Message(int(self.clock() * 1000), topic, frame, 1))

    def wait_acked(self, timeout_s: float = 10.0) -> bool:
        """True once the broker has acknowledged every frame published so far."""
        deadline = time.monotonic() + timeout_s
        for info in self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                info.wait_for_publish(left)
            except RuntimeError:
                return False
            if not info.is_published():
                return False
        self._pending.clear()
        return True

    def run(self, duration_s: float) -> None:
        """Publish rounds until `duration_s` has passed or stop() is called."""
        end = time.monotonic() + duration_s
        next_round = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < end:
            self.publish_round()
            next_round += self.interval_s
            self._stop.wait(max(0.0, min(next_round, end) - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
