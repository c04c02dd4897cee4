# The node's self-test, run by the provisioning tool over USB (dordt provision selftest)
# and by enrolment to see which sensors a board really has.  Never imported by a running
# node (main.py), so its code costs no heap in service.
#
# In:  the board's hardware (board.build(), or a hal.Hardware from a test), the node kind.
# Out: sensors(hw, kind) and basics(hw) -> a list of [check, ok, detail] rows;
#      signed_frame(hw) -> (topic, frame bytes): a status frame signed with the node's own
#      key and the next counter of its own FrameCounter (so no later frame reuses it).
# On failure: a check that fails is a row with ok False and a sentence for the technician;
#      only a missing config or key makes signed_frame raise (ConfigError).
#
# RAM: one 2 KB audio block while measuring the microphone; nothing kept.

import gc

from firmware import config, counter, metrics, protocol

BME680_ADDRESS = 0x77  # kits.toml: SDO high (0x76 with SDO low is tried too)
BME680_CHIP_ID_REG = 0xD0
BME680_CHIP_ID = 0x61  # BME680 datasheet §5.3.4
PM_WAIT_MS = 2500  # SDS011 and PMS5003 report once a second in active mode
BLE_SCAN_MS = 1500
MIN_FREE_HEAP = 40000  # TLS alone needs about 40 KB on a Pico W
_STATUS = metrics.BY_NAME


def _row(rows, name, ok, detail):
    rows.append([name, bool(ok), detail])


def basics(hw, root="/"):
    """Heap, clock, config and key: what every node needs."""
    rows = []
    gc.collect()
    free = hw.free_heap()
    _row(rows, "heap", free >= MIN_FREE_HEAP, "%d bytes free (need %d)" % (free, MIN_FREE_HEAP))
    clock = hw.clock
    t0 = clock.ticks_ms()
    clock.sleep_ms(20)
    dt = clock.ticks_diff(clock.ticks_ms(), t0)
    wall = clock.time()
    _row(rows, "clock", 10 <= dt < 1000,
         "ticks advance (%d ms in a 20 ms sleep); wall clock %s" % (
             dt, "set" if wall else "not set yet (the gateway or NTP sets it)"))
    try:
        cfg = config.load(hw.flash)
    except config.ConfigError as exc:
        _row(rows, "config", False, str(exc))
        return rows
    _row(rows, "config", True, "node %s, %s, %s/%s" % (cfg.node, cfg.kind, cfg.zone, cfg.site))
    key = cfg.key
    _row(rows, "key", key is not None and len(key) == protocol.KEY_LEN,
         "node key present (%d bytes, not shown)" % (len(key) if key else 0))
    return rows


def sensors(hw, kind):
    """Does each sensor of `kind` answer?  Rows as in basics()."""
    rows = []
    if kind == "air":
        _bme680(hw, rows)
        _pm(hw, rows)
    elif kind == "noise":
        _microphone(hw, rows)
    elif kind == "crowd":
        _ble(hw, rows)
    else:
        _row(rows, "kind", False, "unknown node kind %r" % (kind,))
    return rows


def _bme680(hw, rows):
    if hw.i2c is None:
        _row(rows, "bme680", False, "the I2C bus did not start: check the board pins")
        return
    buf = bytearray(1)
    for address in (BME680_ADDRESS, 0x76):
        try:
            hw.i2c.readfrom_mem_into(address, BME680_CHIP_ID_REG, buf)
        except OSError:
            continue
        _row(rows, "bme680", buf[0] == BME680_CHIP_ID,
             "chip id 0x%02x at 0x%02x (a BME680 says 0x%02x)" % (buf[0], address,
                                                                BME680_CHIP_ID))
        return
    _row(rows, "bme680", False, "no answer at I2C 0x77 or 0x76: check its wiring (SDA, SCL, "
         "3.3 V, GND)")


def _pm(hw, rows):
    if hw.uart is None:
        _row(rows, "pm", False, "the UART did not start: check the board pins")
        return
    from firmware.drivers import pm

    clock = hw.clock
    found = []
    for make in (pm.SDS011, pm.PMS5003):
        sensor = make(hw.uart)
        found.append(sensor)
    t0 = clock.ticks_ms()
    while clock.ticks_diff(clock.ticks_ms(), t0) < PM_WAIT_MS:
        data = hw.uart.read() if hw.uart.any() else None
        if data:
            for sensor in found:
                sensor.feed(data)
        if any(s.frames for s in found):
            break
        clock.sleep_ms(50)
    for sensor, name in zip(found, ("SDS011", "PMS5003")):
        if sensor.frames:
            _row(rows, "pm", True, "%s frames received" % name)
            return
    _row(rows, "pm", False, "no particulate sensor frame in %d ms: check its 5 V supply, "
         "TX/RX wiring (crossed) and that its fan runs" % PM_WAIT_MS)


def _microphone(hw, rows):
    if hw.i2s is None:
        _row(rows, "microphone", False, "I2S did not start: check the board pins")
        return
    buf = bytearray(2048)
    n = hw.i2s.readinto(buf)
    peak = 0
    distinct = set()
    for i in range(0, n - 3, 4):
        v = buf[i] | buf[i + 1] << 8 | buf[i + 2] << 16 | buf[i + 3] << 24
        if v & 0x80000000:
            v -= 0x100000000
        v >>= 8  # 24-bit samples, left-justified in 32-bit slots (INMP441)
        if len(distinct) < 8:
            distinct.add(v)
        if abs(v) > peak:
            peak = abs(v)
    ok = n > 0 and len(distinct) > 1
    _row(rows, "microphone", ok,
         "%d bytes read, peak %d of 8388607 (24-bit)" % (n, peak) if ok else
         "no signal (%d bytes, all equal): check SD/WS/SCK and L/R to GND" % n)


def _ble(hw, rows):
    if hw.ble is None:
        _row(rows, "ble", False, "the Bluetooth radio did not start")
        return
    heard = [0]

    def seen(addr, rssi):  # counts only: no address is kept (privacy.md)
        heard[0] += 1

    hw.ble.start(seen)
    clock = hw.clock
    t0 = clock.ticks_ms()
    while clock.ticks_diff(clock.ticks_ms(), t0) < BLE_SCAN_MS:
        clock.sleep_ms(50)
    hw.ble.stop()
    _row(rows, "ble", True, "radio scanning: %d advertisements in %d ms%s" % (
        heard[0], BLE_SCAN_MS, "" if heard[0] else " (none nearby is possible)"))


def signed_frame(hw):
    """A status frame signed on the node: (topic, frame).  Raises config.ConfigError when
    the node is not enrolled."""
    cfg = config.load(hw.flash)
    frames = counter.FrameCounter(hw.flash, reserve=cfg.intervals["counter_reserve"])
    frames.boot()
    n = frames.take()
    wall = hw.clock.time()
    flags = protocol.FLAG_STATUS
    if wall is None:
        flags |= protocol.FLAG_TIME_UNSYNCED
        wall = hw.clock.ticks_ms() // 1000
    from firmware.node import FIRMWARE_VERSION_CODE

    gc.collect()
    pairs = [
        (_STATUS["free_heap_bytes"].id, min(hw.free_heap(), 0x7FFFFFFF)),
        (_STATUS["reset_cause"].id, min(hw.reset_cause(), 255)),
        (_STATUS["firmware_version"].id, FIRMWARE_VERSION_CODE),
    ]
    frame = protocol.encode(cfg.key, cfg.kind_id, cfg.node_id, n, int(wall), 0, pairs,
                            cfg.key_id, flags)
    return protocol.topic_up(cfg.zone, cfg.node_id), frame
