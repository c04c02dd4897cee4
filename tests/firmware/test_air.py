"""The air sampler (firmware/measure/air.py) over full reporting windows at real rates on a
simulated clock: under CPython with the live emulators (BME680 registers, PM sensor on a
real pty), and under real MicroPython with the same kind of bytes handed over as data.
"""

import contextlib
import io
import json
import math
from types import SimpleNamespace

import pytest

from firmware import metrics, protocol
from firmware.drivers import bme680 as bme_driver
from firmware.drivers import pm as pm_driver
from firmware.measure import air
from firmware.measure.air import AirSampler
from simulators.emulators.bme680 import BME680Emulator, Noise, Truth
from simulators.emulators.pm import EMULATORS, PMTruth, PtyLink

MINUTE = 60_000
PM_KEYS = {"pm25_ugm3", "pm10_ugm3", "pm1_ugm3"}
BME_KEYS = {"temperature_c", "humidity_pct", "pressure_hpa", "gas_resistance_ohm"}


class SimClock:
    """hw.clock: the sampler's only notion of time; sleep_ms moves it forward."""

    def __init__(self):
        self.now = 0

    def ticks_ms(self):
        return self.now

    def sleep_ms(self, ms):
        self.now += ms


def pm_truth(t_ms):
    # changes every minute, so each report must carry its own window's values
    k = t_ms // MINUTE
    pm25 = 9.0 + 2.5 * math.sin(k)
    return PMTruth(pm1=pm25 * (0.55 + 0.05 * (k % 4)), pm25=pm25, pm10=pm25 + 6.0 + 3 * (k % 3))


def bme_truth(t_ms):
    k = t_ms // MINUTE
    return Truth(temperature_c=12.0 + 0.7 * (k % 9), pressure_hpa=1002.0 + 0.9 * (k % 5),
                 humidity_pct=60.0 + 2.0 * (k % 7), gas_ohm=80_000.0 * (1 + 0.1 * (k % 3)))


def faults_of(report):
    return {name for bit, name in air.FAULT_NAMES.items() if report["air_faults"] & bit}


class Rig:
    """A sampler on live emulators: BME680 registers and a PM sensor on a pty."""

    def __init__(self, pm_kind="sds011", config=None, pm_faults=None, bme=None, noise=True,
                 truth=True, start_ms=0):
        self.clock = SimClock()
        self.clock.now = start_ms
        self.pm = None
        if pm_kind:
            self.pm = EMULATORS[pm_kind](pm_truth if truth else PMTruth(), noise_pct=1,
                                         seed=2, start_ms=start_ms, **(pm_faults or {}))
        self.chip = BME680Emulator(noise=Noise(2, 2, 2, 1) if noise else Noise(), seed=1,
                                   clock=self.clock.ticks_ms, **(bme or {}))
        self.truth = truth
        self.link = PtyLink(self.pm) if self.pm else None
        hw = SimpleNamespace(i2c=self.chip, uart=self.link.uart() if self.link else None,
                             clock=self.clock)
        self.sampler = AirSampler(hw, {"pm_sensor": pm_kind, **(config or {})})
        self.reports = []
        self.polls = 0
        self.max_wait = 0

    def run(self, windows, until=None):
        zeros = 0
        while len(self.reports) < windows:
            now = self.clock.now
            if self.truth:
                self.chip.truth = bme_truth(now)
            if self.link:
                self.link.pump(now)
            report = self.sampler.poll(now)
            self.polls += 1
            if self.link:
                self.link.pump(now)  # commands written in this poll reach the sensor now
            if report is not None:
                self.reports.append((now, report))
            wait = self.sampler.wait_ms(now)
            zeros = zeros + 1 if wait == 0 else 0
            assert zeros < 3, "wait_ms() keeps returning 0: the node would spin"
            self.max_wait = max(self.max_wait, wait)
            self.clock.now += wait
            if until and self.clock.now >= until:
                break
        return self.reports

    def close(self):
        if self.link:
            self.link.close()


@pytest.fixture
def rigs():
    made = []

    def make(*args, **kwargs):
        rig = Rig(*args, **kwargs)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


