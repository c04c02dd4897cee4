"""Replay and capture against a real Mosquitto and a real gateway: what was recorded is
what the store ends up with, field by field; outages in the stream are acted on.  The
gateway runs with a pass-through privacy policy (see test_faults.py)."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from firmware import metrics, protocol
from gateway.forward.local import LocalStore
from gateway.pipeline import Gateway
from simulators.faults import FaultPipeline
from simulators.fleet import forged
from simulators.framegen import FrameGenerator, record
from simulators.recording import Message, RecordingReader, RecordingWriter, read_recording
from simulators.replay import BrokerRecorder, ListSink, MqttPublisher, Replayer, rebase
from simulators.zonemodel import local_to_utc
from tests.fixtures.services import publish_qos1
from tests.helpers import wait_until
from tests.simulators.test_faults import pass_through_policy

START = local_to_utc(dt.date(2026, 3, 11), 11)
DATA_FIELDS = set(metrics.BY_NAME)


def readings(messages):
    """(measurement, node, time) -> {field: value} of the frames, as the store keeps them."""
    out = {}
    for msg in messages:
        if msg.is_control:
            continue
        frame = protocol.decode(msg.payload)
        measurement = "node_status" if frame.is_status else metrics.KIND_NAMES[frame.kind]
        out[(measurement, protocol.node_name(frame.node_id), frame.timestamp)] = {
            metrics.BY_ID[i].name: metrics.BY_ID[i].to_value(raw) for i, raw in frame.metrics}
    return out


def stored(path):
    store = LocalStore(path, create=False)
    try:
        rows = store._conn().execute(
            "SELECT measurement, node, time_s, field, value FROM points").fetchall()
    finally:
        store.close()
    out: dict = {}
    for measurement, node, time_s, name, value in rows:
        if name in DATA_FIELDS:  # fields the gateway adds itself are not the recording's
            out.setdefault((measurement, node, time_s), {})[name] = value
    return out


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """Half an hour of the three zones at a 60 s cadence."""
    gen = FrameGenerator(seed=31, cadence_s=60, status_every=10)
    path = tmp_path_factory.mktemp("rec") / "half-hour.rec"
    record(gen, path, START, START + 1800)
    return path, gen.keyring()


class GatewayHarness:
    """A gateway on the broker that can be stopped and started again (same data dir and
    client id: the broker keeps its session meanwhile)."""

    def __init__(self, keyring, broker, tmp_path, client_id):
        self.keyring, self.broker, self.client_id = keyring, broker, client_id
        self.store_path = tmp_path / "store.sqlite"
        self.data_dir = tmp_path / "gw"
        self.policy = pass_through_policy(tmp_path)
        self.received = self.accepted = 0
        self.rejected: dict = {}
        self.gateway = None
        self.start()

    def start(self):
        self.gateway = Gateway(self.keyring, LocalStore(self.store_path), self.data_dir,
                               self.broker.url, client_id=self.client_id,
                               policy_path=self.policy)
        self.gateway.start()
        assert self.gateway.ingest.wait_connected(20)

    def stop(self):
        gw, self.gateway = self.gateway, None
        gw.stop()
        self.received += gw.stats.received
        self.accepted += gw.stats.accepted
        for k, v in gw.stats.rejected.items():
            self.rejected[k] = self.rejected.get(k, 0) + v

    def settle(self, expected, timeout_s=60):
        """Wait until `expected` readings were accepted and forwarded, then stop."""
        gw = self.gateway
        wait_until(lambda: self.accepted + gw.stats.accepted >= expected, timeout_s,
                   f"the gateway to accept {expected} frames (so far {gw.stats.accepted}, "
                   f"rejected {dict(gw.stats.rejected)})")
        wait_until(lambda: gw.queue.empty() and gw.outbox.depth() == 0, timeout_s,
                   "the outbox to drain")
        self.stop()


@pytest.mark.services
def test_a_replay_lands_in_the_store_exactly_as_recorded(recording, mosquitto, tmp_path):
    path, ring = recording
    start_s = int(time.time()) - 3600
    original = read_recording(path)
    shift = start_s - original[0].t_ms // 1000
    harness = GatewayHarness(ring, mosquitto, tmp_path, "replay-exact")
    publisher = MqttPublisher(mosquitto.url, "replay-exact-pub")
    try:
        stats = Replayer(publisher).run(rebase(RecordingReader(path), start_s, ring))
    finally:
        publisher.close()
    assert stats.published == len(original)
    harness.settle(len(original))
    assert harness.accepted == len(original) and not harness.rejected
    expected = {(m, n, t + shift): fields for (m, n, t), fields in readings(original).items()}
    assert stored(harness.store_path) == expected


def test_replay_is_deterministic_and_re_signs_what_it_re_bases(recording):
    path, ring = recording
    original = read_recording(path)
    bad = original[5]._replace(payload=forged(original[5].payload))
    stream = original[:5] + [bad] + original[6:40]

    def replay():
        sink = ListSink()
        Replayer(sink).run(rebase(stream, 1_900_000_000, ring, counter_shift=7))
        return sink.messages

    first = replay()
    assert first == replay()
    assert [t for t, _, _ in first] == [m.topic for m in stream]
    for (_, payload, qos), before in zip(first, stream):
        frame = protocol.decode(payload)
        old = protocol.decode(before.payload)
        assert frame.timestamp - old.timestamp == 1_900_000_000 - stream[0].t_ms // 1000
        assert frame.counter == old.counter + 7 and qos == before.qos
        key = ring.get(frame.node_id).keys[0]
        assert protocol.verify(frame, key) == (before is not bad)
    sink = ListSink()
    Replayer(sink).run(rebase(stream, None, None))  # no keys: as recorded
    assert [p for _, p, _ in sink.messages] == [m.payload for m in stream]


def test_replay_keeps_the_recorded_pace_times_the_speed():
    messages = [Message(1_000_000 + 1000 * k, "dordt/v1/z/00000001/up", b"x", 1)
                for k in range(0, 21, 4)]  # 20 s of recording
    now = [0.0]
    Replayer(ListSink(), speed=10, clock=lambda: now[0],
             sleep=lambda s: now.__setitem__(0, now[0] + s)).run(messages)
    assert now[0] == pytest.approx(2.0)


@pytest.mark.services
def test_a_broker_capture_records_what_was_published(mosquitto, tmp_path):
    gen = FrameGenerator(seed=4, cadence_s=60)
    frames = [(m.topic, m.payload) for m in gen.messages(START, START + 300)]
    writer = RecordingWriter(tmp_path / "capture.rec", {"source": "broker"})
    recorder = BrokerRecorder(mosquitto.url, writer, client_id="capture-test")
    assert recorder.start()
    try:
        publish_qos1(mosquitto.host, mosquitto.port, frames, client_id="capture-pub")
        recorder.run(10, max_messages=len(frames))
    finally:
        recorder.close()
    reader = RecordingReader(tmp_path / "capture.rec")
    got = list(reader)
    assert [(m.topic, m.payload) for m in got] == frames and reader.complete
    assert all(m.qos == 1 for m in got)


@pytest.mark.services
def test_a_broker_outage_in_the_stream_loses_nothing(recording, mosquitto, tmp_path):
    path, ring = recording
    start_s = int(time.time()) - 3600
    pipeline = FaultPipeline(["broker_outage:at_s=300,duration_s=600"], 1, ring)
    stream = list(pipeline.apply(rebase(RecordingReader(path), start_s, ring)))
    frames = [m for m in stream if not m.is_control]
    assert pipeline.faults[0].affected > 100
    harness = GatewayHarness(ring, mosquitto, tmp_path, "outage-broker")
    publisher = MqttPublisher(mosquitto.url, "outage-broker-pub")
    try:
        stats = Replayer(publisher, handlers={"broker.stop": mosquitto.stop,
                                              "broker.start": mosquitto.start}).run(stream)
    finally:
        publisher.close()
    assert stats.controls == ["broker.stop", "broker.start"]
    assert harness.gateway.ingest.wait_connected(40)  # paho reconnects by itself
    harness.settle(len(frames))
    assert harness.gateway is None and harness.accepted == len(frames)
    assert stored(harness.store_path) == readings(frames)


@pytest.mark.services
def test_a_gateway_outage_in_the_stream_loses_nothing(recording, mosquitto, tmp_path):
    path, ring = recording
    start_s = int(time.time()) - 3600
    pipeline = FaultPipeline(["gateway_outage:at_s=300,duration_s=600"], 1, ring)
    stream = list(pipeline.apply(rebase(RecordingReader(path), start_s, ring)))
    frames = [m for m in stream if not m.is_control]
    harness = GatewayHarness(ring, mosquitto, tmp_path, "outage-gateway")
    publisher = MqttPublisher(mosquitto.url, "outage-gateway-pub")
    try:
        stats = Replayer(publisher, handlers={"gateway.stop": harness.stop,
                                              "gateway.start": harness.start}).run(stream)
    finally:
        publisher.close()
    assert stats.controls == ["gateway.stop", "gateway.start"]
    assert pipeline.faults[0].affected > 100
    harness.settle(len(frames))
    # frames the stopping gateway stored but could no longer ack come again: `replay`
    assert harness.accepted == len(frames) and set(harness.rejected) <= {"replay"}
    assert stored(harness.store_path) == readings(frames)
