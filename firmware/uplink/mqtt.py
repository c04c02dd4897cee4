# The MQTT uplink (docs/protocol.md §5.1), in two layers as in Peter Hinch's mqtt_as:
# the inner client speaks MQTT and raises OSError on any link fault; this outer layer owns
# reconnecting, the offline ring buffer and the downlink.
#
# In:  frames from node.py (send()), and service(now_ms, budget_ms) calls from its loop.
# Out: each frame published once to dordt/v1/<zone>/<node>/up at QoS 1, not retained, in
# the order made (§6.1: buffered frames leave oldest first); a frame leaves the ring only
# after its PUBACK.  Time messages from the gateway (below) go to on_time(unix_s).
# On failure: any exception from the client marks the link down; the frame stays at the
# head of the ring; a reconnect is tried after a back-off (retry_min_s doubling to
# retry_max_s, plus up to 25 % jitter so the nodes of a gateway do not return in step).
# While down, new frames wait in the ring; when it is full the oldest are dropped and
# counted (`dropped`, reported as the dropped_frames status metric).  A PUBACK lost in a
# fault means the frame is sent again: the gateway refuses the copy as a replay (§5.1).
#
# The injected client (hal: net.mqtt_client(...)) has umqtt.simple's interface:
#   connect(); publish(topic, msg, qos=1); disconnect()       -- required
#   set_callback(f(topic, msg)); subscribe(topic, qos); check_msg(); ping()  -- if present
# and raises OSError (or umqtt's MQTTException) on any fault.  TLS is the client's job:
# the broker config's tls file paths are resolved on flash and passed to mqtt_client().
#
# Downlink time message (topic dordt/v1/<zone>/<node>/down, QoS 0 or 1, never retained),
# sent by the gateway when a frame arrives with TIME_UNSYNCED (§3), and whenever it likes:
#
#   offset size field
#   0      1    type     0x81: downlink time message, version 1 (never a frame: §2.3 #3)
#   1      1    key id   the node key that made the tag (§4)
#   2      4    node id  u32 BE, the addressee
#   6      4    counter  u32 BE, the highest frame counter the gateway has accepted from
#                        the node (§6.2)
#   10     4    time     u32 BE, Unix seconds (UTC) at the gateway when it sent this
#   14     16   tag      HMAC-SHA256(node key, bytes 0..13), first 16 bytes (as §4)
#   30 bytes in all.
#
# The node accepts it only when every field checks: length 30, type 0x81, its own node id
# and key id, the tag (constant time), a time after 2020-01-01, and a counter at or above
# the first counter of this boot and of the last time message it accepted.  A node jumps
# its counter ahead at every boot (§6.1), so a message made before this boot (a replay, or
# one delayed in the broker) carries a lower counter and is ignored.
#
# Over-the-air updates (docs/ota.md §3): the node subscribes to .../ota/offer and
# .../ota/chunk (QoS 1) and hands each message to on_ota(suffix, msg) ("offer" or "chunk");
# publish_ota(suffix, body) sends its `get` and `state` messages (QoS 1) straight away,
# beside the ring (they are not frames and need no order with them), and returns False
# while the link is down (firmware/ota.py asks again later).
#
# RAM: the ring's bytearray (broker.ring_bytes, default 8 KB) and the client's buffers.

import struct

from firmware import protocol
from firmware.uplink.ring import FrameRing

TIME_MSG_TYPE = 0x81
TIME_MSG_LEN = 30
_TIME_SIGNED = ">BBIII"  # type, key id, node id, counter, time: 14 bytes
_TIME_MIN_S = 1577836800  # 2020-01-01T00:00:00Z: anything earlier is a broken clock


def topic_down(zone, node_id):
    return "%s/%s/%s/down" % (protocol.TOPIC_ROOT, zone, protocol.node_name(node_id))


def topic_ota(zone, node_id, suffix=""):
    """dordt/v1/<zone>/<node>/ota/<suffix> (docs/ota.md §3)."""
    return "%s/%s/%s/ota/%s" % (protocol.TOPIC_ROOT, zone, protocol.node_name(node_id), suffix)


