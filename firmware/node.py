# Boot and main loop of every node kind.
#
# Boot: read and validate the config (config.py); continue the frame counter (counter.py,
# §6.1); start joining Wi-Fi; open the uplink (uplink/mqtt.py); start the sampler of the
# configured kind; send a status frame.  Loop: feed the watchdog, keep the wall clock set
# (NTP, or the gateway's time message), poll the sampler, turn each closed window into a
# signed frame (protocol.encode), send a status frame every `status_every` measurement
# frames, let the uplink publish, then sleep as long as the sampler and uplink allow.
#
# In:  a hal.Hardware.  Out: frames to the uplink; lines for people on the serial console.
# On failure:
# - config missing or invalid, counter unreadable or exhausted, sampler settings invalid:
#   SAFE MODE (node_safe.py).  The node prints why (each problem, naming the key and the
#   fix), keeps feeding the watchdog, re-reads the config every 30 s and starts when it is
#   valid.  It sends no frame in safe mode: it opens no uplink and takes no counter.
# - a sampler that fails to start (missing sensor module, bus error): error_count + 1,
#   status frames continue, the sampler is retried every minute.
# - a sampler that raises in poll(), or returns a value that is not a registry metric of
#   the node's kind or is outside its range: error_count + 1, that value is dropped (one
#   bad value must not cost the whole frame, which the gateway would refuse, §6.4 #10).
# - link faults: the uplink's business (buffer, reconnect, count drops).
#
# Frames made before the wall clock is set carry FLAG_TIME_UNSYNCED and seconds since
# boot (§3).  Status frames (FLAG_STATUS, window 0): uptime_s, free_heap_bytes,
# reset_cause, firmware_version, error_count, dropped_frames (§8, group "status").
#
# RAM: this module's state is a few dozen ints; frames are built once per window
# (one list and one bytes object); gc.collect() runs after every frame and in safe mode.
# Safe mode's code and messages are in node_safe.py, loaded on entering safe mode and
# dropped on leaving it (firmware.use_module / drop_module): a node in service never
# loads them.  The same for over-the-air updates (ota.py, docs/ota.md): loaded when the
# gateway offers a release (uplink on_ota) or when /ota/state.json holds a job at boot (a
# download to resume, a trial to confirm), serviced in the loop, dropped when done.

import gc

from firmware import config, drop_module, metrics, protocol, use_module
from firmware.counter import CounterError, FrameCounter
from firmware.uplink.mqtt import MqttUplink

FIRMWARE_VERSION = (0, 1, 0)
FIRMWARE_VERSION_CODE = FIRMWARE_VERSION[0] * 10000 + FIRMWARE_VERSION[1] * 100 + \
    FIRMWARE_VERSION[2]  # MMmmpp, §8

SAMPLER_RETRY_MS = 60000
NTP_RETRY_MS = 60000
MAX_SLEEP_MS = 1000  # wake at least this often (watchdog, link); less with a short WDT
_BUSY_LIMIT = 1000  # zero-wait iterations in a row before a 1 ms sleep (no livelock)
_SAFE = "firmware.node_safe"
_OTA = "firmware.ota"
_OTA_STATE = "ota/state.json"  # ota.STATE_FILE: read here without loading ota.py

# The status frame's metrics (§8), by id: no Metric objects needed for them (RAM).
_STATUS_IDS = [metrics.id_of(name) for name in (
    "uptime_s", "free_heap_bytes", "reset_cause", "firmware_version", "error_count",
    "dropped_frames")]


def sampler_class(kind):
    """The sampler class of a node kind, imported only when needed."""
    if kind == "crowd":
        from firmware.measure.crowd import CrowdSampler

        return CrowdSampler
    if kind == "air":
        from firmware.measure.air import AirSampler

        return AirSampler
    if kind == "noise":
        from firmware.measure.noise import NoiseSampler

        return NoiseSampler
    raise ValueError("[kind] %r has no sampler" % (kind,))


