# Bosch BME680 driver over I2C: temperature, pressure, humidity and gas resistance.
#
# In:  an I2C bus object with MicroPython's `machine.I2C` memory methods
#      (`readfrom_mem_into(addr, reg, buf)`, `writeto_mem(addr, reg, buf)`), the chip's
#      address (0x77 with SDO high, 0x76 with SDO low) and, for the blocking `measure()`
#      only, `sleep_ms` / `ticks_ms` callables.
# Out: after a forced-mode measurement, `temperature_c`, `pressure_pa`, `humidity_pct`
#      and `gas_ohm` (None unless the gas conversion was valid and the heater stable),
#      plus the raw ADC words (`adc_t`, `adc_p`, `adc_h`, `adc_gas`, `gas_range`).
# On failure: OSError with an errno and a message naming the address: ENODEV when no chip
#      answers or the chip id is not the BME680's, ETIMEDOUT when a measurement never
#      reports new data, EIO for the other bus errors the I2C object raises.
#
# The compensation is Bosch's BME68x Sensor API (bme68x.c v4.4.x, github.com/boschsensortec/
# BME68x_SensorAPI), **floating-point variant** (`BME68X_USE_FPU`, which bme68x_defs.h
# enables by default).  Why not the integer variant: (1) its temperature and gas formulas
# need 64-bit intermediates, which MicroPython holds as heap-allocated big ints on a 32-bit
# port (small ints are 31 bits), so it is not cheaper on a node; the ESP32-S3 has a
# single-precision FPU and Bosch wrote the float variant for exactly that `float`;
# (2) its pressure formula multiplies `(p >> 8)**3 * par_p10` in int32, which overflows
# above about 1065 hPa with a typical par_p10 of 30 (C undefined behaviour; Python ints
# would silently compute something else); (3) it quantises to 0.01 degC, 1 Pa, 0.001 %RH,
# 1 ohm, which the float variant does not.  Gas resistance follows the variant id
# (register 0xF0): the BME680 is the low-gas variant (`calc_gas_resistance_low`, with the
# range switching error and the per-range correction tables `lookup_k1_range` /
# `lookup_k2_range`); a BME688 (variant 1) gets `calc_gas_resistance_high`.
# docs/bme680.md explains the choices and how this differs from Adafruit's driver.
#
# Register addresses and bit fields are those of the BME680 datasheet (BST-BME680-DS001),
# "Memory map" and "Register description"; the I2C framing is its "I2C interface" section:
# a read auto-increments the register address, a write is a list of (register, value)
# pairs, so this driver writes one register per `writeto_mem` call.
#
# RAM: one 42-byte scratch buffer (calibration, then each 17-byte data field) and a 1-byte
# write buffer, allocated in the constructor; ~30 attributes.  About 1 KB per instance.
# A measurement allocates only the floats of the compensation (boxed on ESP32 ports).

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_CHIP_ID = const(0x61)  # chip_id register value of every BME68x
_VARIANT_GAS_HIGH = const(0x01)  # variant_id of the BME688; the BME680 reads 0x00

# Registers (datasheet "Memory map"; Bosch bme68x_defs.h names in brackets)
_REG_COEFF3 = const(0x00)  # res_heat_val .. range_sw_err, 5 bytes [BME68X_REG_COEFF3]
_REG_FIELD0 = const(0x1D)  # meas_status_0 .. gas_r_lsb, 17 bytes [BME68X_REG_FIELD0]
_REG_RES_HEAT0 = const(0x5A)  # heater set-point, profile 0
_REG_GAS_WAIT0 = const(0x64)  # heater duration, profile 0
_REG_CTRL_GAS_0 = const(0x70)  # heat_off (bit 3)
_REG_CTRL_GAS_1 = const(0x71)  # run_gas (bit 4, BME680; bits 5:4 = 0b10 on BME688), nb_conv
_REG_CTRL_HUM = const(0x72)  # osrs_h (bits 2:0)
_REG_CTRL_MEAS = const(0x74)  # osrs_t (7:5), osrs_p (4:2), mode (1:0)
_REG_CONFIG = const(0x75)  # filter (4:2)
_REG_COEFF1 = const(0x8A)  # par_t2 .. par_p10, 23 bytes
_REG_CHIP_ID = const(0xD0)
_REG_SOFT_RESET = const(0xE0)
_REG_COEFF2 = const(0xE1)  # par_h2 .. par_g3, 14 bytes
_REG_VARIANT_ID = const(0xF0)