def expected_pm(sent, window_end, samples=5, sample_ms=7000):
    """What a correct sampler reports: the first `samples` good frames after the sampling
    phase opens, highest and lowest dropped, averaged (tenths -> ug/m3, 0.1 resolution)."""
    t_sample = window_end - sample_ms
    rows = [f for f in sent if t_sample < f.t_ms <= window_end and f.good][:samples]
    out = {}
    for name, attr in (("pm25_ugm3", "pm25_x10"), ("pm10_ugm3", "pm10_x10"),
                       ("pm1_ugm3", "pm1_x10")):
        values = [getattr(f, attr) for f in rows]
        if values[0] < 0:
            continue
        if len(values) >= 3:
            mean = (sum(values) - max(values) - min(values)) / (len(values) - 2)
        else:
            mean = sum(values) / len(values)
        out[name] = int(mean + 0.5) / 10  # tenths rounded half up, as on the wire
    return out


# -- CPython: live emulators ---------------------------------------------------------------


@pytest.mark.parametrize("pm_kind", ["sds011", "pms5003"])
def test_an_hour_of_windows(rigs, pm_kind):
    rig = rigs(pm_kind)
    reports = rig.run(60)
    t0 = reports[0][0] - MINUTE
    key = bytes(range(32))
    for k, (t, report) in enumerate(reports):
        assert t == t0 + (k + 1) * MINUTE  # one report per window, on time
        assert report["air_faults"] == 0, faults_of(report)
        truth = bme_truth(t - 5000)
        assert abs(report["temperature_c"] - truth.temperature_c) <= 0.1
        assert abs(report["pressure_hpa"] - truth.pressure_hpa) <= 0.5
        assert abs(report["humidity_pct"] - truth.humidity_pct) <= 0.5
        assert report["gas_resistance_ohm"] == pytest.approx(truth.gas_ohm, rel=0.01)
        # PM: exactly the trimmed mean of the frames the emulator sent in the sampling phase
        want = expected_pm(rig.pm.sent, t)
        assert {k2: report[k2] for k2 in want} == want
        assert ("pm1_ugm3" in report) == (pm_kind == "pms5003")
        pm = pm_truth(t - 5000)
        tol = 0.5 if pm_kind == "sds011" else 1.0
        assert abs(report["pm25_ugm3"] - pm.pm25) <= tol
        assert abs(report["pm10_ugm3"] - pm.pm10) <= tol
        # every report makes a valid signed frame of registry metrics
        pairs = [(metrics.BY_NAME[n].id, metrics.BY_NAME[n].to_raw(v)) for n, v in report.items()]
        frame = protocol.open_frame(protocol.encode(key, metrics.KIND_AIR, 0x0D0A0001, k,
                                                    t // 1000, 60, pairs), key)
        assert all(metrics.allowed_for(metrics.KIND_AIR, metrics.BY_ID[i])
                   for i, _ in frame.metrics)
    # duty cycle: asleep most of each window, woken ~30 s + sampling before its end
    names = [name for _, name in rig.pm.commands]
    assert names[:3] == ["sleep", "wake", "sleep"]
    assert names.count("wake") == 60
    per_window = len(rig.pm.sent) / 60
    assert 34 <= per_window <= 38, per_window
    # five BME680 measurements (heater cycles) per window, as hardware/power.py budgets
    assert rig.chip.measurements == 5 * 60
    assert rig.max_wait <= MINUTE and rig.polls < 60 * 50


def test_missing_pm_sensor_is_a_fault_not_a_number(rigs):
    rig = rigs("sds011", pm_faults={"missing": True})
    for _, report in rig.run(3):
        assert faults_of(report) == {"pm_missing"}
        assert not PM_KEYS & set(report) and BME_KEYS <= set(report)


def test_bad_checksums_are_flagged_and_good_frames_kept(rigs):
    rig = rigs("pms5003", pm_faults={"bad_checksum_every": 3})
    for t, report in rig.run(4):
        # 7 s of sampling with every third frame bad leaves 4 or 5 good ones
        assert {"pm_checksum"} <= faults_of(report) <= {"pm_checksum", "pm_partial"}
        want = expected_pm(rig.pm.sent, t)
        assert {k: report[k] for k in want} == want


def test_garbage_on_the_line_is_flagged(rigs):
    rig = rigs("sds011", pm_faults={"garbage_every": 4, "garbage_len": 5})
    for t, report in rig.run(3):
        assert faults_of(report) == {"pm_framing"}
        want = expected_pm(rig.pm.sent, t)
        assert {k: report[k] for k in want} == want


@pytest.mark.parametrize("pm_kind", ["sds011", "pms5003"])
def test_stuck_pm_sensor_is_dropped_after_k_windows(rigs, pm_kind):
    rig = rigs(pm_kind, pm_faults={"stuck": True})
    reports = [r for _, r in rig.run(5)]
    for report in reports[:2]:  # cannot tell yet: a sensor may read the same twice
        assert report["air_faults"] == 0 and "pm25_ugm3" in report
    for report in reports[2:]:
        assert faults_of(report) == {"pm_stuck"}
        assert not PM_KEYS & set(report) and BME_KEYS <= set(report)


def test_clean_air_on_a_pms5003_is_not_called_stuck(rigs):
    # 0 ug/m3 for an hour is plausible on a PMS5003 (whole ug/m3); its particle counts
    # still change, and the stuck check looks at every word of the frame
    rig = rigs("pms5003", truth=False)
    rig.pm.truth = PMTruth(0.0, 0.0, 0.0)
    rig.pm.noise_pct = 0
    for _, report in rig.run(5):
        assert report["pm25_ugm3"] == 0.0 and "pm_stuck" not in faults_of(report)


def test_bme680_missing_then_back(rigs):
    rig = rigs("sds011", bme={"present": False})
    reports = rig.run(2)
    for _, report in reports:
        assert faults_of(report) == {"bme_missing"}
        assert not BME_KEYS & set(report) and "pm25_ugm3" in report
    rig.chip.present = True  # a loose connector reseated: picked up the next window
    _, report = rig.run(3)[-1]
    assert report["air_faults"] == 0 and BME_KEYS <= set(report)


def test_bme680_measurement_that_never_completes(rigs):
    rig = rigs("sds011")
    rig.run(1)
    rig.chip.stall = True
    for _, report in rig.run(3)[1:]:
        assert faults_of(report) == {"bme_error"}
        assert not BME_KEYS & set(report) and "pm25_ugm3" in report


def test_unstable_heater_drops_only_the_gas(rigs):
    rig = rigs("sds011", bme={"heat_stable": False})
    for _, report in rig.run(2):
        assert faults_of(report) == {"gas_invalid"}
        assert "gas_resistance_ohm" not in report and "temperature_c" in report


def test_stuck_bme680_is_dropped_after_k_windows(rigs):
    rig = rigs("sds011", noise=False, truth=False)  # bit-identical raw words every time
    reports = [r for _, r in rig.run(4)]
    assert all(r["air_faults"] == 0 for r in reports[:2])
    for report in reports[2:]:
        assert faults_of(report) == {"bme_stuck"}
        assert not BME_KEYS & set(report) and "pm25_ugm3" in report


def test_value_outside_the_registry_is_left_out(rigs):
    rig = rigs("pms5003", truth=False)
    rig.pm.truth = PMTruth(pm1=1200.0, pm25=1300.0, pm10=1500.0)
    _, report = rig.run(1)[0]
    assert faults_of(report) == {"range"}
    assert "pm1_ugm3" not in report and "pm25_ugm3" not in report
    assert report["pm10_ugm3"] == pytest.approx(1500.0, abs=30)  # within 0..2000


def test_short_interval_keeps_the_sensor_awake(rigs):
    # a node up for days: the warm-up counts from the first poll, not from ticks 0
    rig = rigs("sds011", config={"interval_s": 10}, start_ms=10**9)
    reports = [r for _, r in rig.run(8)]
    assert [name for _, name in rig.pm.commands] == ["wake"]  # never put to sleep
    assert all(faults_of(r) == {"pm_warmup"} and "pm25_ugm3" not in r for r in reports[:3])
    assert all(r["air_faults"] == 0 and "pm25_ugm3" in r for r in reports[3:])
    assert rig.max_wait <= 1000  # drains the UART once a frame while awake


def test_late_poll_realigns_the_windows(rigs):
    rig = rigs("sds011")
    rig.run(2)
    rig.clock.now += 5 * MINUTE + 1234  # the node was busy (or asleep) far too long
    rig.run(4)
    times = [t for t, _ in rig.reports]
    assert times[3] - times[2] == MINUTE  # a fresh window from the late poll, then regular
    assert rig.reports[3][1]["air_faults"] == 0


def test_close_puts_the_pm_sensor_to_sleep(rigs):
    rig = rigs("sds011", config={"interval_s": 10})  # continuous: awake until closed
    rig.run(1)
    rig.sampler.close()
    rig.link.pump(rig.clock.now)
    assert [name for _, name in rig.pm.commands] == ["wake", "sleep"] and not rig.pm.awake


def test_without_a_pm_sensor(rigs):
    rig = rigs(None, config={"pm_sensor": None})
    for _, report in rig.run(2):
        assert report["air_faults"] == 0 and not PM_KEYS & set(report)


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("pm_sensor", "sds021", "'pm_sensor' must be one of"),
        ("interval_s", 0, "'interval_s' must be a number from 1"),
        ("samples", 0, "'samples' must be an integer from 1 to 60"),
        ("bme680_address", 0x78, "'bme680_address' must be 0x76 or 0x77"),
        ("heater_temp_c", 450, "'heater_temp_c' must be a number from 200 to 400"),
        ("heater_ms", "150", "'heater_ms' must be a number"),
        ("stuck_windows", 1, "'stuck_windows' must be an integer >= 2"),
    ],
)
def test_bad_config_names_the_key(key, value, says):
    hw = SimpleNamespace(i2c=None, uart=None, clock=SimClock())
    with pytest.raises(ValueError, match=says):
        AirSampler(hw, {key: value})


