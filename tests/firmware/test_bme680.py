"""BME680 driver (firmware/drivers/bme680.py) against the register-level emulator, under
CPython and real MicroPython, and cross-checked with Adafruit's CircuitPython driver.

Acceptance (issue 3): the driver recovers the emulator's truth to +-0.1 degC, +-0.5 hPa,
+-0.5 %RH and +-1 % gas resistance over the sensor's range, for several calibration sets.
Where Adafruit's driver differs from Bosch's API the difference is pinned here (that it
exists, its size, its cause); docs/bme680.md says which is right and why.
"""

import errno
import functools
import json
import math
import random
import struct
from dataclasses import replace
from types import SimpleNamespace

import adafruit_bme680
import pytest

from firmware.drivers import bme680 as drv
from simulators.emulators.bme680 import (
    CALIBRATIONS,
    AdafruitBus,
    BME680Emulator,
    RawWords,
    calibration_dump,
    field_bytes,
    gas_wait_ms,
    generate_calibration,
    heater_register,
    heater_temperature,
    invert,
)

SETS = [*CALIBRATIONS.values(), generate_calibration(1), generate_calibration(7)]
IDS = [c.name for c in SETS]

TOL_T_C = 0.1
TOL_P_HPA = 0.5
TOL_H_PCT = 0.5
TOL_GAS_REL = 0.01


def no_sleep(ms):
    pass


def truths(seed, n):
    """Corners of the specified range plus random points inside it (gas log-uniform)."""
    out = [
        (t, p, h, g)
        for t in (-40.0, 85.0)
        for p in (300.0, 1100.0)
        for h in (0.0, 100.0)
        for g in (1_000.0, 2_000_000.0)
    ]
    rng = random.Random(seed)
    for _ in range(n):
        out.append((rng.uniform(-40, 85), rng.uniform(300, 1100), rng.uniform(0, 100),
                    math.exp(rng.uniform(math.log(1e3), math.log(2e6)))))
    return out


def errors(points, readings):
    """Max |error| per quantity: degC, hPa, %RH, relative gas."""
    worst = [0.0, 0.0, 0.0, 0.0]
    for (t, p, h, g), (rt, rp, rh, rg) in zip(points, readings, strict=True):
        for i, e in enumerate((abs(rt - t), abs(rp / 100 - p), abs(rh - h), abs(rg / g - 1))):
            worst[i] = max(worst[i], e)
    return worst


def assert_within_spec(worst):
    t, p, h, g = worst
    assert t <= TOL_T_C and p <= TOL_P_HPA and h <= TOL_H_PCT and g <= TOL_GAS_REL, worst


# -- CPython: the driver on the live emulator ----------------------------------------------


@pytest.mark.parametrize("cal", SETS, ids=IDS)
def test_driver_recovers_truth_over_the_range(cal):
    chip = BME680Emulator(calibration=cal)
    sensor = drv.BME680(chip, 0x77, sleep_ms=no_sleep)
    points = truths(seed=len(cal.name), n=120)
    readings = []
    for t, p, h, g in points:
        chip.set_truth(temperature_c=t, pressure_hpa=p, humidity_pct=h, gas_ohm=g)
        sensor.measure()
        readings.append((sensor.temperature_c, sensor.pressure_pa, sensor.humidity_pct,
                         sensor.gas_ohm))
    worst = errors(points, readings)
    assert_within_spec(worst)
    # the only error left is the chip's ADC quantisation, far inside the spec
    assert worst[0] < 0.001 and worst[1] < 0.01 and worst[2] < 0.01 and worst[3] < 0.001


class F32(float):
    """A float rounded to IEEE single precision after every operation: what the ESP32-S3's
    MicroPython (MICROPY_FLOAT_IMPL_FLOAT) computes, which the WebAssembly build used in
    these tests (double) does not show."""

    def __new__(cls, x):
        return float.__new__(cls, struct.unpack("f", struct.pack("f", float(x)))[0])