class Node:
    """One node.  `sampler_factory(hw, sampler_config)` replaces the kind's sampler class
    (simulators and tests); by default it is imported by kind (sampler_class)."""

    def __init__(self, hw, config_name=config.CONFIG_FILE, sampler_factory=None):
        self.hw = hw
        self.config_name = config_name
        self._sampler_factory = sampler_factory
        clock = hw.clock
        self._last_ms = clock.ticks_ms()
        self.uptime_ms = 0
        self.cfg = None
        self.counter = None
        self.uplink = None
        self.sampler = None
        self.safe_problems = None  # a list of messages while in safe mode
        self.errors = 0
        self.frames_made = 0
        self.status_frames = 0
        self.time_source = None  # "ntp" or "gateway" once the wall clock is set
        self.ota = None  # an ota.OtaClient while an update is in progress
        self._since_status = 0
        self._window_start = 0
        self._sampler_retry = 0
        self._ntp_due = 0
        self._ntp_on = False
        wdt = hw.wdt
        timeout = getattr(wdt, "timeout_ms", None) if wdt is not None else None
        self._max_sleep = MAX_SLEEP_MS
        if timeout:
            self._max_sleep = max(1, min(MAX_SLEEP_MS, timeout // 4))

    # -- lifecycle -------------------------------------------------------------------------

    def run(self, max_ms=None, until=None):
        """Boot, then loop; returns after `max_ms` of uptime, or once `until(node)` is true
        (tests, and bounded runs driven from a REPL), never otherwise."""
        hw = self.hw
        clock = hw.clock
        print("dordt node firmware %d.%d.%d on %s, reset cause %d" % (
            FIRMWARE_VERSION[0], FIRMWARE_VERSION[1], FIRMWARE_VERSION[2], hw.name,
            hw.reset_cause()))
        self._feed()
        self._boot(clock.ticks_ms())
        busy = 0
        while True:
            now = self._tick()
            self._feed()
            if max_ms is not None and self.uptime_ms >= max_ms:
                break
            if until is not None and until(self):
                break
            if self.safe_problems is not None:
                wait = use_module(_SAFE).step(self, now)
            else:
                wait = self._step(now)
            if max_ms is not None:
                wait = min(wait, max_ms - self.uptime_ms)
            if wait > 0:
                busy = 0
                clock.sleep_ms(wait)
            else:
                busy += 1
                if busy >= _BUSY_LIMIT:
                    busy = 0
                    clock.sleep_ms(1)
        self.stop()
        return self

    def stop(self):
        sampler, self.sampler = self.sampler, None
        close = getattr(sampler, "close", None)  # optional in the sampler contract
        if close is not None:
            try:
                close()
            except Exception:
                pass
        if self.uplink is not None:
            self.uplink.close()

    def _tick(self):
        clock = self.hw.clock
        now = clock.ticks_ms()
        self.uptime_ms += clock.ticks_diff(now, self._last_ms)  # ticks wrap; sums do not
        self._last_ms = now
        return now

    def _feed(self):
        wdt = self.hw.wdt
        if wdt is not None:
            wdt.feed()

    # -- boot ------------------------------------------------------------------------------

    def _boot(self, now):
        try:
            cfg = config.load(self.hw.flash, self.config_name)
        except config.ConfigError as exc:
            self._enter_safe(exc, now)
            return
        self._start(cfg, now)

    def _start(self, cfg, now):
        hw = self.hw
        print(cfg.describe())
        counter = FrameCounter(hw.flash, cfg.intervals["counter_reserve"])
        try:
            first = counter.boot()
        except (CounterError, OSError) as exc:
            self._enter_safe(exc, now)
            return
        self.cfg = cfg
        self.counter = counter
        net = hw.net
        if cfg.wifi is not None and net is not None:
            try:
                net.connect(cfg.wifi["ssid"], cfg.wifi["password"])
            except Exception as exc:
                self._error("wifi", exc)
        broker = cfg.broker
        tls = broker["tls"]
        if tls is not None:
            tls = {part: hw.flash.path(tls[part]) for part in tls}
        iv = cfg.intervals
        self.uplink = MqttUplink(
            net, hw.clock, broker, cfg.zone, cfg.node_id, cfg.key, cfg.key_id,
            first_counter=first, rng=hw.rng, wdt=hw.wdt, on_time=self._gateway_time,
            tls_paths=tls, retry_min_s=iv["retry_min_s"], retry_max_s=iv["retry_max_s"],
            on_ota=self._ota_message,
        )
        state = hw.flash.read(_OTA_STATE)
        if state is not None and b'"job"' in state:
            self._ota_open()  # a download to resume or a trial to confirm
        self._ntp_on = cfg.time["ntp_host"] is not None and net is not None and \
            hasattr(net, "ntp_time")
        self._ntp_due = now
        self._time_sync(now)
        self._open_sampler(now)
        if self.safe_problems is None:
            self._emit_status()
            gc.collect()

    def _open_sampler(self, now):
        cfg = self.cfg
        if cfg is None:
            return
        try:
            make = self._sampler_factory
            if make is None:
                make = sampler_class(cfg.kind)
            if getattr(make, "KIND", cfg.kind) != cfg.kind:
                raise ValueError("[kind] %r: the sampler found is for %r" % (
                    cfg.kind, getattr(make, "KIND", None)))
            self.sampler = make(self.hw, cfg.sampler)
        except ValueError as exc:  # the sampler section is wrong: a config problem
            self.sampler = None
            self._enter_safe(exc, now)
            return
        except Exception as exc:
            self.sampler = None
            self._error("sampler start", exc)
            self._sampler_retry = self.hw.clock.ticks_add(now, SAMPLER_RETRY_MS)
            return
        self._window_start = now

    # -- safe mode (node_safe.py) ----------------------------------------------------------

    def _enter_safe(self, why, now):
        """Safe mode, for `why`: a ConfigError, a CounterError, an OSError from the
        counter's flash file, or a ValueError from the sampler's settings."""
        use_module(_SAFE).enter(self, why, now)

    # -- the loop --------------------------------------------------------------------------

    def _step(self, now):
        clock = self.hw.clock
        self._time_sync(now)
        sampler = self.sampler
        if sampler is None and clock.ticks_diff(now, self._sampler_retry) >= 0:
            self._open_sampler(now)
            sampler = self.sampler
            if self.safe_problems is not None:
                return 0
        wait = self._max_sleep
        if sampler is not None:
            try:
                values = sampler.poll(now)
            except Exception as exc:
                self._error("sampler poll", exc)
                values = None
            if values:
                self._measurement(values, now)
            if self.safe_problems is not None:  # counter exhausted while emitting
                return 0
            wait = min(wait, sampler.wait_ms(clock.ticks_ms()))
        else:
            wait = min(wait, max(0, clock.ticks_diff(self._sampler_retry, now)))
        uplink = self.uplink
        if uplink is not None:
            uplink.service(clock.ticks_ms(), max(0, min(wait, 5000)))
            wait = min(wait, uplink.wait_ms(clock.ticks_ms()))
        ota = self.ota
        if ota is not None:
            wait = min(wait, ota.service(clock.ticks_ms()))
            if ota.done:
                self.ota = None
                drop_module(_OTA)
                drop_module("firmware.slots")  # imported by ota.py only, in service
                gc.collect()
        return wait

    # -- over the air (ota.py) ---------------------------------------------------------------

    def _ota_open(self):
        self.ota = use_module(_OTA).OtaClient(self, FIRMWARE_VERSION)

    def _ota_message(self, suffix, msg):
        ota = self.ota
        if ota is None:
            if suffix != "offer":
                return  # a chunk for an update this boot is not running
            ota = self.ota = use_module(_OTA).OtaClient(self, FIRMWARE_VERSION)
        ota.on_message(suffix, msg)

    def _measurement(self, values, now):
        clock = self.hw.clock
        window_ms = clock.ticks_diff(now, self._window_start)
        self._window_start = now
        window_s = (window_ms + 500) // 1000
        if window_s > 0xFFFF:
            window_s = 0xFFFF
        pairs = self._pairs(values)
        if pairs:
            self._emit(pairs, 0, window_s)
        self._since_status += 1
        if self.cfg is not None and self._since_status >= self.cfg.intervals["status_every"]:
            self._emit_status()
        gc.collect()

    def _pairs(self, values):
        kind = self.cfg.kind if self.cfg is not None else None
        pairs = []
        for name in values:
            value = values[name]
            if value is None:  # the sampler has no value for it this window
                continue
            metric = metrics.BY_NAME.get(name)
            if metric is None or metric.group != kind:
                self._error("sampler", "%r is not a %s metric; dropped" % (name, kind))
                continue
            try:
                raw = metric.to_raw(value)
            except (TypeError, ValueError, OverflowError):
                self._error("sampler", "%s=%r is not a number; dropped" % (name, value))
                continue
            if raw < metric.raw_min or raw > metric.raw_max:
                self._error("sampler", "%s=%r is outside %s..%s; dropped" % (
                    name, value, metric.min, metric.max))
                continue
            pairs.append((metric.id, raw))
        return pairs

    def _emit_status(self):
        hw = self.hw
        uplink = self.uplink
        dropped = uplink.dropped if uplink is not None else 0
        values = (  # in _STATUS_IDS' order
            _clamp(self.uptime_ms // 1000, 0x7FFFFFFF),
            _clamp(hw.free_heap(), 0x7FFFFFFF),
            _clamp(hw.reset_cause(), 255),
            FIRMWARE_VERSION_CODE,
            _clamp(self.errors, 0x7FFFFFFF),
            _clamp(dropped, 0x7FFFFFFF),
        )
        pairs = list(zip(_STATUS_IDS, values))
        self._since_status = 0
        if self._emit(pairs, protocol.FLAG_STATUS, 0):
            self.status_frames += 1

    def _emit(self, pairs, flags, window_s):
        """Sign one frame and queue it.  False when no frame could be made."""
        cfg = self.cfg
        counter = self.counter
        uplink = self.uplink
        if cfg is None or counter is None or uplink is None:
            return False
        wall = self.hw.clock.time()
        if wall is None:
            flags |= protocol.FLAG_TIME_UNSYNCED  # §3: timestamp = seconds since boot
            timestamp = self.uptime_ms // 1000
        else:
            timestamp = int(wall)
        try:
            number = counter.take()
        except CounterError as exc:  # exhausted (§6.3): never send under this id again
            self._enter_safe(exc, self.hw.clock.ticks_ms())
            return False
        except OSError as exc:
            self._error("counter", exc)
            return False
        try:
            frame = protocol.encode(cfg.key, cfg.kind_id, cfg.node_id, number, timestamp,
                                    window_s, pairs, cfg.key_id, flags)
        except ValueError as exc:
            self._error("frame", exc)
            return False
        uplink.send(frame)
        self.frames_made += 1
        return True

    # -- time ------------------------------------------------------------------------------

    def _time_sync(self, now):
        cfg = self.cfg
        net = self.hw.net
        clock = self.hw.clock
        if not self._ntp_on or cfg is None or net is None:
            return
        if clock.ticks_diff(now, self._ntp_due) < 0:
            return
        host = cfg.time["ntp_host"]
        self._ntp_due = clock.ticks_add(now, NTP_RETRY_MS)
        try:
            if not net.isconnected():
                self._ntp_due = clock.ticks_add(now, 2000)
                return
            unix_s = net.ntp_time(host)
        except Exception as exc:
            if self.time_source is None:
                print("time: NTP from %s failed (%s); retry in %d s" % (
                    host, _describe(exc), NTP_RETRY_MS // 1000))
            return
        clock.set_time(unix_s)
        if self.time_source != "ntp":
            print("time: set from NTP (%s)" % host)
        self.time_source = "ntp"
        self._ntp_due = clock.ticks_add(now, cfg.time["sync_s"] * 1000)

    def _gateway_time(self, unix_s):
        self.hw.clock.set_time(unix_s)
        if self.time_source is None:
            print("time: set from the gateway")
            self.time_source = "gateway"

    # -- errors ----------------------------------------------------------------------------

    def _error(self, where, exc):
        self.errors += 1
        print("node: %s: %s" % (where, _describe(exc)))


def _describe(exc):
    if isinstance(exc, str):
        return exc
    text = str(exc)
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


def _clamp(value, hi):
    if value < 0:
        return 0
    return hi if value > hi else value


def run(hw, max_ms=None, config_name=config.CONFIG_FILE, sampler_factory=None, until=None):
    """Run a node on `hw`: forever on a board; for `max_ms` of uptime, or until
    `until(node)`, in tests.  Returns the Node (its counters and parts) when it stops."""
    return Node(hw, config_name, sampler_factory).run(max_ms, until)