# -- real MicroPython: the sampler on fake buses serving bytes made here ---------------------

HARNESS = r"""
import json
from firmware.measure.air import AirSampler
from firmware.drivers import pm as pmdrv

data = json.load(open(DATA))

try:  # MicroPython: ticks wrap at 2**30 ms, as on a node after 12.4 days
    from time import ticks_add
except ImportError:  # CPython: plain integers
    def ticks_add(t, ms):
        return t + ms

class Clock:
    def __init__(self, start):
        self.now = ticks_add(start, 0)
        self.elapsed = 0
    def ticks_ms(self):
        return self.now
    def sleep_ms(self, ms):
        self.now = ticks_add(self.now, ms)
        self.elapsed += ms

class FakeI2C:
    # BME680 registers; each forced-mode trigger loads the next data field made on the host
    def __init__(self, regs, fields, present):
        self.regs = bytearray(bytes.fromhex(regs))
        self.fields = fields
        self.k = 0
        self.present = present
    def _check(self, addr):
        if not self.present or addr != 0x77:
            raise OSError(19)
    def readfrom_mem_into(self, addr, reg, buf):
        self._check(addr)
        for i in range(len(buf)):
            buf[i] = self.regs[(reg + i) & 0xFF]
    def writeto_mem(self, addr, reg, buf):
        self._check(addr)
        data = bytes([reg]) + bytes(buf)
        for i in range(0, len(data) - 1, 2):
            r, v = data[i], data[i + 1]
            if 0x50 <= r <= 0x75:
                self.regs[r] = v
            if r == 0x74 and v & 3 == 1:
                self.regs[0x1D:0x1D + 17] = bytes.fromhex(self.fields[self.k])
                self.k += 1

class FakeUART:
    # the sensor's bytes by time; while it sleeps (after its sleep command) it sends none
    def __init__(self, chunks, clock, kind):
        self.chunks = chunks
        self.k = 0
        self.clock = clock
        self.buf = b""
        self.awake = True
        self.cmd = b""
        s = pmdrv.SENSORS[kind]
        self.sleep_cmd, self.wake_cmd = s.SLEEP, s.WAKE
    def _pump(self):
        while self.k < len(self.chunks) and self.chunks[self.k][0] <= self.clock.elapsed:
            if self.awake:
                self.buf += bytes.fromhex(self.chunks[self.k][1])
            self.k += 1
    def any(self):
        self._pump()
        return len(self.buf)
    def readinto(self, b, nbytes=None):  # machine.UART's signature
        n = min(len(b) if nbytes is None else nbytes, len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n
    def write(self, data):
        self._pump()
        self.cmd = (self.cmd + bytes(data))[-32:]
        if self.cmd.endswith(self.sleep_cmd):
            self.awake = False
        elif self.cmd.endswith(self.wake_cmd):
            self.awake = True
        return len(data)

class HW:
    def __init__(self, i2c, uart, clock):
        self.i2c = i2c
        self.uart = uart
        self.clock = clock

out = {}
for sc in data:
    clock = Clock(sc["start"])
    i2c = FakeI2C(sc["regs"], sc["fields"], sc["bme_present"])
    uart = FakeUART(sc["chunks"], clock, sc["config"]["pm_sensor"])
    sampler = AirSampler(HW(i2c, uart, clock), sc["config"])
    reports = []
    zeros = 0
    while len(reports) < sc["windows"]:
        r = sampler.poll(clock.now)
        if r is not None:
            reports.append([clock.elapsed, r])
        w = sampler.wait_ms(clock.now)
        zeros = zeros + 1 if w == 0 else 0
        if zeros > 3:
            raise RuntimeError("wait_ms() stuck at 0")
        clock.sleep_ms(w)
    out[sc["name"]] = reports
print(json.dumps(out))
"""


