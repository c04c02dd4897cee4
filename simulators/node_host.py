"""A node's hardware on a host: run the real firmware (firmware/node.py and friends) in
CPython, on a simulated clock, against emulated parts and a real MQTT broker.

In:  a directory for the node's flash, a seed, and whichever emulated parts the node kind
needs (simulators/emulators/: BLE population, BME680, PM sensor, I2S).  Out: a
`firmware.hal.Hardware` (see its header for the contract).  Pieces:

- `SimClock`: MicroPython ticks (30-bit, wrapping: start near the wrap to test it) that
  advance only in sleep_ms(), which also drives every emulator registered with
  on_advance() (BLE advertisements "arrive" during the sleep, as IRQs do on a board).  The
  wall clock is unset until set_time(); `true_time()` is the simulation's own Unix time,
  which the emulated NTP server and gateway hand out.
- `SeededRng`: urandom(n) from SHA-256 in counter mode over a seed (reproducible runs), or
  from os.urandom when the seed is None.
- `RecordingWdt`: counts feeds and the longest gap between two (simulated ms).
- `MemoryBroker`: an in-process stand-in for a broker with fault switches (down, refuse,
  fail a publish), and `MemoryBroker.client` with umqtt.simple's interface.
- `paho_client`: the same interface over paho-mqtt, so a node publishes to a real
  Mosquitto (TLS with a client certificate when the config asks for it).
- `HostNet`: the `net` part: Wi-Fi always joined (or not: `link_up`), NTP from the
  simulation's clock (or failing: `ntp_ok`), MQTT clients from a factory.
- `enrol()`: writes config.json and node.key as the provisioning tool would.

The parts above `paho_client` use only what MicroPython has, so tests/firmware also run the
node under real MicroPython with this same clock, RNG, watchdog and broker (place this
file under /lib/simulators/ there).  On failure: the fakes raise OSError exactly where a
board's link would.  RAM/CPU: trivial; paho runs one network thread per client.
"""

import binascii
import hashlib
import json
import time as _time

from firmware import hal

TICKS_PERIOD = 1 << 30  # MicroPython's ticks_ms() period (py/mphal: MICROPY_PY_TIME_TICKS)
_TICKS_MASK = TICKS_PERIOD - 1
_TICKS_HALF = TICKS_PERIOD // 2
# Simulated wall time starts an hour before the current hour: recent enough that a gateway
# (whose buffer evicts readings older than its max age) and a store with a retention
# period take what the node sends, and the same for every run within an hour.
DEFAULT_UNIX_START = int(_time.time()) // 3600 * 3600 - 3600
ECONNREFUSED = 111
ECONNRESET = 104
ETIMEDOUT = 110


class SimClock:
    """Simulated time.  `elapsed_ms` counts from creation and never wraps; ticks do."""

    def __init__(self, start_ticks=0, unix_start=DEFAULT_UNIX_START):
        self._tick0 = start_ticks & _TICKS_MASK
        self.elapsed_ms = 0
        self.unix_start = unix_start
        self._set_unix = None  # wall clock as set by set_time(), and when
        self._set_at_ms = 0
        self._listeners = []
        self.sleeps = 0

    # -- the hal clock contract ------------------------------------------------------------

    def ticks_ms(self):
        return (self._tick0 + self.elapsed_ms) & _TICKS_MASK

    def ticks_add(self, ticks, delta):
        return (ticks + delta) & _TICKS_MASK

    def ticks_diff(self, a, b):
        return ((a - b + _TICKS_HALF) & _TICKS_MASK) - _TICKS_HALF

    def sleep_ms(self, ms):
        self.sleeps += 1
        self.advance(ms)

    def time(self):
        if self._set_unix is None:
            return None
        return self._set_unix + (self.elapsed_ms - self._set_at_ms) // 1000

    def set_time(self, unix_s):
        self._set_unix = int(unix_s)
        self._set_at_ms = self.elapsed_ms

    # -- for emulators and tests -----------------------------------------------------------

    def on_advance(self, listener):
        """listener(t0_ms, t1_ms) is called for every stretch of simulated time, in order,
        before the clock shows t1 (elapsed ms, not ticks)."""
        self._listeners.append(listener)

    def advance(self, ms):
        if ms < 0:
            raise ValueError(f"time cannot go back ({ms} ms)")
        t0 = self.elapsed_ms
        t1 = t0 + ms
        for listener in self._listeners:
            listener(t0, t1)
        self.elapsed_ms = t1

    def true_time(self):
        """The simulation's Unix time now (what NTP and the gateway know)."""
        return self.unix_start + self.elapsed_ms // 1000


class SeededRng:
    """hal rng: SHA-256(seed || block number) blocks, or os.urandom when seed is None."""

    def __init__(self, seed=None):
        self._seed = None if seed is None else str(seed).encode()
        self._block = 0
        self._pool = b""
        self.calls = 0

    def urandom(self, n):
        self.calls += 1
        if self._seed is None:
            import os

            return os.urandom(n)
        while len(self._pool) < n:
            self._pool += hashlib.sha256(self._seed + b"/" + str(self._block).encode()).digest()
            self._block += 1
        out, self._pool = self._pool[:n], self._pool[n:]
        return out


