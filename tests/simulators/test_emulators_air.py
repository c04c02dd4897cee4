"""The air node's emulators themselves (simulators/emulators/bme680.py, pm.py): that they
behave as the datasheets say a real part does, so the firmware tests built on them mean
something."""

import errno
import random

import pytest

from simulators.emulators.bme680 import (
    CALIBRATIONS,
    AdafruitBus,
    BME680Emulator,
    OutOfRange,
    compensate_humidity,
    compensate_pressure,
    compensate_temperature,
    gas_low,
    generate_calibration,
    invert,
)
from simulators.emulators.pm import (
    PMS5003_SLEEP,
    PMS5003_WAKE,
    SDS011_SLEEP,
    SDS011_WAKE,
    PMS5003Emulator,
    PMTruth,
    PtyLink,
    SDS011Emulator,
)


def test_calibration_bytes_sit_where_the_memory_map_puts_them():
    cal = CALIBRATIONS["wrclark-signed-gas"]
    regs = BME680Emulator(calibration=cal).regs
    assert regs[0xE9] | regs[0xEA] << 8 == cal.par_t1  # par_t1: 0xE9/0xEA
    assert regs[0x8A] | regs[0x8B] << 8 == cal.par_t2  # par_t2: 0x8A/0x8B
    assert regs[0xA0] == cal.par_p10
    assert regs[0xE3] << 4 | (regs[0xE2] & 0x0F) == cal.par_h1  # 0xE2<3:0> / 0xE3
    assert regs[0xE1] << 4 | regs[0xE2] >> 4 == cal.par_h2  # 0xE2<7:4> / 0xE1
    assert regs[0x00] == cal.res_heat_val & 0xFF == 0xE9  # -23, two's complement
    assert (regs[0x02] >> 4) & 3 == cal.res_heat_range
    assert regs[0x04] >> 4 == 0xF  # range_sw_err -1 as a signed nibble
    assert regs[0xD0] == 0x61 and regs[0xF0] == 0x00


@pytest.mark.parametrize("cal", [*CALIBRATIONS.values(), generate_calibration(3)],
                         ids=lambda c: c.name)
def test_inversion_lands_on_the_nearest_adc_word(cal):
    rng = random.Random(cal.name)
    for _ in range(50):
        t, p, h = rng.uniform(-40, 85), rng.uniform(300, 1100), rng.uniform(1, 99)
        g = 10 ** rng.uniform(3, 6.3)
        w = invert(cal, t, p, h, g)
        got_t, t_fine = compensate_temperature(cal, w.adc_t)
        step_t = compensate_temperature(cal, w.adc_t + 1)[0] - got_t
        assert abs(got_t - t) <= step_t / 2 + 1e-9
        assert abs(compensate_pressure(cal, t_fine, w.adc_p) / 100 - p) < 0.005
        assert abs(compensate_humidity(cal, t_fine, w.adc_h) - h) < 0.01
        assert abs(gas_low(cal, w.adc_gas, w.gas_range) / g - 1) < 0.001  # half an LSB
        # the range is chosen so the ADC word sits within 1340 / 3 of mid-scale
        assert abs(w.adc_gas - 512) <= 460
    with pytest.raises(OutOfRange):
        invert(cal, 21, 1013, 50, 1e9)


def test_writes_are_register_value_pairs():
    chip = BME680Emulator()
    chip.writeto_mem(0x77, 0x72, b"\x05\x75\x08")  # 0x72 <- 5, then 0x75 <- 8
    assert chip.regs[0x72] == 0x05 and chip.regs[0x75] == 0x08
    chip.writeto_mem(0x77, 0x8A, b"\x00")  # calibration is read-only
    assert chip.regs[0x8A] == CALIBRATIONS["pimoroni-11"].par_t2 & 0xFF
    assert chip.readfrom_mem(0x77, 0xD0, 1) == b"\x61"
    chip.writeto_mem(0x77, 0xE0, b"\xb6")  # soft reset: control registers back to 0
    assert chip.regs[0x72] == 0 and chip.regs[0x75] == 0


