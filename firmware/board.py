# The real board behind hal.Hardware: ESP32-S3 (and Raspberry Pi Pico W) running
# MicroPython 1.27, from `machine`, `bluetooth`, `network`, `ntptime`, `os.urandom` and
# micropython-lib's umqtt.simple (frozen into the ESP32 images; install it with mip on a
# Pico W).  Every board import happens inside a function, so this module imports (and is
# smoke-tested) on a host; nothing here runs in the test suite.
#
# In:  the flash file system, the config's "board" section (pins, bus settings) and kind.
# Out: build() -> hal.Hardware with only the parts the node kind needs started:
#      air: I2C + UART; noise: I2S; crowd: BLE scanner.  Always: clock, flash, watchdog,
#      RNG, Wi-Fi station + NTP + MQTT.
# On failure: a bus that will not start is None (printed); the sampler reports the fault.
#
# RAM: the parts' own drivers (BLE stack, Wi-Fi, I2S DMA buffer: board.i2s_ibuf bytes).
#
# Board section of config.json (all optional): {"pins": {"i2c_sda": 8, "i2c_scl": 9,
# "uart_tx": 17, "uart_rx": 18, "i2s_sck": 4, "i2s_ws": 5, "i2s_sd": 6}, "i2c_hz": 100000,
# "uart_baud": 9600, "i2s_rate_hz": 32000, "i2s_bits": 32, "i2s_ibuf": 20000}.

import sys
import time

from firmware import config, hal

ROOT = "/"  # config.json, node.key and counter live at the root of the node's flash
WDT_TIMEOUT_MS = 30000
RP2_WDT_MAX_MS = 8388  # RP2040 datasheet §4.7: the watchdog counter is 24 bits of 0.5 us
SOCKET_TIMEOUT_S = 10  # every MQTT read/write gives up after this (then OSError)
_UNIX_AT_2000 = 946684800  # ports whose time.time() counts from 2000-01-01

# ESP32-S3-DevKitC-1 wiring (hardware/data/boards/esp32-s3-devkitc-1.toml); a Pico W's
# pins come from the config written at enrolment.
DEFAULT_PINS = {
    "esp32": {"i2c_sda": 8, "i2c_scl": 9, "uart_tx": 17, "uart_rx": 18, "i2s_sck": 4,
              "i2s_ws": 5, "i2s_sd": 6},
}

# bluetooth.BLE IRQ events (MicroPython docs, bluetooth module, "Event handling")
_IRQ_SCAN_RESULT = 5
_IRQ_SCAN_DONE = 6


def _epoch_offset():
    return _UNIX_AT_2000 if time.gmtime(0)[0] == 2000 else 0


class BoardClock:
    """ticks from `time`; wall time from the RTC once NTP or the gateway has set it."""

    def __init__(self):
        self._offset = _epoch_offset()
        self._synced = False

    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_add(self, ticks, delta):
        return time.ticks_add(ticks, delta)

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    def sleep_ms(self, ms):
        time.sleep_ms(ms)

    def time(self):
        # The RTC survives a soft reset but starts at the epoch after power-on; trust it
        # only once this boot has set it.
        if not self._synced:
            return None
        return time.time() + self._offset

    def set_time(self, unix_s):
        import machine

        t = time.gmtime(unix_s - self._offset)
        # RTC.datetime: (year, month, day, weekday, hours, minutes, seconds, subseconds)
        machine.RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))
        self._synced = True


class Watchdog:
    def __init__(self, timeout_ms):
        import machine

        if sys.platform == "rp2":
            timeout_ms = min(timeout_ms, RP2_WDT_MAX_MS)
        self.timeout_ms = timeout_ms
        self._wdt = machine.WDT(timeout=timeout_ms)

    def feed(self):
        self._wdt.feed()


class Rng:
    """os.urandom: the ESP32's hardware RNG (true random while the radio is on, ESP32-S3
    TRM §24); on RP2040, MicroPython's ring-oscillator-based source."""

    def urandom(self, n):
        import os

        return os.urandom(n)  # type: ignore  # absent from the stubs' os, present on ports


class BleScanner:
    """Passive scanning: the node listens and never sends scan requests (privacy)."""

    def __init__(self, interval_us=100000, window_us=90000):
        import bluetooth

        self._ble = bluetooth.BLE()
        self._interval_us = interval_us
        self._window_us = window_us  # < interval: leaves the radio to Wi-Fi in between
        self._cb = None
        self._on = False

    def start(self, callback):
        self._cb = callback
        self._on = True
        self._ble.active(True)
        self._ble.irq(self._irq)
        self._scan()

    def stop(self):
        self._on = False
        self._ble.gap_scan(None)  # pyright: ignore[reportArgumentType]  # None stops (docs)

    def _scan(self):
        # duration 0: scan until stopped; active=False: passive
        self._ble.gap_scan(0, self._interval_us, self._window_us, False)

    def _irq(self, event, data):
        if event == _IRQ_SCAN_RESULT:
            cb = self._cb
            if cb is not None:
                cb(data[1], data[3])  # (addr_type, addr, adv_type, rssi, adv_data)
        elif event == _IRQ_SCAN_DONE and self._on:
            self._scan()