class RecordingWdt:
    def __init__(self, clock, timeout_ms=30000):
        self._clock = clock
        self.timeout_ms = timeout_ms
        self.feeds = 0
        self.max_gap_ms = 0
        self._last = clock.elapsed_ms

    def feed(self):
        now = self._clock.elapsed_ms
        gap = now - self._last
        if gap > self.max_gap_ms:
            self.max_gap_ms = gap
        self._last = now
        self.feeds += 1


class MemoryBroker:
    """Just enough of a broker: records QoS 1 publishes, queues downlink messages for
    subscribers, and fails on command."""

    def __init__(self):
        self.up = True
        self.published = []  # (topic, payload bytes, qos), in arrival order
        self.connects = 0
        self.fail_publishes = 0  # the next N publishes raise OSError (link drop)
        self.lose_pubacks = 0  # the next N publishes arrive, then raise (PUBACK lost)
        self.clients = []

    def client(self, client_id, host, port, keepalive_s, tls=None):
        c = MemoryMqttClient(self, client_id, host, port, keepalive_s, tls)
        self.clients.append(c)
        return c

    def deliver(self, topic, payload):
        """Send a message to every connected client subscribed to `topic` (exact match)."""
        for c in self.clients:
            if c.connected and topic in c.subscriptions:
                c.inbox.append((topic, bytes(payload)))

    def topics(self):
        return [t for t, _, _ in self.published]

    def payloads(self, topic=None):
        return [p for t, p, _ in self.published if topic is None or t == topic]


class MemoryMqttClient:
    """umqtt.simple's interface on a MemoryBroker; raises OSError like a dead socket."""

    def __init__(self, broker, client_id, host, port, keepalive_s, tls):
        self.broker = broker
        self.client_id = client_id
        self.host = host
        self.port = port
        self.keepalive_s = keepalive_s
        self.tls = tls
        self.connected = False
        self.subscriptions = []
        self.inbox = []
        self.pings = 0
        self._cb = None

    def connect(self, clean_session=True):
        if not self.broker.up:
            raise OSError(ECONNREFUSED)
        self.connected = True
        self.broker.connects += 1
        return False

    def _alive(self):
        if not self.connected or not self.broker.up:
            self.connected = False
            raise OSError(ECONNRESET)

    def publish(self, topic, msg, retain=False, qos=0):
        self._alive()
        b = self.broker
        if b.fail_publishes:
            b.fail_publishes -= 1
            self.connected = False
            raise OSError(ECONNRESET)
        b.published.append((topic, bytes(msg), qos))
        if b.lose_pubacks:
            b.lose_pubacks -= 1
            self.connected = False
            raise OSError(ETIMEDOUT)

    def set_callback(self, f):
        self._cb = f

    def subscribe(self, topic, qos=0):
        self._alive()
        self.subscriptions.append(topic)

    def check_msg(self):
        self._alive()
        while self.inbox:
            topic, payload = self.inbox.pop(0)
            if self._cb is not None:
                self._cb(topic.encode(), payload)

    def ping(self):
        self._alive()
        self.pings += 1

    def disconnect(self):
        self.connected = False


class HostNet:
    """hal net: the IP link of a host node."""

    def __init__(self, clock, mqtt_factory):
        self._clock = clock
        self._factory = mqtt_factory
        self.link_up = True
        self.ntp_ok = True
        self.ntp_offset_s = 0
        self.joined = None  # ssid of the last connect()
        self.clients = []
        self.ntp_requests = 0

    def connect(self, ssid, password):
        self.joined = ssid

    def isconnected(self):
        return self.link_up

    def ntp_time(self, host):
        self.ntp_requests += 1
        if not self.link_up or not self.ntp_ok:
            raise OSError(ETIMEDOUT)
        return self._clock.true_time() + self.ntp_offset_s

    def mqtt_client(self, client_id, host, port, keepalive_s, tls):
        if not self.link_up:
            raise OSError(ECONNREFUSED)
        c = self._factory(client_id, host, port, keepalive_s, tls)
        self.clients.append(c)
        return c


def host_free_heap():
    import gc

    mem_free = getattr(gc, "mem_free", None)
    return mem_free() if mem_free is not None else 0  # CPython has no MicroPython heap