def test_forced_measurement_takes_the_datasheet_time():
    now = [0]
    chip = BME680Emulator(clock=lambda: now[0])
    chip.writeto_mem(0x77, 0x64, bytes([0x59]))  # heat 100 ms
    chip.writeto_mem(0x77, 0x71, b"\x10")  # run_gas
    chip.writeto_mem(0x77, 0x72, b"\x01")  # 1x humidity
    chip.writeto_mem(0x77, 0x74, bytes([(2 << 5) | (1 << 2) | 1]))  # 2x T, 1x P, forced
    status = chip.readfrom_mem(0x77, 0x1D, 1)[0]
    assert status & 0x80 == 0 and status & 0x60 == 0x60  # measuring, gas measuring
    # 4 oversampling cycles x 1.963 ms + 9 x 0.477 ms + 1 ms + 100 ms heater = 114 ms
    now[0] = 113
    assert chip.readfrom_mem(0x77, 0x1D, 1)[0] & 0x80 == 0
    now[0] = 114
    assert chip.readfrom_mem(0x77, 0x1D, 1)[0] & 0x80
    assert chip.regs[0x74] & 0x03 == 0  # back to sleep mode
    assert chip.readfrom_mem(0x77, 0x2B, 1)[0] & 0x30 == 0x30  # gas valid, heater stable


def test_absent_chip_does_not_ack():
    chip = BME680Emulator(present=False)
    with pytest.raises(OSError) as exc:
        chip.readfrom_mem(0x77, 0xD0, 1)
    assert exc.value.errno == errno.ENODEV
    with pytest.raises(OSError):
        AdafruitBus(BME680Emulator()).writeto(0x76, b"")  # an address probe
    assert BME680Emulator().scan() == [0x77]


@pytest.mark.parametrize("cls", [SDS011Emulator, PMS5003Emulator])
def test_pm_emulator_sleeps_wakes_and_replies(cls):
    emu = cls(PMTruth())
    assert len(emu.advance(3000)) == 3 * (10 if cls is SDS011Emulator else 32)
    emu.receive(cls.SLEEP, 3000)
    reply = emu.advance(10_000)
    assert not emu.awake
    if cls is SDS011Emulator:
        assert reply[:4] == b"\xaa\xc5\x06\x01" and reply[4] == 0 and reply[-1] == 0xAB
        assert sum(reply[2:8]) & 0xFF == reply[8]
    else:
        assert reply == b"\x42\x4d\x00\x04\xe4\x00\x01\x77"
    emu.receive(cls.WAKE, 10_000)
    assert emu.advance(10_500).startswith(b"\xaa\xc5" if cls is SDS011Emulator else b"")
    assert len([f for f in emu.sent if f.t_ms > 10_000]) == 0
    emu.advance(12_000)
    assert [f.t_ms for f in emu.sent if f.t_ms > 10_000] == [11_000, 12_000]


def test_pm_commands_match_the_firmware():
    from firmware.drivers import pm

    assert (SDS011_SLEEP, SDS011_WAKE) == (pm.SDS011_SLEEP, pm.SDS011_WAKE)
    assert (PMS5003_SLEEP, PMS5003_WAKE) == (pm.PMS5003_SLEEP, pm.PMS5003_WAKE)


def test_pm_streams_are_deterministic_for_a_seed():
    a = SDS011Emulator(PMTruth(), noise_pct=5, seed=9, garbage_every=2).stream(20)
    b = SDS011Emulator(PMTruth(), noise_pct=5, seed=9, garbage_every=2).stream(20)
    c = SDS011Emulator(PMTruth(), noise_pct=5, seed=10, garbage_every=2).stream(20)
    assert a == b != c


def test_pty_link_carries_bytes_both_ways():
    emu = PMS5003Emulator(PMTruth())
    with PtyLink(emu) as link:
        uart = link.uart()
        assert link.pump(2000) == 64 and uart.any() == 64
        buf = bytearray(64)
        assert uart.readinto(buf, 10) == 10 and uart.any() == 54
        assert buf[:2] == b"\x42\x4d" and len(uart.read(54)) == 54
        uart.write(PMS5003_SLEEP)
        link.pump(2500)
        assert emu.commands == [(2500, "sleep")]
        assert uart.read(8) == b"\x42\x4d\x00\x04\xe4\x00\x01\x77"  # the acknowledgement
        assert link.pump(9000) == 0  # asleep
