# The air node's sampler: BME680 + a particulate sensor, duty-cycled like Sensor.Community's
# airrohr firmware, one reading per reporting window.
#
# In:  `hw` (firmware/hal.py) with `i2c` (machine.I2C-shaped, or None), `uart`
#      (machine.UART-shaped, or None; only what any() reports is read, so it never waits)
#      and optionally `clock` (its `sleep_ms(ms)` is used for the BME680's 10 ms reset
#      wait); `config`, a dict (DEFAULTS below; unknown keys are ignored).  `poll(now_ms)`
#      and `wait_ms(now_ms)` take a millisecond tick (`time.ticks_ms()` on a node; any
#      increasing int in tests): all time arithmetic is wrap-safe.  `close()` (optional in
#      the node's contract) puts the PM sensor to sleep.
# Out: from `poll()`, once per window, {registry metric name: value} for kind "air"
#      (docs/protocol.md §8): temperature_c, humidity_pct, pressure_hpa, gas_resistance_ohm,
#      pm25_ugm3, pm10_ugm3, pm1_ugm3 (PMS5003 only) and always air_faults.  A metric whose
#      source is faulty is left out, never sent as a made-up number, and a bit says why.
# On failure: sensor and bus errors never raise out of poll(); they set fault bits.  Bad
#      config raises ValueError naming the key.
#
# Each window of interval_s: the PM sensor sleeps, is woken warmup_s before the sampling
# phase (fan and laser settle; PMS5003 manual: "stable data ... 30 seconds after wakeup"),
# then the first `samples` good frames and `samples` BME680 forced measurements (one a
# second) are taken, the sensor is put back to sleep, and at the window's end each
# quantity's samples are averaged after dropping the highest and the lowest (airrohr:
# sds_pm25_sum - max - min over the readings).  When interval_s is too short to sleep
# (interval < warmup + sampling + 5 s) the PM sensor stays awake and only the first window
# after boot waits for the warm-up.
#
# RAM: sample arrays of 3 x `samples` ints and 4 x `samples` floats, the drivers' buffers
# and ~45 attributes: 4.2 KB with the defaults, both drivers included (measured with
# gc.mem_alloc() under MicroPython 1.27).  Parsing PM frames allocates nothing; a BME680
# measurement allocates its compensation floats (boxed on ESP32 ports); poll() builds the
# report dict once per window.

from array import array

from firmware import metrics
from firmware.drivers import bme680 as _bme680
from firmware.drivers import pm as _pm

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from firmware.ticks import ticks_add as _ticks_add
from firmware.ticks import ticks_diff as _ticks_diff

# air_faults bits (metric 0x08, docs/protocol.md §8).  Each names what went wrong in the
# window just reported; the metrics it spoils are left out of that report.
FAULT_PM_MISSING = const(0x0001)  # no frame at all from the PM sensor: PM left out
FAULT_PM_CHECKSUM = const(0x0002)  # >= 1 frame failed its checksum and was skipped
FAULT_PM_FRAMING = const(0x0004)  # bytes outside any frame were dropped (noise, lost sync)
FAULT_PM_STUCK = const(0x0008)  # frames bit-identical for stuck_windows windows: PM left out
FAULT_PM_PARTIAL = const(0x0010)  # fewer good frames than `samples`: averaged what came
FAULT_PM_WARMUP = const(0x0020)  # sensor still warming up after boot: PM left out
FAULT_BME_MISSING = const(0x0100)  # no BME680 (no ACK or wrong chip id): T/H/P/gas left out
FAULT_BME_ERROR = const(0x0200)  # bus error or a measurement that never completed
FAULT_GAS_INVALID = const(0x0400)  # gas not valid or heater not stable in >= 1 sample
FAULT_BME_STUCK = const(0x0800)  # raw T/P/H words identical for stuck_windows windows
FAULT_RANGE = const(0x1000)  # a value outside the metric registry's range was left out

FAULT_NAMES = {
    FAULT_PM_MISSING: "pm_missing",
    FAULT_PM_CHECKSUM: "pm_checksum",
    FAULT_PM_FRAMING: "pm_framing",
    FAULT_PM_STUCK: "pm_stuck",
    FAULT_PM_PARTIAL: "pm_partial",
    FAULT_PM_WARMUP: "pm_warmup",
    FAULT_BME_MISSING: "bme_missing",
    FAULT_BME_ERROR: "bme_error",
    FAULT_GAS_INVALID: "gas_invalid",
    FAULT_BME_STUCK: "bme_stuck",
    FAULT_RANGE: "range",
}