def _f32_op(name):
    forward, reflected = getattr(float, f"__{name}__"), getattr(float, f"__r{name}__")

    def op(a, b):
        r = forward(float(a), float(b))
        return r if r is NotImplemented else F32(r)

    def rop(a, b):
        r = reflected(float(a), float(b))
        return r if r is NotImplemented else F32(r)

    return op, rop


for _name in ("add", "sub", "mul", "truediv"):
    _op, _rop = _f32_op(_name)
    setattr(F32, f"__{_name}__", _op)
    setattr(F32, f"__r{_name}__", _rop)


def test_single_precision_floats_keep_the_spec():
    # Bosch wrote the float variant for C `float`; on a single-precision node the driver's
    # compensation (same code, every step rounded to 24 bits) still meets the spec
    worst = [0.0] * 4
    for cal in SETS:
        c = SimpleNamespace(**{k: F32(v) if k.startswith("par_") else v
                               for k, v in cal.params().items()})
        for t, p, h, g in truths(seed=2, n=80):
            w = invert(cal, t, p, h, g)
            temp, t_fine = drv.temperature(c, F32(w.adc_t))
            assert isinstance(t_fine, F32)
            reading = (temp, drv.pressure(c, t_fine, F32(w.adc_p)),
                       drv.humidity(c, t_fine, F32(w.adc_h)),
                       drv.gas_resistance_low(F32(w.adc_gas), w.gas_range,
                                              F32(cal.range_sw_err)))
            worst = [max(a, b) for a, b in zip(worst, errors([(t, p, h, g)], [reading]))]
    assert_within_spec(worst)
    assert worst[1] < 0.01  # hPa: float32 costs ~0.1 Pa of the 50 Pa allowed


@pytest.mark.parametrize("cal", SETS, ids=IDS)
def test_calibration_is_parsed_as_bosch_does(cal):
    sensor = drv.BME680(BME680Emulator(calibration=cal), 0x77, sleep_ms=no_sleep)
    parsed = {name: getattr(sensor.calibration, name) for name in cal.params()}
    assert parsed == cal.params()


def test_compensation_matches_published_vectors():
    # pimoroni/bme680-python tests/test_compensation.py: Bosch's *integer* variant on the
    # pimoroni-11 calibration: T(501240) = 2669 (0.01 degC), P(353485) = 98712 Pa,
    # H(19019) = 42402 (0.001 %RH), gas(0, 0) = 12946860 ohm (low), 102400000 (high).
    # The float variant agrees to within the integer variant's truncation.
    cal = drv.Calibration(calibration_dump(CALIBRATIONS["pimoroni-11"])[0x8A:0xA1]
                          + calibration_dump(CALIBRATIONS["pimoroni-11"])[0xE1:0xEF]
                          + calibration_dump(CALIBRATIONS["pimoroni-11"])[0x00:0x05])
    t, t_fine = drv.temperature(cal, 501240)
    assert abs(t - 26.69) < 0.01
    assert abs(t_fine - 136667) < 3
    assert abs(drv.pressure(cal, t_fine, 353485) - 98712) < 6  # int variant floors each step
    assert abs(drv.humidity(cal, t_fine, 19019) - 42.402) < 0.01
    assert int(drv.gas_resistance_low(0, 0, 0)) == 12946859  # 12946859.90 (int: 12946860)
    assert drv.gas_resistance_high(0, 0) == 102400000.0


def test_heater_registers():
    # gas_wait: 6-bit count x 1/4/16/64 (datasheet: 0x59 is 100 ms); 4032 ms and up: 0xFF
    assert drv.gas_wait(100) == 0x59
    assert drv.gas_wait(150) == 0x65 and drv.gas_wait_ms(0x65) == 148
    assert drv.gas_wait(63) == 63 and drv.gas_wait(4032) == 0xFF
    for cal in SETS:
        sensor = drv.BME680(BME680Emulator(calibration=cal), 0x77, sleep_ms=no_sleep)
        for target in (200, 320, 400):
            reg = drv.res_heat(sensor.calibration, target, 25)
            assert reg == heater_register(cal, target, 25)  # two implementations agree
            # one register step is ~4.5 degC and the C code truncates
            assert -6 <= heater_temperature(cal, reg, 25) - target <= 0