def scenario(name, pm_kind, windows, pm_faults=None, bme_present=True, start=0):
    """Bytes for a MicroPython run: BME680 register dump and data fields (5 per window, in
    trigger order) and the PM sensor's output by time, all from the emulators."""
    chip = BME680Emulator(noise=Noise(2, 2, 2, 1), seed=3)
    driver = bme_driver.BME680(chip, 0x77, sleep_ms=lambda ms: None)
    regs = bytes(chip.regs).hex()
    fields = []
    for w in range(windows + 1):
        chip.truth = bme_truth(w * MINUTE + 55_000)
        for _ in range(5):
            driver.start(0)
            fields.append(chip.readfrom_mem(0x77, 0x1D, 17).hex())  # completes it
    emulator = EMULATORS[pm_kind](pm_truth, noise_pct=1, seed=4, **(pm_faults or {}))
    chunks = [[t, chunk.hex()] for t, chunk in emulator.timeline((windows + 1) * MINUTE)]
    return {"name": name, "config": {"pm_sensor": pm_kind}, "windows": windows,
            "regs": regs, "fields": fields, "chunks": chunks, "bme_present": bme_present,
            "start": start}


def run_harness_cpython(data):
    """The same harness under CPython, for a bit-for-bit comparison."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(HARNESS, {"DATA": "/dev/null", "__name__": "harness",  # noqa: S102
                       "open": lambda path: io.StringIO(json.dumps(data))})
    return json.loads(out.getvalue().splitlines()[-1])


def test_air_sampler_under_micropython(micropython):
    data = [
        # starts 100 s before the node's ticks_ms() wraps (2**30 ms)
        scenario("sds011", "sds011", 5, start=2**30 - 100_000),
        scenario("pms5003", "pms5003", 4),
        scenario("checksums-no-bme", "sds011", 3, {"bad_checksum_every": 3}, bme_present=False),
        scenario("pm-missing", "pms5003", 2, {"missing": True}),
    ]
    out = micropython.run_json(HARNESS.replace("open(DATA)", 'open("/data/air.json")'),
                               files={"/data/air.json": json.dumps(data)}, timeout_s=120)
    for name in ("sds011", "pms5003"):
        reports = out[name]
        assert len(reports) == {"sds011": 5, "pms5003": 4}[name]
        for t, report in reports:
            assert report["air_faults"] == 0, (name, faults_of(report))
            truth, pm = bme_truth(t - 5000), pm_truth(t - 5000)
            assert abs(report["temperature_c"] - truth.temperature_c) <= 0.1
            assert abs(report["pressure_hpa"] - truth.pressure_hpa) <= 0.5
            assert abs(report["humidity_pct"] - truth.humidity_pct) <= 0.5
            assert report["gas_resistance_ohm"] == pytest.approx(truth.gas_ohm, rel=0.01)
            tol = 0.5 if name == "sds011" else 1.0
            assert abs(report["pm25_ugm3"] - pm.pm25) <= tol
            assert abs(report["pm10_ugm3"] - pm.pm10) <= tol
            assert ("pm1_ugm3" in report) == (name == "pms5003")
    for _, report in out["checksums-no-bme"]:
        assert {"pm_checksum", "bme_missing"} <= faults_of(report)
        assert faults_of(report) <= {"pm_checksum", "bme_missing", "pm_partial"}
        assert "pm25_ugm3" in report and not BME_KEYS & set(report)
    for _, report in out["pm-missing"]:
        assert faults_of(report) == {"pm_missing"}
        assert not PM_KEYS & set(report) and BME_KEYS <= set(report)
    # CPython runs the same harness on the same bytes to the same reports
    assert run_harness_cpython(data) == out


def test_fault_bits_are_distinct_and_fit_the_metric():
    bits = list(air.FAULT_NAMES)
    assert len(set(bits)) == len(bits) and all(b & (b - 1) == 0 for b in bits)
    assert sum(bits) <= metrics.BY_NAME["air_faults"].max
    assert pm_driver.SENSORS.keys() == {"sds011", "pms5003"}