# Config keys and defaults
DEFAULTS = {
    "interval_s": 60,  # reporting window
    "pm_sensor": "sds011",  # "sds011", "pms5003", or None for no PM sensor
    "warmup_s": 30,  # PM sensor awake before sampling
    "samples": 5,  # PM frames and BME680 measurements per window
    "bme680_address": 0x77,  # 0x76 with SDO low
    "heater_temp_c": 320,  # BME680 gas heater target (<= 400)
    "heater_ms": 150,  # ... and how long it is held (<= 4032)
    "stuck_windows": 3,  # identical windows before a sensor is called stuck
}

_FRAME_MS = const(1000)  # both PM sensors report about once a second when awake
_SLACK_MS = const(2000)  # extra time in the sampling phase for late frames
_MIN_SLEEP_MS = const(5000)  # duty-cycle only when the sensor can sleep this long
_BME_PERIOD_MS = const(1000)

# PM sensor states
_ASLEEP = const(0)
_WARMING = const(1)
_SAMPLING = const(2)
_DONE = const(3)


def _fail(key, rule, value):
    return ValueError("air config: %r must be %s, got %r" % (key, rule, value))


def _number(cfg, key, lo, hi):
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise _fail(key, "a number from %s to %s" % (lo, hi), value)
    return value


def parse_config(config):
    """Defaults applied and each value checked; raises ValueError naming the bad key."""
    cfg = dict(DEFAULTS)
    for key in DEFAULTS:
        if config and key in config:
            cfg[key] = config[key]
    _number(cfg, "interval_s", 1, 86400)
    _number(cfg, "warmup_s", 0, 600)
    if not isinstance(cfg["samples"], int) or not 1 <= cfg["samples"] <= 60:
        raise _fail("samples", "an integer from 1 to 60 (3 or more to drop high and low)",
                    cfg["samples"])
    if cfg["pm_sensor"] is not None and cfg["pm_sensor"] not in _pm.SENSORS:
        raise _fail("pm_sensor", "one of 'sds011', 'pms5003' or None", cfg["pm_sensor"])
    if cfg["bme680_address"] not in (0x76, 0x77):
        raise _fail("bme680_address", "0x76 or 0x77 (118 or 119)", cfg["bme680_address"])
    _number(cfg, "heater_temp_c", 200, 400)
    _number(cfg, "heater_ms", 1, 4032)
    if not isinstance(cfg["stuck_windows"], int) or cfg["stuck_windows"] < 2:
        raise _fail("stuck_windows", "an integer >= 2", cfg["stuck_windows"])
    return cfg


def _mix(h, v):
    # 24-bit running signature; stays a small int on 32-bit ports (no allocation)
    return ((h << 5) ^ (h >> 19) ^ (v & 0xFFFFFF)) & 0xFFFFFF