def test_writes_go_one_register_per_transfer():
    # The BME680 takes a write as (register, value) pairs: a driver writing two bytes in
    # one transfer would set one register and write garbage to another.
    chip = BME680Emulator()
    sensor = drv.BME680(chip, 0x77, sleep_ms=no_sleep)
    chip.writes.clear()
    sensor.set_heater(300, 100)
    sensor.start()
    assert [reg for reg, _ in chip.writes] == [0x74, 0x5A, 0x64, 0x70, 0x71, 0x72, 0x75, 0x74]
    assert chip.regs[0x71] == 0x10  # run_gas for the low-gas variant, nb_conv 0
    assert chip.regs[0x72] == 0b010 and chip.regs[0x75] == 0  # 2x humidity, filter off
    assert chip.writes[-1] == (0x74, (0b100 << 5) | (0b011 << 2) | 1)  # 8x T, 4x P, forced


def test_read_polls_until_new_data():
    chip = BME680Emulator(busy_polls=3)
    sensor = drv.BME680(chip, 0x77, sleep_ms=no_sleep)
    sensor.start(now_ms=0)
    assert [sensor.read(now_ms=10 * i) for i in range(4)] == [False, False, False, True]
    assert abs(sensor.temperature_c - 21.0) < 0.001


def test_missing_chip_is_a_clear_oserror():
    with pytest.raises(OSError) as exc:
        drv.BME680(BME680Emulator(present=False), 0x77, sleep_ms=no_sleep)
    assert exc.value.args[0] == errno.ENODEV
    assert "0x77" in str(exc.value) and "wiring" in str(exc.value)
    with pytest.raises(OSError, match="0x76"):
        drv.BME680(BME680Emulator(address=0x77), 0x76, sleep_ms=no_sleep)


def test_wrong_chip_id_is_a_clear_oserror():
    with pytest.raises(OSError) as exc:
        drv.BME680(BME680Emulator(chip_id=0x60), 0x77, sleep_ms=no_sleep)  # a BME280
    assert exc.value.args[0] == errno.ENODEV
    assert "0x60" in str(exc.value) and "not a BME680" in str(exc.value)


def test_measurement_that_never_completes_times_out():
    now = [0]

    def sleep(ms):
        now[0] += ms

    chip = BME680Emulator(stall=True)
    sensor = drv.BME680(chip, 0x77, sleep_ms=sleep, ticks_ms=lambda: now[0])
    with pytest.raises(OSError) as exc:
        sensor.measure()
    assert exc.value.args[0] == errno.ETIMEDOUT
    assert "no new data" in str(exc.value)
    # bounded: the expected duration plus MEASURE_TIMEOUT_MS, not forever
    assert now[0] <= sensor._duration_ms + drv.MEASURE_TIMEOUT_MS + 20


def test_gas_is_none_unless_valid_and_heater_stable():
    chip = BME680Emulator(heat_stable=False)
    sensor = drv.BME680(chip, 0x77, sleep_ms=no_sleep).measure()
    assert sensor.gas_ohm is None and not sensor.heat_stable and sensor.gas_valid
    assert sensor.temperature_c is not None
    chip.heat_stable = True
    chip.heat_up_ms = 500  # longer than the 148 ms heater time
    assert sensor.measure().gas_ohm is None
    sensor.set_heater(320, 600)
    assert sensor.measure().gas_ohm == pytest.approx(120_000, rel=1e-3)


def test_bme688_variant_uses_the_high_gas_formula():
    chip = BME680Emulator(variant_id=1)
    sensor = drv.BME680(chip, 0x77, sleep_ms=no_sleep)
    assert chip.regs[0x71] == 0x20  # run_gas = 0b10 on the BME688
    for g in (2e3, 5e4, 1e6):
        chip.set_truth(gas_ohm=g)
        assert sensor.measure().gas_ohm == pytest.approx(g, rel=0.005)