def host_hardware(root, clock=None, seed=1, mqtt=None, ble=None, i2c=None, uart=None,
                  i2s=None, wdt_timeout_ms=30000, reset_cause=1, name="host"):
    """A Hardware for a node on this host.  `mqtt`: a MemoryBroker, or a factory
    (client_id, host, port, keepalive_s, tls) -> client such as paho_client; `ble` etc.:
    emulated parts (they may also be set on the result afterwards)."""
    clock = clock if clock is not None else SimClock()
    broker = mqtt if mqtt is not None else MemoryBroker()
    factory = broker.client if isinstance(broker, MemoryBroker) else broker
    hw = hal.Hardware(
        clock=clock, flash=hal.Flash(root), wdt=RecordingWdt(clock, wdt_timeout_ms),
        rng=SeededRng(seed), i2c=i2c, uart=uart, i2s=i2s, ble=ble,
        net=HostNet(clock, factory), reset_cause=reset_cause, free_heap=host_free_heap,
        name=name,
    )
    hw.broker = broker if isinstance(broker, MemoryBroker) else None
    return hw


def enrol(flash, node_id, kind, zone, site, key, broker=None, **sections):
    """Write config.json and node.key (hex) to `flash` (a hal.Flash or a root path), as
    the provisioning tool does at enrolment.  `sections` are further top-level keys
    (wifi, time, intervals, sampler, board, key_id).  Returns the config document."""
    if isinstance(flash, str):
        flash = hal.Flash(flash)
    doc = {
        "version": 1,
        "node_id": f"{node_id:08x}" if isinstance(node_id, int) else node_id,
        "kind": kind,
        "zone": zone,
        "site": site,
        "broker": broker if broker is not None else {"host": "127.0.0.1"},
    }
    doc.update(sections)
    flash.replace("node.key", binascii.hexlify(key) + b"\n")
    flash.replace("config.json", json.dumps(doc).encode())
    return doc


# -- CPython only below: paho-mqtt ---------------------------------------------------------


def paho_client(client_id, host, port, keepalive_s, tls=None):
    """A PahoMqttClient: the hal mqtt_client factory for a real broker."""
    return PahoMqttClient(client_id, host, port, keepalive_s, tls)


class PahoMqttClient:
    """umqtt.simple's interface over paho-mqtt.  Every fault is an OSError, and a lost
    connection stays lost (paho's own reconnecting is cut off): reconnecting is the
    firmware uplink's job, as on a board."""

    def __init__(self, client_id, host, port, keepalive_s, tls=None, timeout_s=5.0):
        import threading

        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.host = host
        self.port = port
        self.keepalive_s = keepalive_s or 60
        self.tls = tls
        self.timeout_s = timeout_s
        self._c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                              clean_session=True)
        if tls is not None:
            self._c.tls_set(ca_certs=tls["ca"], certfile=tls.get("cert"),
                            keyfile=tls.get("key"))
        self._connack = threading.Event()
        self._connect_rc = None
        self._dead = False
        self._lock = threading.Lock()
        self._inbox = []
        self._cb = None
        self._c.on_connect = self._on_connect
        self._c.on_disconnect = self._on_disconnect
        self._c.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self._connect_rc = reason_code
        self._connack.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._dead = True
        self._connack.set()

    def _on_message(self, client, userdata, message):
        with self._lock:
            self._inbox.append((message.topic, bytes(message.payload)))

    def connect(self, clean_session=True):
        try:
            self._c.connect(self.host, self.port, self.keepalive_s)
        except OSError:
            raise
        except Exception as exc:  # paho raises other types for some socket faults
            raise OSError(ECONNREFUSED, str(exc)) from exc
        self._c.loop_start()
        if not self._connack.wait(self.timeout_s) or self._dead:
            self.disconnect()
            raise OSError(ETIMEDOUT, "no CONNACK")
        rc = self._connect_rc
        if rc is None or rc.is_failure:
            self.disconnect()
            raise OSError(ECONNREFUSED, f"CONNACK {rc}")
        return False

    def publish(self, topic, msg, retain=False, qos=0):
        if self._dead:
            raise OSError(ECONNRESET, "connection lost")
        info = self._c.publish(topic, bytes(msg), qos=qos, retain=retain)
        if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
            self._dead = True
            raise OSError(ECONNRESET, f"publish refused (rc {info.rc})")
        try:
            info.wait_for_publish(self.timeout_s)
        except (RuntimeError, ValueError) as exc:
            self._dead = True
            raise OSError(ECONNRESET, str(exc)) from exc
        if not info.is_published():
            self._dead = True
            raise OSError(ETIMEDOUT, "no PUBACK")

    def set_callback(self, f):
        self._cb = f

    def subscribe(self, topic, qos=0):
        if self._dead:
            raise OSError(ECONNRESET, "connection lost")
        rc, _ = self._c.subscribe(topic, qos)
        if rc != self._mqtt.MQTT_ERR_SUCCESS:
            raise OSError(ECONNRESET, f"subscribe refused (rc {rc})")

    def check_msg(self):
        if self._dead:
            raise OSError(ECONNRESET, "connection lost")
        with self._lock:
            inbox, self._inbox = self._inbox, []
        for topic, payload in inbox:
            if self._cb is not None:
                self._cb(topic.encode(), payload)

    def ping(self):
        if self._dead:
            raise OSError(ECONNRESET, "connection lost")

    def disconnect(self):
        self._dead = True
        try:
            self._c.disconnect()
        finally:
            self._c.loop_stop()