_SOFT_RESET_CMD = const(0xB6)
_RESET_WAIT_MS = const(10)  # BME68X_PERIOD_RESET: 10 ms after a soft reset
_LEN_COEFF1 = const(23)
_LEN_COEFF2 = const(14)
_LEN_COEFF3 = const(5)
_LEN_FIELD = const(17)

_NEW_DATA = const(0x80)  # meas_status_0 bit 7: new_data_0
_MEASURING = const(0x20)  # meas_status_0 bit 5
_GAS_VALID = const(0x20)  # gas_r_lsb bit 5: gas_valid_r
_HEAT_STAB = const(0x10)  # gas_r_lsb bit 4: heat_stab_r
_GAS_RANGE = const(0x0F)  # gas_r_lsb bits 3:0
_MODE_FORCED = const(0x01)

# How much longer than the datasheet's measurement time to wait for new_data before
# calling the measurement lost (bme68x.c polls up to 5 x 10 ms; we allow more for a slow
# bus or a late poll).
MEASURE_TIMEOUT_MS = const(500)

# Oversampling and filter register codes (datasheet tables "osrs_x" and "filter")
_OSRS = (0, 1, 2, 4, 8, 16)  # code -> number of samples
_FILTER = (0, 1, 3, 7, 15, 31, 63, 127)  # code -> filter size

# Range switching correction of the low-gas variant (bme68x.c, calc_gas_resistance_low,
# float variant): per gas_range, in percent.
_LOOKUP_K1_RANGE = (
    0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, -0.8, 0.0, 0.0, -0.2, -0.5, 0.0, -1.0, 0.0, 0.0,
)
_LOOKUP_K2_RANGE = (
    0.0, 0.0, 0.0, 0.0, 0.1, 0.7, 0.0, -0.8, -0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
)

try:
    import errno as _errno

    _ENODEV = _errno.ENODEV
    _ETIMEDOUT = _errno.ETIMEDOUT
    _EINVAL = _errno.EINVAL
except (ImportError, AttributeError):  # pragma: no cover - every port we use has errno
    _ENODEV, _ETIMEDOUT, _EINVAL = 19, 110, 22


def _s8(b):
    return b - 256 if b > 127 else b


def _u16(lsb, msb):
    return (msb << 8) | lsb


def _s16(lsb, msb):
    v = (msb << 8) | lsb
    return v - 65536 if v > 32767 else v


class Calibration:
    """The chip's factory trimming parameters, as bme68x.c `get_calib_data` parses them
    from the 42 bytes at 0x8A (23), 0xE1 (14) and 0x00 (5)."""

    def __init__(self, c):
        # c: the 42 bytes in that order; indices are BME68X_IDX_* of bme68x_defs.h
        self.par_t1 = _u16(c[31], c[32])
        self.par_t2 = _s16(c[0], c[1])
        self.par_t3 = _s8(c[2])
        self.par_p1 = _u16(c[4], c[5])
        self.par_p2 = _s16(c[6], c[7])
        self.par_p3 = _s8(c[8])
        self.par_p4 = _s16(c[10], c[11])
        self.par_p5 = _s16(c[12], c[13])
        self.par_p6 = _s8(c[15])
        self.par_p7 = _s8(c[14])
        self.par_p8 = _s16(c[18], c[19])
        self.par_p9 = _s16(c[20], c[21])
        self.par_p10 = c[22]
        # par_h1 and par_h2 are 12 bits each and share register 0xE2: par_h1 takes its
        # low nibble, par_h2 its high nibble (bme68x.c; Bosch in BME680_driver issue #1).
        self.par_h1 = (c[25] << 4) | (c[24] & 0x0F)
        self.par_h2 = (c[23] << 4) | (c[24] >> 4)
        self.par_h3 = _s8(c[26])
        self.par_h4 = _s8(c[27])
        self.par_h5 = _s8(c[28])
        self.par_h6 = c[29]
        self.par_h7 = _s8(c[30])
        self.par_gh1 = _s8(c[35])
        self.par_gh2 = _s16(c[33], c[34])
        self.par_gh3 = _s8(c[36])
        self.res_heat_val = _s8(c[37])  # signed (int8_t in bme68x_calib_data)
        self.res_heat_range = (c[39] & 0x30) >> 4
        # range_sw_err: a signed 4-bit number in bits 7:4 of register 0x04
        self.range_sw_err = _s8(c[41] & 0xF0) // 16