def encode_time(key, node_id, counter, unix_s, key_id=0):
    """The downlink time message (for the gateway, and for tests)."""
    signed = struct.pack(_TIME_SIGNED, TIME_MSG_TYPE, key_id, node_id, counter, unix_s)
    return signed + protocol.hmac_sha256(key, signed)[: protocol.TAG_LEN]


def decode_time(msg, key, node_id, key_id=0):
    """(counter, unix_s) from a valid time message for this node, else None."""
    if msg is None or len(msg) != TIME_MSG_LEN or msg[0] != TIME_MSG_TYPE:
        return None
    kind, kid, node, counter, unix_s = struct.unpack_from(_TIME_SIGNED, msg, 0)
    if kid != key_id or node != node_id:
        return None
    signed = bytes(msg[:14])
    if not protocol.equal_ct(protocol.hmac_sha256(key, signed)[: protocol.TAG_LEN],
                             bytes(msg[14:])):
        return None
    if unix_s < _TIME_MIN_S:
        return None
    return counter, unix_s


class MqttUplink:
    """Publishes frames over whatever client `net.mqtt_client()` makes; see the header."""

    def __init__(
        self, net, clock, broker, zone, node_id, key, key_id=0, first_counter=0, rng=None,
        wdt=None, on_time=None, tls_paths=None, retry_min_s=2, retry_max_s=300, on_ota=None,
    ):
        self._net = net
        self._clock = clock
        self._rng = rng
        self._wdt = wdt
        self._key = key
        self._key_id = key_id
        self._node_id = node_id
        self.topic = protocol.topic_up(zone, node_id)
        self.topic_down = topic_down(zone, node_id)
        self.topic_ota = topic_ota(zone, node_id)
        self.on_ota = on_ota  # f(suffix, msg) for offer and chunk messages (firmware/ota.py)
        self._host = broker["host"]
        self._port = broker["port"]
        self._client_id = broker["client_id"]
        self._keepalive_ms = broker["keepalive_s"] * 1000
        self._tls = tls_paths  # None, or {"ca": path, "cert": path, "key": path}
        self.ring = FrameRing(broker["ring_bytes"])
        self.on_time = on_time
        self._first_counter = first_counter
        self._time_counter = -1
        self._retry_min_ms = retry_min_s * 1000
        self._retry_max_ms = retry_max_s * 1000
        self._backoff_ms = self._retry_min_ms
        self._retry_at = clock.ticks_ms()
        self._last_tx = self._retry_at
        self._client = None
        self.connected = False
        self.connects = 0
        self.link_errors = 0
        self.sent = 0
        self.time_messages = 0
        self.last_error = None

    # -- what node.py calls ----------------------------------------------------------------

    @property
    def dropped(self):
        return self.ring.dropped

    def send(self, frame):
        """Queue a frame; it leaves in order, in service()."""
        self.ring.put(frame)

    def service(self, now_ms, budget_ms=0):
        """Bounded work: reconnect when due, publish queued frames (at least one, then
        more while `budget_ms` lasts), read the downlink, keep the session alive."""
        clock = self._clock
        if not self.connected:
            if clock.ticks_diff(now_ms, self._retry_at) < 0:
                return
            self._connect(now_ms)
            if not self.connected:
                return
        start = clock.ticks_ms()
        while len(self.ring):
            if not self._publish_oldest():
                return
            if self._wdt is not None:
                self._wdt.feed()  # a slow broker must not trip the watchdog mid-drain
            if clock.ticks_diff(clock.ticks_ms(), start) >= budget_ms:
                break
        self._poll_downlink()
        if self.connected and self._keepalive_ms:
            now = clock.ticks_ms()
            if clock.ticks_diff(now, self._last_tx) >= self._keepalive_ms // 2:
                self._ping(now)

    def wait_ms(self, now_ms):
        """How long the node may sleep before service() has work."""
        if not self.connected:
            return max(0, self._clock.ticks_diff(self._retry_at, now_ms))
        if len(self.ring):
            return 0
        if self._keepalive_ms:
            due = self._clock.ticks_diff(self._clock.ticks_add(self._last_tx,
                                                               self._keepalive_ms // 2), now_ms)
            return max(0, min(due, 1000))
        return 1000

    def publish_ota(self, suffix, body):
        """Publish an OTA message (docs/ota.md §3) now; False when the link is down."""
        client = self._client
        if not self.connected or client is None:
            return False
        try:
            client.publish(self.topic_ota + suffix, body, qos=1)
        except Exception as exc:
            self._down(self._clock.ticks_ms(), exc)
            return False
        self._last_tx = self._clock.ticks_ms()
        return True

    def poll(self):
        """Read one downlink message, if the link is up (firmware/ota.py, while it waits
        for a chunk)."""
        if self.connected:
            self._poll_downlink()

    def close(self):
        client, self._client = self._client, None
        self.connected = False
        if client is not None:
            try:
                client.disconnect()
            except Exception:
                pass

    # -- the link --------------------------------------------------------------------------

    def _connect(self, now_ms):
        net = self._net
        if net is None:
            self._down(now_ms, "no network interface")
            return
        try:
            if not net.isconnected():
                self._down(now_ms, "network not connected")
                return
            client = net.mqtt_client(self._client_id, self._host, self._port,
                                     self._keepalive_ms // 1000, self._tls)
            self._client = client
            if hasattr(client, "set_callback"):
                client.set_callback(self._on_message)
            client.connect()
            if hasattr(client, "subscribe"):
                client.subscribe(self.topic_down, 0)
                client.subscribe(self.topic_ota + "offer", 1)
                client.subscribe(self.topic_ota + "chunk", 1)
        except Exception as exc:  # OSError, umqtt's MQTTException: the link is down
            self._down(now_ms, exc)
            return
        self.connected = True
        self.connects += 1
        self._backoff_ms = self._retry_min_ms
        self._last_tx = self._clock.ticks_ms()
        if self.last_error is not None:
            print("uplink: connected to %s:%d after %s; %d frames buffered, %d dropped" % (
                self._host, self._port, self.last_error, len(self.ring), self.ring.dropped))
            self.last_error = None

    def _publish_oldest(self):
        client = self._client
        frame = self.ring.peek()
        if client is None or frame is None:
            return False
        try:
            client.publish(self.topic, frame, qos=1)
        except Exception as exc:
            self._down(self._clock.ticks_ms(), exc)
            return False
        self.ring.pop()
        self.sent += 1
        self._last_tx = self._clock.ticks_ms()
        return True

    def _poll_downlink(self):
        client = self._client
        if client is None or not hasattr(client, "check_msg"):
            return
        try:
            client.check_msg()
        except Exception as exc:
            self._down(self._clock.ticks_ms(), exc)

    def _ping(self, now_ms):
        client = self._client
        if client is None or not hasattr(client, "ping"):
            return
        try:
            client.ping()
            self._last_tx = now_ms
        except Exception as exc:
            self._down(now_ms, exc)

    def _down(self, now_ms, why):
        client, self._client = self._client, None
        was_up = self.connected
        self.connected = False
        self.link_errors += 1
        if client is not None:
            try:
                client.disconnect()
            except Exception:
                pass
        delay = self._backoff_ms
        if self._rng is not None:
            delay += (self._rng.urandom(1)[0] * delay) >> 10  # + 0..25 %
        self._retry_at = self._clock.ticks_add(now_ms, delay)
        self._backoff_ms = min(self._backoff_ms * 2, self._retry_max_ms)
        reason = _reason(why)
        if was_up or reason != self.last_error:
            print("uplink: %s; retry in %d s; %d frames buffered" % (
                reason, delay // 1000, len(self.ring)))
        self.last_error = reason

    def _on_message(self, topic, msg):
        if isinstance(topic, (bytes, bytearray)):
            topic = topic.decode()
        if topic != self.topic_down:
            if self.on_ota is not None and topic.startswith(self.topic_ota):
                self.on_ota(topic[len(self.topic_ota):], msg)
            return
        got = decode_time(msg, self._key, self._node_id, self._key_id)
        if got is None:
            return
        counter, unix_s = got
        if counter < self._first_counter or counter < self._time_counter:
            return  # made before this boot, or older than one already applied
        self._time_counter = counter
        self.time_messages += 1
        if self.on_time is not None:
            self.on_time(unix_s)


def _reason(why):
    if isinstance(why, str):
        return why
    if isinstance(why, OSError) and why.args:
        return "link fault (OSError %s)" % (why.args[0],)
    return "link fault (%s)" % type(why).__name__