def test_skipped_quantity_reads_none():
    sensor = drv.BME680(BME680Emulator(), 0x77, sleep_ms=no_sleep)
    sensor.configure(os_temp=2, os_pres=1, os_hum=0)
    sensor.measure()
    assert sensor.humidity_pct is None and abs(sensor.temperature_c - 21.0) < 0.001
    with pytest.raises(ValueError, match="humidity oversampling"):
        sensor.configure(os_hum=3)


# -- real MicroPython: the same driver on register dumps made here ---------------------------

MP_DRIVER = r"""
import json
from firmware.drivers import bme680

cases = json.load(open("/data/bme680.json"))

class FakeI2C:
    # a BME680 register file; a forced-mode trigger loads the next precomputed data field
    def __init__(self, regs, fields, present=True, stall=False):
        self.regs = bytearray(regs)
        self.fields = fields
        self.k = 0
        self.present = present
        self.stall = stall

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
                if self.stall:
                    self.regs[0x1D] = 0x20
                else:
                    self.regs[0x1D:0x1D + 17] = bytes.fromhex(self.fields[self.k])
                    self.k += 1

now = [0]
def sleep(ms):  # simulated time: the fake chip needs no waiting
    now[0] += ms
def ticks():
    return now[0]

out = {"readings": [], "errors": []}
for case in cases["sets"]:
    i2c = FakeI2C(bytes.fromhex(case["regs"]), case["fields"])
    s = bme680.BME680(i2c, 0x77, sleep_ms=sleep, ticks_ms=ticks)
    rows = []
    for _ in case["fields"]:
        s.measure()
        rows.append([s.temperature_c, s.pressure_pa, s.humidity_pct, s.gas_ohm])
    out["readings"].append(rows)

regs = bytes.fromhex(cases["sets"][0]["regs"])
for name, i2c in (("missing", FakeI2C(regs, [], present=False)),
                  ("wrong_id", FakeI2C(regs[:0xD0] + b"\x60" + regs[0xD1:], [])),
                  ("stall", FakeI2C(regs, [], stall=True))):
    try:
        bme680.BME680(i2c, 0x77, sleep_ms=sleep, ticks_ms=ticks).measure()
        out["errors"].append([name, None, ""])
    except OSError as e:
        out["errors"].append([name, e.args[0], str(e)])
print(json.dumps(out))
"""


def test_driver_recovers_truth_under_micropython(micropython):
    sets, points_per_set = [], []
    for cal in SETS:
        points = truths(seed=len(cal.name) + 1, n=24)
        fields = [field_bytes(invert(cal, *p)).hex() for p in points]
        sets.append({"regs": calibration_dump(cal).hex(), "fields": fields})
        points_per_set.append(points)
    out = micropython.run_json(MP_DRIVER, files={"/data/bme680.json": json.dumps(
        {"sets": sets})})
    for cal, points, rows in zip(SETS, points_per_set, out["readings"], strict=True):
        worst = errors(points, rows)
        assert_within_spec(worst)
        assert worst[0] < 0.001 and worst[3] < 0.001, (cal.name, worst)
    by_name = {name: (code, msg) for name, code, msg in out["errors"]}
    assert by_name["missing"][0] == errno.ENODEV and "0x77" in by_name["missing"][1]
    assert by_name["wrong_id"][0] == errno.ENODEV and "0x60" in by_name["wrong_id"][1]
    assert by_name["stall"][0] == errno.ETIMEDOUT and "no new data" in by_name["stall"][1]


