"""Replay and capture: Message streams to and from an MQTT broker.

In:  a Message stream (a recording, a generator, a fault pipeline) and a broker.  Out:
the frames published at the recorded pace times `speed` (or as fast as the broker takes
them), with control events handed to the harness; or, the other way, everything a broker
carries captured into a recording.

- `rebase()` shifts a stream to start at a given time and re-signs the frames for their
  new timestamps with the keyring's keys (a frame whose tag was bad stays exactly as bad:
  the tag's error is carried over); without keys the stream is replayed as recorded.
- `MqttPublisher` is a small MQTT 3.1.1 publisher (QoS 0 and 1; no subscriptions, no
  will, clean session) that pipelines PUBLISH packets and counts PUBACKs on a reader
  thread.  paho-mqtt's client tops out near 10,000 QoS 1 messages/s on one core here;
  replays of days of a city need more (bench/simulator_throughput.py measures both).
- `Replayer` paces and publishes; before a control event it waits until the broker has
  acknowledged everything sent, then calls the harness's handler ("broker.stop", ...),
  and reconnects after "broker.start".  Same stream, same start time: the same bytes, in
  the same order.
- `BrokerRecorder` subscribes to `dordt/v1/#` (paho) and writes what arrives to a
  recording, flushing a chunk every second so a crash loses at most that.

On failure: `ReplayError` (cannot connect, the broker went away, acks did not come) with
the broker's address and what to do.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from firmware import protocol
from fleet.keyring import Keyring
from simulators.framegen import FrameSigner
from simulators.recording import CONTROL, Message, RecordingWriter

CAPTURE_TOPIC = protocol.TOPIC_ROOT + "/#"


class ReplayError(RuntimeError):
    """The broker could not be reached or stopped answering."""


# -- re-basing ---------------------------------------------------------------------------------


def rebase(source: Iterable[Message], start_s: int | None, keyring: Keyring | None,
           counter_shift: int = 0) -> Iterator[Message]:
    """The stream moved so that its first message is at `start_s` (Unix seconds; None: no
    move).  Frame timestamps move by the same whole seconds and, with `counter_shift`,
    counters by that much; each changed frame is signed again with its node's key from
    `keyring`.  Frames of nodes without a key, frames that are not version-1 frames, and
    frames without wall-clock time (TIME_UNSYNCED) keep their bytes."""
    signers: dict[tuple[int, int], FrameSigner | None] = {}
    shift_s: int | None = None
    for msg in source:
        if shift_s is None:
            shift_s = 0 if start_s is None else int(start_s) - msg.t_ms // 1000
        if msg.qos == CONTROL:
            yield msg._replace(t_ms=msg.t_ms + shift_s * 1000)
            continue
        payload = msg.payload
        if keyring is not None and (shift_s or counter_shift) and len(payload) >= (
                protocol.MIN_FRAME) and payload[0] == protocol.VERSION:
            key = (int.from_bytes(payload[4:8], "big"), payload[3])
            signer = signers.get(key, False)
            if signer is False:
                entry = keyring.get(key[0])
                k = entry.keys.get(key[1]) if entry else None
                signer = signers[key] = FrameSigner(k, key[1]) if k else None
            if signer is not None:
                payload = _moved(payload, signer, shift_s, counter_shift)
        yield Message(msg.t_ms + shift_s * 1000, msg.topic, payload, msg.qos, msg.retain)


def _moved(payload: bytes, signer: FrameSigner, shift_s: int, counter_shift: int) -> bytes:
    body = bytearray(payload[:-protocol.TAG_LEN])
    if shift_s and not body[2] & protocol.FLAG_TIME_UNSYNCED:
        ts = int.from_bytes(body[12:16], "big") + shift_s
        if not 0 <= ts <= protocol.U32_MAX:
            return payload
        body[12:16] = ts.to_bytes(4, "big")
    if counter_shift:
        counter = int.from_bytes(body[8:12], "big") + counter_shift
        if not 0 <= counter <= protocol.U32_MAX:
            return payload
        body[8:12] = counter.to_bytes(4, "big")
    old_tag = payload[-protocol.TAG_LEN:]
    error = bytes(a ^ b for a, b in zip(old_tag, signer.tag(payload[:-protocol.TAG_LEN])))
    tag = signer.tag(body)
    if any(error):
        tag = bytes(a ^ b for a, b in zip(tag, error))
    return bytes(body) + tag


# -- publishing ----------------------------------------------------------------------------


def _remaining_length(n: int) -> bytes:
    """MQTT 3.1.1 §2.2.3: the remaining length, 7 bits per byte, low group first."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class MqttPublisher:
    """Publishes over one MQTT 3.1.1 connection (clean session, keep-alive off).

    publish() queues a PUBLISH packet; packets go out in batches (`send()` or when 64 KiB
    are queued).  QoS 1 packet ids run 1..65535; at most `max_inflight` may be unacked, so
    an id is never reused while in flight (Mosquitto acks in order).  wait_acked() blocks
    until every QoS 1 message sent so far is acknowledged.  Not thread-safe: one thread
    publishes, the reader thread only counts acks."""

    def __init__(self, broker_url: str, client_id: str = "dordt-replay",
                 max_inflight: int = 20000, connect_timeout_s: float = 10.0):
        from gateway.ingest.mqtt import parse_broker_url

        self.url = broker_url
        self.host, self.port = parse_broker_url(broker_url)
        self.client_id = client_id
        self.max_inflight = max_inflight
        self.connect_timeout_s = connect_timeout_s
        self.sent = 0
        self.sent_qos1 = 0
        self.acked = 0
        self._packet_id = 0
        self._topics: dict[str, bytes] = {}
        self._queue: list[bytes] = []
        self._queued = 0
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._ack_event = threading.Condition()
        self._error: str | None = None
        self.connect()

    # -- connection ------------------------------------------------------------------------

    def connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout_s)
        except OSError as exc:
            raise ReplayError(f"cannot connect to the broker at {self.url}: {exc}; is it "
                              "running?") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cid = self.client_id.encode()
        # §3.1: protocol name "MQTT", level 4, flags 0x02 (clean session), keep alive 0
        variable = b"\x00\x04MQTT\x04\x02\x00\x00" + struct.pack(">H", len(cid)) + cid
        try:
            sock.sendall(b"\x10" + _remaining_length(len(variable)) + variable)
            connack = _recv_exact(sock, 4)
        except OSError as exc:
            sock.close()
            raise ReplayError(f"the broker at {self.url} closed the connection: {exc}") from None
        if connack[0] != 0x20 or connack[3] != 0:
            sock.close()
            raise ReplayError(f"the broker at {self.url} refused the connection (CONNACK "
                              f"code {connack[3]})")
        sock.settimeout(None)
        self._sock = sock
        self._error = None
        self._reader = threading.Thread(target=self._read, args=(sock,), name="replay-acks",
                                        daemon=True)
        self._reader.start()

    def _read(self, sock: socket.socket) -> None:
        buf = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError as exc:
                data = b""
                self._error = str(exc)
            if not data:
                with self._ack_event:
                    self._error = self._error or "connection closed by the broker"
                    self._ack_event.notify_all()
                return
            buf += data
            n = 0
            pos = 0
            while len(buf) - pos >= 2:
                length = buf[pos + 1]  # PUBACK, PINGRESP: remaining length < 128
                if len(buf) - pos < 2 + length:
                    break
                if buf[pos] == 0x40:
                    n += 1
                pos += 2 + length
            buf = buf[pos:]
            if n:
                with self._ack_event:
                    self.acked += n
                    self._ack_event.notify_all()

    def reconnect(self, timeout_s: float = 30.0) -> None:
        """Connect again (after a broker restart), retrying until `timeout_s`."""
        self.disconnect()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.connect()
                return
            except ReplayError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.sendall(b"\xe0\x00")  # DISCONNECT
            except OSError:
                pass
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        # what was in flight on the old connection is gone with it
        self.sent_qos1 = self.acked
        self._queue.clear()
        self._queued = 0

    close = disconnect

    # -- publishing ------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        name = self._topics.get(topic)
        if name is None:
            raw = topic.encode()
            name = self._topics[topic] = struct.pack(">H", len(raw)) + raw
        if qos:
            if self.sent_qos1 - self.acked >= self.max_inflight:
                self.send()
                self._wait(lambda: self.sent_qos1 - self.acked < self.max_inflight // 2, 30)
            self._packet_id = self._packet_id % 65535 + 1
            body = name + struct.pack(">H", self._packet_id) + payload
            self.sent_qos1 += 1
        else:
            body = name + payload
        header = 0x30 | (min(qos, 1) << 1) | (1 if retain else 0)
        packet = bytes((header,)) + _remaining_length(len(body)) + body
        self._queue.append(packet)
        self._queued += len(packet)
        self.sent += 1
        if self._queued >= 65536:
            self.send()

    def send(self) -> None:
        """Write the queued packets to the socket."""
        if not self._queue:
            return
        if self._sock is None:
            raise ReplayError(f"not connected to the broker at {self.url}")
        data = b"".join(self._queue)
        self._queue.clear()
        self._queued = 0
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise ReplayError(f"lost the broker at {self.url} while publishing: {exc}") from None

    def wait_acked(self, timeout_s: float = 30.0) -> bool:
        """Send what is queued and wait until every QoS 1 message is acknowledged."""
        self.send()
        return self._wait(lambda: self.acked >= self.sent_qos1, timeout_s)

    def _wait(self, done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._ack_event:
            while not done():
                if self._error:
                    raise ReplayError(f"lost the broker at {self.url}: {self._error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._ack_event.wait(min(left, 0.5))
        return True


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise OSError("connection closed")
        out += chunk
    return out


class ListSink:
    """A publisher that keeps what it is given, for tests: (topic, payload, qos)."""

    def __init__(self):
        self.messages: list[tuple[str, bytes, int]] = []
        self.sent = 0

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.messages.append((topic, payload, qos))
        self.sent += 1

    def send(self) -> None:
        pass

    def wait_acked(self, timeout_s: float = 30.0) -> bool:
        return True

    def reconnect(self, timeout_s: float = 30.0) -> None:
        pass

    def disconnect(self) -> None:
        pass

    close = disconnect


# -- the replayer ------------------------------------------------------------------------------


@dataclass
class ReplayStats:
    published: int = 0
    controls: list[str] = field(default_factory=list)
    skipped_controls: list[str] = field(default_factory=list)
    first_ms: int | None = None
    last_ms: int | None = None
    elapsed_s: float = 0.0

    @property
    def rate_per_s(self) -> float:
        return self.published / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def simulated_s(self) -> float:
        if self.first_ms is None or self.last_ms is None:
            return 0.0
        return (self.last_ms - self.first_ms) / 1000


class Replayer:
    """Publishes a stream to `sink` (MqttPublisher or ListSink).

    `speed`: None for as fast as possible, else the factor on the recorded pace (1 real
    time, 10 ten times faster).  `handlers`: control action -> callable, e.g.
    {"broker.stop": mosquitto.stop, "broker.start": mosquitto.start}; an action without a
    handler is skipped and listed in `stats.skipped_controls`.  `limit`: stop after that
    many messages; `deadline_s`: stop after that many seconds of wall time."""

    def __init__(self, sink, speed: float | None = None,
                 handlers: dict[str, Callable[[], object]] | None = None,
                 on_progress: Callable[[ReplayStats], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0 (or None for as fast as possible), got {speed}")
        self.sink = sink
        self.speed = speed
        self.handlers = handlers or {}
        self.on_progress = on_progress
        self.clock = clock
        self.sleep = sleep
        self.stats = ReplayStats()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self, source: Iterable[Message], limit: int | None = None,
            deadline_s: float | None = None) -> ReplayStats:
        stats = self.stats
        start = self.clock()
        next_progress = start + 0.25
        publish = self.sink.publish
        for msg in source:
            if self._stop.is_set() or (limit is not None and stats.published >= limit):
                break
            now = self.clock()
            if deadline_s is not None and now - start > deadline_s:
                break
            if stats.first_ms is None:
                stats.first_ms = msg.t_ms
            stats.last_ms = msg.t_ms
            if self.speed is not None:
                due = start + (msg.t_ms - stats.first_ms) / 1000 / self.speed
                if due > now:
                    self.sink.send()
                    while due > now and not self._stop.is_set():
                        self.sleep(min(due - now, 0.25))
                        now = self.clock()
                        self._progress(start, now)
            if msg.qos == CONTROL:
                self._control(msg)
                continue
            publish(msg.topic, msg.payload, msg.qos, msg.retain)
            stats.published += 1
            if now >= next_progress:
                next_progress = now + 0.25
                self._progress(start, now)
        self.sink.send()
        if not self.sink.wait_acked(60):
            raise ReplayError("the broker did not acknowledge every message within 60 s")
        stats.elapsed_s = self.clock() - start
        if self.on_progress:
            self.on_progress(stats)
        return stats

    def _progress(self, start: float, now: float) -> None:
        if self.on_progress:
            self.stats.elapsed_s = now - start
            self.on_progress(self.stats)

    def _control(self, msg: Message) -> None:
        action = msg.topic
        handler = self.handlers.get(action)
        if handler is None:
            self.stats.skipped_controls.append(action)
            return
        if not self.sink.wait_acked(60):
            raise ReplayError(f"before {action}: the broker did not acknowledge every message")
        if action == "broker.stop":
            self.sink.disconnect()
        handler()
        if action == "broker.start":
            self.sink.reconnect(30)
        self.stats.controls.append(action)


# -- capture ---------------------------------------------------------------------------------


class BrokerRecorder:
    """Captures every message on `topic` (default dordt/v1/#) into `writer`, with the
    local receive time.  run() until `duration_s`, `max_messages` or stop()."""

    def __init__(self, broker_url: str, writer: RecordingWriter, topic: str = CAPTURE_TOPIC,
                 client_id: str = "dordt-recorder", clock: Callable[[], float] = time.time):
        import paho.mqtt.client as mqtt

        from gateway.ingest.mqtt import parse_broker_url

        self.url = broker_url
        self.writer = writer
        self.topic = topic
        self.clock = clock
        self.count = 0
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        host, port = parse_broker_url(broker_url)
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *a: self.subscribed.set()
        self._client.on_message = self._on_message
        try:
            self._client.connect(host, port, keepalive=30)
        except OSError as exc:
            raise ReplayError(f"cannot connect to the broker at {broker_url}: {exc}") from None

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.writer.write(Message(int(self.clock() * 1000), message.topic,
                                      bytes(message.payload), message.qos,
                                      bool(message.retain)))
            self.count += 1

    def start(self, timeout_s: float = 10.0) -> bool:
        """Start the network thread; True once the subscription is in place."""
        self._client.loop_start()
        return self.subscribed.wait(timeout_s)

    def run(self, duration_s: float, max_messages: int | None = None,
            on_progress: Callable[[int], None] | None = None) -> int:
        end = time.monotonic() + duration_s
        next_flush = time.monotonic() + 1
        while not self._stop.is_set() and time.monotonic() < end:
            if max_messages is not None and self.count >= max_messages:
                break
            self._stop.wait(0.1)
            if time.monotonic() >= next_flush:
                next_flush += 1
                with self._lock:
                    self.writer.flush()
                if on_progress:
                    on_progress(self.count)
        return self.count

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        with self._lock:
            self.writer.close()