# -- compensation: bme68x.c, BME68X_USE_FPU variant ----------------------------------------


def temperature(cal, adc_t):
    """(degC, t_fine) from the 20-bit temperature ADC word (bme68x.c calc_temperature)."""
    var1 = (adc_t / 16384.0 - cal.par_t1 / 1024.0) * cal.par_t2
    d = adc_t / 131072.0 - cal.par_t1 / 8192.0
    var2 = d * d * (cal.par_t3 * 16.0)
    t_fine = var1 + var2
    return t_fine / 5120.0, t_fine


def pressure(cal, t_fine, adc_p):
    """Pascal from the 20-bit pressure ADC word (bme68x.c calc_pressure)."""
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * (cal.par_p6 / 131072.0)
    var2 = var2 + var1 * cal.par_p5 * 2.0
    var2 = var2 / 4.0 + cal.par_p4 * 65536.0
    var1 = (cal.par_p3 * var1 * var1 / 16384.0 + cal.par_p2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * cal.par_p1
    if int(var1) == 0:  # as bme68x.c: avoid a division by zero on a blank calibration
        return 0.0
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = cal.par_p9 * p * p / 2147483648.0
    var2 = p * (cal.par_p8 / 32768.0)
    q = p / 256.0
    var3 = q * q * q * (cal.par_p10 / 131072.0)
    return p + (var1 + var2 + var3 + cal.par_p7 * 128.0) / 16.0


def humidity(cal, t_fine, adc_h):
    """%RH, clamped to 0..100, from the 16-bit humidity ADC word (calc_humidity)."""
    temp_comp = t_fine / 5120.0
    var1 = adc_h - (cal.par_h1 * 16.0 + cal.par_h3 / 2.0 * temp_comp)
    var2 = var1 * (
        cal.par_h2
        / 262144.0
        * (1.0 + cal.par_h4 / 16384.0 * temp_comp + cal.par_h5 / 1048576.0 * temp_comp * temp_comp)
    )
    var3 = cal.par_h6 / 16384.0
    var4 = cal.par_h7 / 2097152.0
    h = var2 + (var3 + var4 * temp_comp) * var2 * var2
    if h > 100.0:
        return 100.0
    if h < 0.0:
        return 0.0
    return h


def gas_resistance_low(adc_gas, gas_range, range_sw_err):
    """Ohm, BME680 (low-gas variant): bme68x.c calc_gas_resistance_low, float variant."""
    var1 = 1340.0 + 5.0 * range_sw_err
    var2 = var1 * (1.0 + _LOOKUP_K1_RANGE[gas_range] / 100.0)
    var3 = 1.0 + _LOOKUP_K2_RANGE[gas_range] / 100.0
    return 1.0 / (var3 * 0.000000125 * (1 << gas_range) * ((adc_gas - 512.0) / var2 + 1.0))


def gas_resistance_high(adc_gas, gas_range):
    """Ohm, BME688 (high-gas variant): bme68x.c calc_gas_resistance_high, float variant."""
    var1 = 262144 >> gas_range
    var2 = 4096 + (adc_gas - 512) * 3
    return 1000000.0 * var1 / var2


def res_heat(cal, target_c, amb_c):
    """res_heat_x register value for a heater target (degC, capped at 400) at ambient
    `amb_c` (bme68x.c calc_res_heat, float variant; datasheet "Gas sensor heating")."""
    if target_c > 400:
        target_c = 400
    var1 = cal.par_gh1 / 16.0 + 49.0
    var2 = cal.par_gh2 / 32768.0 * 0.0005 + 0.00235
    var3 = cal.par_gh3 / 1024.0
    var4 = var1 * (1.0 + var2 * target_c)
    var5 = var4 + var3 * amb_c
    r = 3.4 * (
        var5 * (4.0 / (4.0 + cal.res_heat_range)) * (1.0 / (1.0 + cal.res_heat_val * 0.002))
        - 25.0
    )
    return int(r) & 0xFF  # the C code casts to uint8_t


def gas_wait(duration_ms):
    """gas_wait_x register value: 6-bit count times a multiplier 1, 4, 16 or 64 in bits
    7:6 (bme68x.c calc_gas_wait); 4032 ms and longer give the maximum, 0xFF."""
    if duration_ms >= 0xFC0:
        return 0xFF
    factor = 0
    while duration_ms > 0x3F:
        duration_ms //= 4
        factor += 1
    return duration_ms + factor * 64


def gas_wait_ms(reg):
    """Heating time in ms that a gas_wait_x register value stands for."""
    return (reg & 0x3F) << (2 * (reg >> 6))


def _osrs_code(samples, name):
    for code in range(len(_OSRS)):
        if _OSRS[code] == samples:
            return code
    raise ValueError("BME680 %s oversampling must be one of 0, 1, 2, 4, 8, 16, got %r"
                     % (name, samples))


class BME680:
    """One BME680 (or BME688) on an I2C bus, measured in forced mode.

    Construction resets the chip, checks its id and reads its calibration, like
    bme68x_init().  Then `configure()` and `set_heater()` (both optional: defaults are
    applied here), and per measurement either `start()` + `read()` (non-blocking) or
    `measure()` (blocking)."""

    def __init__(self, i2c, address=0x77, sleep_ms=None, ticks_ms=None):
        self._i2c = i2c
        self.address = address
        self._buf = bytearray(_LEN_COEFF1 + _LEN_COEFF2 + _LEN_COEFF3)
        self._mv = memoryview(self._buf)
        self._field = self._mv[0:_LEN_FIELD]
        self._one = bytearray(1)
        self._sleep_ms = sleep_ms or _default_sleep_ms
        self._ticks_ms = ticks_ms or _default_ticks_ms
        self._started_ms = None
        self._duration_ms = 0
        self.temperature_c = self.pressure_pa = self.humidity_pct = None
        self.gas_ohm = None
        self.gas_valid = self.heat_stable = False
        self.adc_t = self.adc_p = self.adc_h = self.adc_gas = self.gas_range = 0
        self.meas_index = 0

        self._write(_REG_SOFT_RESET, _SOFT_RESET_CMD, "soft reset")
        self._sleep_ms(_RESET_WAIT_MS)
        chip_id = self._read_byte(_REG_CHIP_ID, "reading the chip id")
        if chip_id != _CHIP_ID:
            raise OSError(_ENODEV, "chip at I2C 0x%02x has id 0x%02x, not a BME680 (0x61): "
                          "check the address (0x76/0x77) and the part" % (address, chip_id))
        self.variant_id = self._read_byte(_REG_VARIANT_ID, "reading the variant id")
        mv = self._mv
        self._read_into(_REG_COEFF1, mv[0:_LEN_COEFF1], "reading calibration")
        self._read_into(_REG_COEFF2, mv[_LEN_COEFF1:_LEN_COEFF1 + _LEN_COEFF2],
                        "reading calibration")
        self._read_into(_REG_COEFF3, mv[_LEN_COEFF1 + _LEN_COEFF2:], "reading calibration")
        self.calibration = Calibration(self._buf)
        # Defaults: Bosch's forced_mode example uses 2x T, 1x P, 16x H; we take 8x T, 4x P,
        # 2x H (airrohr's and Adafruit's choice) with the IIR filter off, since forced-mode
        # samples minutes apart gain nothing from it.
        self.configure()
        self.set_heater(320, 150)

    # -- bus helpers -----------------------------------------------------------------------

    def _fail(self, exc, doing):
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else _ENODEV
        return OSError(code, "BME680 at I2C 0x%02x: %s failed (%s): check wiring, power "
                       "and the address (0x76/0x77)" % (self.address, doing, exc))

    def _write(self, reg, value, doing="writing"):
        self._one[0] = value
        try:
            self._i2c.writeto_mem(self.address, reg, self._one)
        except OSError as exc:
            raise self._fail(exc, doing) from None

    def _read_into(self, reg, buf, doing="reading"):
        try:
            self._i2c.readfrom_mem_into(self.address, reg, buf)
        except OSError as exc:
            raise self._fail(exc, doing) from None

    def _read_byte(self, reg, doing="reading"):
        self._read_into(reg, self._one, doing)
        return self._one[0]

    # -- configuration ---------------------------------------------------------------------

    def configure(self, os_temp=8, os_pres=4, os_hum=2, filter_size=0):
        """Oversampling (0 skips the quantity, 1..16) and IIR filter size (0, 1, 3, 7, ..,
        127).  Written to the chip at each `start()`."""
        self._osrs_t = _osrs_code(os_temp, "temperature")
        self._osrs_p = _osrs_code(os_pres, "pressure")
        self._osrs_h = _osrs_code(os_hum, "humidity")
        for code in range(len(_FILTER)):
            if _FILTER[code] == filter_size:
                self._filter = code
                break
        else:
            raise ValueError("BME680 filter size must be one of 0, 1, 3, 7, 15, 31, 63, 127, "
                             "got %r" % (filter_size,))
        # bme68x_get_meas_dur: 1963 us per oversampling cycle, TPH switching 4 x 477 us,
        # gas measurement 5 x 477 us, wake-up 1 ms (forced mode)
        cycles = _OSRS[self._osrs_t] + _OSRS[self._osrs_p] + _OSRS[self._osrs_h]
        self._tph_us = cycles * 1963 + 477 * 4 + 477 * 5 + 1000

    def set_heater(self, target_c, duration_ms, amb_c=25):
        """Heater profile 0 for forced mode (bme68x_set_heatr_conf): target temperature in
        degC (<= 400) held for `duration_ms` (<= 4032), at ambient `amb_c`.  `target_c`
        None turns the heater and the gas measurement off."""
        if target_c is None:
            self._heater_ms = 0
            self._write(_REG_CTRL_GAS_0, 0x08, "heater off")  # heat_off = 1
            self._write(_REG_CTRL_GAS_1, 0x00, "gas off")
            return
        if not 0 < duration_ms <= 4032:
            raise ValueError("BME680 heater duration must be 1..4032 ms, got %r"
                             % (duration_ms,))
        self.res_heat_0 = res_heat(self.calibration, target_c, amb_c)
        self.gas_wait_0 = gas_wait(duration_ms)
        self._heater_ms = gas_wait_ms(self.gas_wait_0)
        # bme68x_set_heatr_conf: set-points first, in sleep mode, then ctrl_gas_0/1 with
        # the heater on, nb_conv = 0 (profile 0) and run_gas for this variant
        self._write(_REG_CTRL_MEAS, (self._osrs_t << 5) | (self._osrs_p << 2), "sleep mode")
        self._write(_REG_RES_HEAT0, self.res_heat_0, "heater set-point")
        self._write(_REG_GAS_WAIT0, self.gas_wait_0, "heater duration")
        self._write(_REG_CTRL_GAS_0, 0x00, "heater on")
        run_gas = 0x20 if self.variant_id == _VARIANT_GAS_HIGH else 0x10
        self._write(_REG_CTRL_GAS_1, run_gas, "gas on")

    # -- measuring -------------------------------------------------------------------------

    def start(self, now_ms=None):
        """Trigger one forced-mode measurement; returns the ms until its result is due.
        ctrl_hum is written before ctrl_meas: it takes effect only with the ctrl_meas
        write (datasheet, "ctrl_hum")."""
        self._write(_REG_CTRL_HUM, self._osrs_h, "ctrl_hum")
        self._write(_REG_CONFIG, self._filter << 2, "config")
        self._write(_REG_CTRL_MEAS, (self._osrs_t << 5) | (self._osrs_p << 2) | _MODE_FORCED,
                    "starting a measurement")
        self._started_ms = self._ticks_ms() if now_ms is None else now_ms
        self._duration_ms = (self._tph_us + 999) // 1000 + self._heater_ms
        return self._duration_ms

    def read(self, now_ms=None):
        """Read the result of `start()`: True when new data was read and compensated,
        False when the chip is still measuring.  Raises OSError(ETIMEDOUT) once the result
        is MEASURE_TIMEOUT_MS overdue."""
        if self._started_ms is None:
            raise OSError(_EINVAL, "BME680 at I2C 0x%02x: read() before start()"
                          % self.address)
        f = self._field
        self._read_into(_REG_FIELD0, f, "reading the data registers")
        if not f[0] & _NEW_DATA:
            now = self._ticks_ms() if now_ms is None else now_ms
            late = _ticks_diff(now, self._started_ms) - self._duration_ms
            if late > MEASURE_TIMEOUT_MS:
                self._started_ms = None
                raise OSError(_ETIMEDOUT, "BME680 at I2C 0x%02x: no new data %d ms after a "
                              "forced measurement (status 0x%02x); the chip may be stuck "
                              "or losing power" % (self.address, late + self._duration_ms,
                                                   f[0]))
            return False
        self._started_ms = None
        self.meas_index = f[1]
        # datasheet "Data registers": 20-bit P and T (msb, lsb, xlsb[7:4]), 16-bit H,
        # 10-bit gas ADC (gas_r_msb, gas_r_lsb[7:6]); BME688 gas in 0x2C/0x2D
        self.adc_p = (f[2] << 12) | (f[3] << 4) | (f[4] >> 4)
        self.adc_t = (f[5] << 12) | (f[6] << 4) | (f[7] >> 4)
        self.adc_h = (f[8] << 8) | f[9]
        g = 15 if self.variant_id == _VARIANT_GAS_HIGH else 13
        self.adc_gas = (f[g] << 2) | (f[g + 1] >> 6)
        self.gas_range = f[g + 1] & _GAS_RANGE
        self.gas_valid = bool(f[g + 1] & _GAS_VALID)
        self.heat_stable = bool(f[g + 1] & _HEAT_STAB)
        cal = self.calibration
        # a skipped quantity (oversampling 0) reads 0x80000 / 0x8000: report None
        if self._osrs_t:
            self.temperature_c, t_fine = temperature(cal, self.adc_t)
        else:
            self.temperature_c, t_fine = None, temperature(cal, self.adc_t)[1]
        self.pressure_pa = pressure(cal, t_fine, self.adc_p) if self._osrs_p else None
        self.humidity_pct = humidity(cal, t_fine, self.adc_h) if self._osrs_h else None
        if self._heater_ms and self.gas_valid and self.heat_stable:
            if self.variant_id == _VARIANT_GAS_HIGH:
                self.gas_ohm = gas_resistance_high(self.adc_gas, self.gas_range)
            else:
                self.gas_ohm = gas_resistance_low(self.adc_gas, self.gas_range,
                                                  cal.range_sw_err)
        else:
            self.gas_ohm = None
        return True

    def measure(self):
        """Blocking: start, wait, read.  Raises OSError(ETIMEDOUT) if no data comes."""
        self._sleep_ms(self.start())
        while not self.read():
            self._sleep_ms(10)  # BME68X_PERIOD_POLL
        return self


try:
    from time import sleep_ms as _default_sleep_ms  # type: ignore
    from time import ticks_diff as _ticks_diff  # type: ignore
    from time import ticks_ms as _default_ticks_ms  # type: ignore
except ImportError:  # CPython
    import time as _time

    def _default_sleep_ms(ms):
        _time.sleep(ms / 1000)

    def _default_ticks_ms():
        return _time.time_ns() // 1000000

    def _ticks_diff(a, b):
        return a - b