class AirSampler:
    """Samples the air node's sensors; see the module header for the contract."""

    KIND = "air"

    def __init__(self, hw, config):
        cfg = parse_config(config)
        self.config = cfg
        self.interval_ms = int(cfg["interval_s"] * 1000)
        self.warmup_ms = int(cfg["warmup_s"] * 1000)
        self.samples = n = cfg["samples"]
        self._stuck_k = cfg["stuck_windows"]
        self._i2c = getattr(hw, "i2c", None)
        clock = getattr(hw, "clock", None)
        self._sleep_ms = getattr(clock, "sleep_ms", None)
        self._sample_ms = n * _FRAME_MS + _SLACK_MS
        # -- PM ------------------------------------------------------------------------
        uart = getattr(hw, "uart", None)
        name = cfg["pm_sensor"]
        self.pm = _pm.SENSORS[name](uart, self._on_frame) if (name and uart) else None
        self._pm_expected = name is not None
        self._pm_vals = array("i", [0] * (3 * n))  # pm1, pm25, pm10 (tenths) per sample
        self._pm_n = 0
        self._pm_sig = 0
        self._pm_prev_sig = -1
        self._pm_repeats = 0
        self._duty = self.interval_ms - self._sample_ms - self.warmup_ms >= _MIN_SLEEP_MS
        self._pm_state = _ASLEEP
        self._pm_awake = False
        self._awake_since = 0
        self._t_wake = self._t_sample = self._t_bme = 0
        # -- BME680 --------------------------------------------------------------------
        self.bme = None
        self._bme_vals = array("f", [0.0] * (4 * n))  # T, P, H, gas per sample
        self._bme_n = 0
        self._gas_n = 0
        self._bme_busy = False
        self._bme_done = False
        self._bme_next = 0
        self._bme_due = 0
        self._bme_sig = 0
        self._bme_prev_sig = -1
        self._bme_repeats = 0
        self._amb_c = 25
        self._faults = 0
        self._try_bme()
        # -- windows -------------------------------------------------------------------
        self._start = None  # the first poll opens the first window
        self._end = 0
        self.windows = 0
        self.error_count = 0  # windows reported with any fault bit: for status frames
        self._counts0 = (0, 0, 0, 0)

    # -- the contract ----------------------------------------------------------------------

    def poll(self, now_ms):
        """Bounded work: parse waiting UART bytes, step the PM and BME680 schedules, and
        when the window has closed return its report (else None)."""
        if self._start is None:
            self._open_first(now_ms)
        if self.pm is not None:
            self.pm.poll()  # frames that came in so far belong to the current phase
            self._step_pm(self.pm, now_ms)
        self._step_bme(now_ms)
        if _ticks_diff(now_ms, self._end) < 0:
            return None
        report = self._report()
        self._next_window(now_ms)
        return report

    def wait_ms(self, now_ms):
        """How long the node may sleep before the next poll (ms, >= 0)."""
        if self._start is None:
            return 0
        nxt = self._end
        if self.pm is not None:
            if self._pm_state == _ASLEEP:
                nxt = _sooner(nxt, self._t_wake)
            elif self._pm_state == _WARMING:
                nxt = _sooner(nxt, self._t_sample)
            if self._pm_awake:
                # drain the UART about once a frame so its receive buffer never overflows
                nxt = _sooner(nxt, _ticks_add(now_ms, _FRAME_MS))
        if self._i2c is not None and not self._bme_done:
            if not self._bme_busy:
                nxt = _sooner(nxt, self._bme_next)
            elif _ticks_diff(self._bme_due, now_ms) > 0:
                nxt = _sooner(nxt, self._bme_due)
            else:  # overdue: poll as bme68x.c does (BME68X_PERIOD_POLL) until timeout
                nxt = _sooner(nxt, _ticks_add(now_ms, 10))
        wait = _ticks_diff(nxt, now_ms)
        return wait if wait > 0 else 0

    def close(self):
        """The node stops sampling (safe mode, shutdown): put the PM sensor to sleep."""
        if self.pm is not None:
            self._send(self.pm.sleep)
            self._pm_awake = False

    # -- windows ---------------------------------------------------------------------------

    def _open_first(self, now_ms):
        self._start = now_ms
        self._end = _ticks_add(now_ms, self.interval_ms)
        self._awake_since = now_ms  # continuous mode: warm-up counts from now
        self._plan()
        if self.pm is not None:
            # whatever state the sensor was left in: asleep when duty-cycling, else awake
            self._pm_awake = not self._duty
            self._send(self.pm.wake if self._pm_awake else self.pm.sleep)

    def _next_window(self, now_ms):
        self.windows += 1
        self._start = self._end
        self._end = _ticks_add(self._end, self.interval_ms)
        if _ticks_diff(now_ms, self._end) >= 0:  # polled more than a window late: realign
            self._start = now_ms
            self._end = _ticks_add(now_ms, self.interval_ms)
        self._plan()

    def _plan(self):
        self._faults = 0
        self._pm_n = 0
        self._pm_sig = 0
        self._bme_n = 0
        self._gas_n = 0
        self._bme_sig = 0
        self._bme_busy = False
        self._bme_done = False
        pm = self.pm
        if pm is not None:
            self._counts0 = (pm.frames, pm.checksum_errors, pm.garbage_bytes, pm.replies)
        self._t_sample = _ticks_add(self._end, -self._sample_ms)
        if _ticks_diff(self._t_sample, self._start) < 0:
            self._t_sample = self._start
        if pm is not None:
            if self._duty:
                if self._pm_awake:  # did not get its samples last window: sleep now
                    self._pm_awake = False
                    self._send(pm.sleep)
                self._t_wake = _ticks_add(self._t_sample, -self.warmup_ms)
                self._pm_state = _ASLEEP
            else:
                warm = _ticks_add(self._awake_since, self.warmup_ms)
                if _ticks_diff(warm, self._t_sample) > 0:
                    self._t_sample = warm
                self._pm_state = _WARMING
        # the BME680 keeps its place at the end of the window, whatever the PM warm-up does
        self._bme_next = _ticks_add(self._end, -self._sample_ms)
        if _ticks_diff(self._bme_next, self._start) < 0:
            self._bme_next = self._start
        self._t_bme = self._bme_next

    def _send(self, command):
        try:
            command()
        except OSError:
            self._faults |= FAULT_PM_MISSING

    # -- PM --------------------------------------------------------------------------------

    def _step_pm(self, pm, now_ms):
        state = self._pm_state
        if state == _ASLEEP and _ticks_diff(now_ms, self._t_wake) >= 0:
            self._send(pm.wake)
            self._pm_awake = True
            self._awake_since = now_ms
            warm = _ticks_add(now_ms, self.warmup_ms)  # later than planned if polled late
            if _ticks_diff(warm, self._t_sample) > 0:
                self._t_sample = warm
            self._pm_state = state = _WARMING
        if state == _WARMING and _ticks_diff(now_ms, self._t_sample) >= 0:
            self._pm_state = state = _SAMPLING
        if state == _SAMPLING and self._pm_n >= self.samples and self._duty:
            self._send(pm.sleep)
            self._pm_awake = False
            self._pm_state = _DONE

    def _on_frame(self, pm1_x10, pm25_x10, pm10_x10, signature):
        # called by the parser for each good frame, in the state of the current poll
        if self._pm_state != _SAMPLING or self._pm_n >= self.samples:
            return
        i = 3 * self._pm_n
        v = self._pm_vals
        v[i] = pm1_x10
        v[i + 1] = pm25_x10
        v[i + 2] = pm10_x10
        self._pm_n += 1
        self._pm_sig = _mix(self._pm_sig, signature)

    # -- BME680 ----------------------------------------------------------------------------

    def _try_bme(self):
        self.bme = None
        if self._i2c is None:
            return
        try:
            bme = _bme680.BME680(self._i2c, self.config["bme680_address"],
                                 sleep_ms=self._sleep_ms)
            bme.set_heater(self.config["heater_temp_c"], self.config["heater_ms"])
            self.bme = bme
        except OSError:
            pass

    def _step_bme(self, now_ms):
        if self._i2c is None or self._bme_done or _ticks_diff(now_ms, self._t_bme) < 0:
            return
        if self.bme is None:
            self._try_bme()  # once per window: a loose connector may come back
            if self.bme is None:
                self._faults |= FAULT_BME_MISSING
                self._bme_done = True
                return
            self._bme_next = now_ms
        bme = self.bme
        try:
            if self._bme_busy:
                if _ticks_diff(now_ms, self._bme_due) < 0 or not bme.read(now_ms):
                    return
                self._bme_busy = False
                self._store_bme(bme)
                if self._bme_n >= self.samples:
                    self._bme_done = True
            elif _ticks_diff(now_ms, self._bme_next) >= 0:
                if self._bme_n == 0:
                    # heater set-point for the ambient temperature last measured
                    bme.set_heater(self.config["heater_temp_c"], self.config["heater_ms"],
                                   self._amb_c)
                self._bme_due = _ticks_add(now_ms, bme.start(now_ms))
                self._bme_next = _ticks_add(now_ms, _BME_PERIOD_MS)
                self._bme_busy = True
        except OSError:
            self._faults |= FAULT_BME_ERROR
            self._bme_busy = False
            self._bme_done = True
            self.bme = None  # re-initialised next window

    def _store_bme(self, bme):
        i = 4 * self._bme_n
        v = self._bme_vals
        v[i] = bme.temperature_c
        v[i + 1] = bme.pressure_pa
        v[i + 2] = bme.humidity_pct
        if bme.gas_ohm is None:
            self._faults |= FAULT_GAS_INVALID
            v[i + 3] = -1.0
        else:
            v[i + 3] = bme.gas_ohm
            self._gas_n += 1
        self._bme_n += 1
        self._amb_c = int(bme.temperature_c)
        self._bme_sig = _mix(_mix(_mix(self._bme_sig, bme.adc_t), bme.adc_p), bme.adc_h)

    # -- the report ------------------------------------------------------------------------

    def _report(self):
        out = {}
        faults = self._faults
        if self._pm_expected:
            faults |= self._pm_report(out)
        if self._i2c is None:
            faults |= FAULT_BME_MISSING
        else:
            faults |= self._bme_report(out)
        for name in list(out):
            m = metrics.BY_NAME[name]
            if not m.min <= out[name] <= m.max:
                faults |= FAULT_RANGE
                del out[name]
        out["air_faults"] = faults
        if faults:
            self.error_count += 1
        return out

    def _pm_report(self, out):
        pm = self.pm
        if pm is None:
            return FAULT_PM_MISSING
        f0, c0, g0, r0 = self._counts0
        faults = 0
        if pm.checksum_errors != c0:
            faults |= FAULT_PM_CHECKSUM
        if pm.garbage_bytes != g0:
            faults |= FAULT_PM_FRAMING
        n = self._pm_n
        if n == 0:
            if pm.frames == f0 and pm.checksum_errors == c0 and pm.replies == r0:
                faults |= FAULT_PM_MISSING
            elif _ticks_diff(self._t_sample, self._end) >= 0:
                faults |= FAULT_PM_WARMUP  # woken too late in the window to sample
            elif not faults & FAULT_PM_CHECKSUM:
                faults |= FAULT_PM_MISSING  # it went quiet before the sampling phase
            return faults
        if self._pm_sig == self._pm_prev_sig:
            self._pm_repeats += 1
        else:
            self._pm_prev_sig = self._pm_sig
            self._pm_repeats = 1
        if self._pm_repeats >= self._stuck_k:
            return faults | FAULT_PM_STUCK
        if n < self.samples:
            faults |= FAULT_PM_PARTIAL
        # means are in tenths of ug/m3, the registry's raw unit: round those, not floats
        # (round(x, 1) differs between CPython and MicroPython on exact halves)
        out["pm25_ugm3"] = int(_mean(self._pm_vals, 1, 3, n) + 0.5) / 10
        out["pm10_ugm3"] = int(_mean(self._pm_vals, 2, 3, n) + 0.5) / 10
        if self._pm_vals[0] >= 0:  # the SDS011 does not measure PM1 (-1)
            out["pm1_ugm3"] = int(_mean(self._pm_vals, 0, 3, n) + 0.5) / 10
        return faults

    def _bme_report(self, out):
        n = self._bme_n
        if n == 0:
            if self._faults & (FAULT_BME_ERROR | FAULT_BME_MISSING):
                return 0
            return FAULT_BME_ERROR  # no measurement completed in the window
        if self._bme_sig == self._bme_prev_sig:
            self._bme_repeats += 1
        else:
            self._bme_prev_sig = self._bme_sig
            self._bme_repeats = 1
        if self._bme_repeats >= self._stuck_k:
            return FAULT_BME_STUCK
        v = self._bme_vals
        # each value rounded as the frame will carry it (metrics.to_raw: half away from 0)
        out["temperature_c"] = _on_the_wire("temperature_c", _mean(v, 0, 4, n))
        out["pressure_hpa"] = _on_the_wire("pressure_hpa", _mean(v, 1, 4, n) / 100.0)
        out["humidity_pct"] = _on_the_wire("humidity_pct", _mean(v, 2, 4, n))
        if self._gas_n:
            out["gas_resistance_ohm"] = int(_mean(v, 3, 4, n, True) + 0.5)
        return 0


def _on_the_wire(name, value):
    m = metrics.BY_NAME[name]
    return m.to_value(m.to_raw(value))


def _sooner(a, b):
    return b if _ticks_diff(b, a) < 0 else a


def _mean(values, k, stride, n, skip_negative=False):
    """Mean of column k of n rows without the highest and the lowest value (airrohr's
    trimmed mean; a plain mean below 3 values).  With `skip_negative`, negative entries
    are samples that did not come (a gas reading without a stable heater)."""
    total = lo = hi = 0.0
    m = 0
    for i in range(n):
        x = values[stride * i + k]
        if skip_negative and x < 0:
            continue
        if m == 0 or x < lo:
            lo = x
        if m == 0 or x > hi:
            hi = x
        total += x
        m += 1
    if m >= 3:
        return (total - lo - hi) / (m - 2)
    return total / m