def test_micropython_and_cpython_compensate_identically(micropython):
    # Same bytes in, same numbers out: the node and the host run one implementation.
    cal = CALIBRATIONS["rak1906"]
    points = truths(seed=3, n=10)
    fields = [field_bytes(invert(cal, *p)).hex() for p in points]
    out = micropython.run_json(MP_DRIVER, files={"/data/bme680.json": json.dumps(
        {"sets": [{"regs": calibration_dump(cal).hex(), "fields": fields}]})})
    chip = BME680Emulator(calibration=cal)
    sensor = drv.BME680(chip, 0x77, sleep_ms=no_sleep)
    for (t, p, h, g), row in zip(points, out["readings"][0], strict=True):
        chip.set_truth(temperature_c=t, pressure_hpa=p, humidity_pct=h, gas_ohm=g)
        sensor.measure()
        ours = [sensor.temperature_c, sensor.pressure_pa, sensor.humidity_pct, sensor.gas_ohm]
        assert row == pytest.approx(ours, rel=1e-12, abs=1e-9)


# -- Adafruit's driver on the same registers -------------------------------------------------


@pytest.fixture
def fast_adafruit(monkeypatch):
    # Adafruit sleeps 5-10 ms per register poll; the emulator needs no settling time
    monkeypatch.setattr(adafruit_bme680, "delay_microseconds", lambda us: None)
    monkeypatch.setattr(adafruit_bme680.time, "sleep", lambda s: None)


def adafruit_on(chip):
    sensor = adafruit_bme680.Adafruit_BME680_I2C(AdafruitBus(chip), 0x77)
    sensor._min_refresh_time = 0  # re-measure on every property read
    return sensor


@functools.cache
def compare(cal, n=60, seed=5):
    """[(ours, adafruit)] per quantity for the same emulated readings (memoised: several
    tests look at different columns of the same run)."""
    chip = BME680Emulator(calibration=cal)
    ada = adafruit_on(chip)
    ours = drv.BME680(chip, 0x77, sleep_ms=no_sleep)
    rows = []
    for t, p, h, g in truths(seed, n)[16:]:  # inside the range (Adafruit clamps at edges)
        chip.set_truth(temperature_c=t, pressure_hpa=p, humidity_pct=h, gas_ohm=g)
        ours.measure()
        rows.append({
            "t": (ours.temperature_c, ada.temperature),
            "p": (ours.pressure_pa / 100, ada.pressure),
            "h": (ours.humidity_pct, ada.humidity),
            "g": (ours.gas_ohm, ada.gas),
            "raw": (ours.adc_t, ours.adc_h, ours.adc_gas, ours.gas_range),
        })
    return rows


@pytest.mark.parametrize("cal", SETS, ids=IDS)
def test_adafruit_temperature_is_0_005_degc_high(fast_adafruit, cal):
    # Adafruit ports Bosch's *integer* formula to floats but keeps its rounding term:
    # ((t_fine * 5) + 128) / 256 without the integer shift adds half an LSB, +0.005 degC,
    # and int() truncates t_fine first (up to 1/5120 degC).
    diffs = [a - o for o, a in (r["t"] for r in compare(cal))]
    assert all(0.0045 < d < 0.0053 for d in diffs), (min(diffs), max(diffs))


@pytest.mark.parametrize("cal", SETS, ids=IDS)
def test_adafruit_pressure_agrees(fast_adafruit, cal):
    # The float port of Bosch's integer pressure formula is algebraically the float one;
    # only its truncated t_fine shows, far below the 0.01 hPa the registry carries.
    diffs = [abs(a - o) for o, a in (r["p"] for r in compare(cal))]
    assert max(diffs) < 0.001


def adafruit_h1_h2(cal):
    """par_h1/par_h2 as Adafruit parses them: the nibbles of 0xE2 swapped, and H1 keeps a
    fractional part (adafruit_bme680.py _read_calibration, "flip around H1 & H2")."""
    regs = cal.registers()
    e1, e2, e3 = regs[0xE1], regs[0xE2], regs[0xE3]
    return (e3 * 256 + e2) / 16, e1 * 16 + (e2 & 0x0F)