class UmqttClient:
    """umqtt.simple with a socket timeout on every operation, so a dead link raises
    OSError instead of blocking until the watchdog resets the node (mqtt_as's concern)."""

    def __init__(self, client_id, host, port, keepalive_s, tls, timeout_s=SOCKET_TIMEOUT_S):
        from umqtt.simple import MQTTClient

        ssl = _ssl_context(tls) if tls is not None else None
        self._timeout_s = timeout_s
        self._c = MQTTClient(client_id, host, port=port, keepalive=keepalive_s, ssl=ssl)

    def _guard(self):
        sock = self._c.sock
        if sock is not None:
            sock.settimeout(self._timeout_s)

    def connect(self):
        try:
            self._c.connect(timeout=self._timeout_s)
        except TypeError:  # umqtt.simple before 1.4 has no timeout argument
            self._c.connect()
        self._guard()

    def publish(self, topic, msg, qos=1):
        self._c.publish(topic, msg, qos=qos)

    def set_callback(self, f):
        self._c.set_callback(f)

    def subscribe(self, topic, qos=0):
        self._c.subscribe(topic, qos)

    def check_msg(self):
        try:
            self._c.check_msg()
        finally:
            self._guard()  # check_msg() leaves the socket blocking without a timeout

    def ping(self):
        self._c.ping()

    def disconnect(self):
        try:
            self._c.disconnect()
        finally:
            sock = self._c.sock
            if sock is not None:
                sock.close()


def _ssl_context(tls):
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=tls["ca"])
    if tls.get("cert"):
        ctx.load_cert_chain(tls["cert"], tls["key"])
    return ctx


class WifiNet:
    def __init__(self):
        import network

        self._wlan = network.WLAN(network.STA_IF)

    def connect(self, ssid, password):
        self._wlan.active(True)
        self._wlan.connect(ssid, password)  # returns at once; isconnected() tells

    def isconnected(self):
        return self._wlan.isconnected()

    def ntp_time(self, host):
        import ntptime

        ntptime.host = host
        return ntptime.time() + _epoch_offset()

    def mqtt_client(self, client_id, host, port, keepalive_s, tls):
        return UmqttClient(client_id, host, port, keepalive_s, tls)


def build(root=ROOT, wdt_timeout_ms=WDT_TIMEOUT_MS, kind=None, pins=None):
    """The board's Hardware, with the parts the configured node kind needs.  `kind` and
    `pins` override config.json (provisioning's self-test, before or after enrolment);
    `wdt_timeout_ms` None starts no watchdog (it cannot be stopped once started)."""
    import machine

    flash = hal.Flash(root)
    doc = config.peek(flash) or {}
    if kind is None:
        kind = doc.get("kind")
    board = doc.get("board")
    if not isinstance(board, dict):
        board = {}
    pins_used = dict(DEFAULT_PINS.get(sys.platform, {}))
    if isinstance(board.get("pins"), dict):
        pins_used.update(board["pins"])
    if pins:
        pins_used.update(pins)
    pins = pins_used
    i2c = uart = i2s = ble = None
    if kind == "air":
        i2c = _part("I2C", _i2c, pins, board)
        uart = _part("UART", _uart, pins, board)
    elif kind == "noise":
        i2s = _part("I2S", _i2s, pins, board)
    elif kind == "crowd":
        ble = _part("BLE", lambda p, b: BleScanner(), pins, board)
    net = _part("Wi-Fi", lambda p, b: WifiNet(), pins, board)
    return hal.Hardware(
        clock=BoardClock(), flash=flash,
        wdt=Watchdog(wdt_timeout_ms) if wdt_timeout_ms else None, rng=Rng(), i2c=i2c,
        uart=uart, i2s=i2s, ble=ble, net=net, reset_cause=machine.reset_cause(),
        name=sys.platform,
    )


def _part(what, make, pins, board):
    try:
        return make(pins, board)
    except Exception as exc:  # a missing pin (KeyError) or a bus that will not start
        print("board: %s not started (%s: %s)" % (what, type(exc).__name__, exc))
        return None


def _i2c(pins, board):
    from machine import I2C, Pin

    return I2C(0, scl=Pin(pins["i2c_scl"]), sda=Pin(pins["i2c_sda"]),
               freq=board.get("i2c_hz", 100000))


def _uart(pins, board):
    from machine import UART

    return UART(1, baudrate=board.get("uart_baud", 9600), tx=pins["uart_tx"],
                rx=pins["uart_rx"], timeout=100)


def _i2s(pins, board):
    from machine import I2S, Pin

    return I2S(0, sck=Pin(pins["i2s_sck"]), ws=Pin(pins["i2s_ws"]), sd=Pin(pins["i2s_sd"]),
               mode=I2S.RX, bits=board.get("i2s_bits", 32), format=I2S.MONO,
               rate=board.get("i2s_rate_hz", 32000), ibuf=board.get("i2s_ibuf", 20000))