@pytest.mark.parametrize("cal", SETS, ids=IDS)
def test_adafruit_humidity_swaps_the_h1_h2_nibbles(fast_adafruit, cal):
    rows = compare(cal)
    h1, h2 = adafruit_h1_h2(cal)
    expected_diff = 0.0
    for r in rows:
        ours, ada = r["h"]
        t_fine = (r["t"][0]) * 5120.0
        adc_h = r["raw"][1]
        bad = replace(cal, par_h1=h1, par_h2=h2)
        predicted = drv.humidity(bad, t_fine, adc_h)
        # the whole difference is the mis-parsed calibration (plus Adafruit's +0.005 degC)
        assert ada == pytest.approx(predicted, abs=0.003)
        expected_diff = max(expected_diff, abs(ada - ours))
    same = (h1, h2) == (cal.par_h1, cal.par_h2)
    assert same == (expected_diff < 0.003)
    if cal.name == "wrclark-signed-gas":  # 0xE2 = 0xFA: nibbles 15 and 10
        assert expected_diff > 1.0
    if cal.name == "pimoroni-11":  # 0xE2 = 0x54
        assert 0.05 < expected_diff < 0.5


@pytest.mark.parametrize("cal", SETS, ids=IDS)
def test_adafruit_gas_reads_range_switching_error_unsigned(fast_adafruit, cal):
    rows = compare(cal)
    rel = [a / o - 1 for o, a in (r["g"] for r in rows)]
    if cal.range_sw_err >= 0:
        # same formula (Bosch's integer variant ported to floats) rounded to whole ohms
        assert max(abs(x) for x in rel) < 0.0006
        return
    # register 0x04 bits 7:4 are signed: Adafruit's (reg & 0xF0) / 16 turns -1 into 15
    for r in rows:
        adc, rng = r["raw"][2], r["raw"][3]
        assert r["g"][1] == pytest.approx(drv.gas_resistance_low(adc, rng,
                                                                 cal.range_sw_err + 16), rel=6e-4)
    assert max(abs(x) for x in rel) > 0.01  # beyond the +-1 % acceptance


@pytest.mark.parametrize("cal", SETS, ids=IDS)
def test_adafruit_heater_register_reads_res_heat_val_unsigned(fast_adafruit, cal):
    chip = BME680Emulator(calibration=cal)
    adafruit_on(chip)  # sets 320 degC / 150 ms at 25 degC ambient
    ada_reg = chip.regs[0x5A]
    ours = drv.res_heat(drv.BME680(chip, 0x77, sleep_ms=no_sleep).calibration, 320, 25)
    if cal.res_heat_val >= 0:
        assert ada_reg == ours
        return
    assert ada_reg == heater_register(replace(cal, res_heat_val=cal.res_heat_val + 256), 320, 25)
    # the chip then heats to far less than the 320 degC asked for
    assert heater_temperature(cal, ada_reg, 25) < 250 <= heater_temperature(cal, ours, 25)


def test_adafruit_reports_gas_without_a_stable_heater(fast_adafruit):
    chip = BME680Emulator(heat_stable=False)
    ada = adafruit_on(chip)
    ours = drv.BME680(chip, 0x77, sleep_ms=no_sleep).measure()
    assert isinstance(ada.gas, int) and ada.gas > 0  # a number, though heat_stab was 0
    assert ours.gas_ohm is None


def test_emulated_registers_are_what_adafruit_reads(fast_adafruit):
    # Adafruit reads the same calibration and raw words through busio-style transfers
    chip = BME680Emulator(calibration=CALIBRATIONS["rak1906"])
    ada = adafruit_on(chip)
    assert ada._chip_variant == 0
    assert ada._temp_calibration == [26012.0, 26672.0, 3.0]
    assert ada._pressure_calibration[0] == 37076.0 and ada._sw_err == 2.0
    assert ada.temperature == pytest.approx(21.005, abs=0.001)  # +0.005: see above
    w = invert(CALIBRATIONS["rak1906"], 21.0, 1013.25, 50.0, 120_000.0)
    assert (ada._adc_temp, ada._adc_pres, ada._adc_hum) == (w.adc_t, w.adc_p, w.adc_h)
    assert (ada._adc_gas, ada._gas_range) == (w.adc_gas, w.gas_range)
    assert gas_wait_ms(chip.regs[0x64]) == 148 and isinstance(w, RawWords)
