"""The virtual board: real MicroPython behind a pty, to practise on and to test provisioning.

In:  a host directory that is the board's flash, a board profile (hardware/data/boards), and
optionally a stable path (`link`) for the port.
Out: a running board whose serial port (`.port`) mpremote and `dordt provision` open like a
USB board's: tools/micropython/board.mjs runs MicroPython 1.27 (WebAssembly, in Node) with
the port's own friendly and raw REPL, and this module bridges a pty to it.  The board
carries emulated hardware as "ROM" modules (on sys.path, not in its file system):
`machine` (I2C with a BME680 at 0x77, UART with an SDS011 or PMS5003, I2S microphone
hearing a 1 kHz tone at 94 dB SPL, Pin, WDT, RTC, unique_id, reset_cause, freq, reset),
`bluetooth` (passive scans delivering phones' advertisements), `network` (a WLAN that
joins only when the board is made with `wifi=True` or told to), `socket` (TCP to
127.0.0.1 only, carried by the host: provisioning/vboard_net.py), micropython-lib's
`umqtt.simple` (as an ESP32 image freezes it; fetched by `make setup-test`) and `vboard`
(which profile it emulates).  Their data are made here by the emulators of
simulators/emulators/, which cannot run under MicroPython (dataclasses): register dumps,
measurement fields, sensor frames, PCM and advertisements.

Network: a node on the board talks MQTT to a real broker on this machine through the
unmodified firmware/board.py (UmqttClient over umqtt.simple over `socket`): board.mjs
sends each socket call down a pipe pair to this process (`VirtualBoard.net`, a
vboard_net.NetLink), which makes it on a real TCP socket and answers within the socket's
timeout.  Any address but 127.0.0.1 is refused with OSError(EHOSTUNREACH); a receive past
its timeout raises OSError(ETIMEDOUT); unplugging, resetting or killing the board closes
its connections (the broker sees them drop).  No TLS (`ssl`), UDP or server sockets.

A running board leaves a discovery record (JSON) in the runtime directory
($DORDT_VIRTUAL_BOARDS_DIR, else $XDG_RUNTIME_DIR/dordt/virtual-boards, else
~/.cache/dordt/virtual-boards) so `dordt provision ports` can list it beside USB ports:
`running_boards()`.

Faults a technician meets with a real cable are made on purpose: `unplug()` (the host's
open port gets I/O errors, the board loses power), `plug()`, `reset()` (hard reset: the
interpreter restarts, flash kept), `drop_after(n)` (the link drops after n more bytes from
the host).

On failure: a missing Node or npm package is a UserError saying to run `make setup`; a
board whose Node process dies is seen by the host as an unplugged cable.

Limits (docs/technician-guide.md): main.py is never run (the port cannot interrupt a busy
loop, and a node's main loop never returns); Ctrl-C only acts between commands, so callers
need timeouts and a hard reset for a runaway program; time.sleep busy-waits; interrupts
(BLE scan results) are delivered only while the program sleeps; sys.platform is
"webassembly"; while a socket call waits, only Ctrl-C (KeyboardInterrupt) or its timeout
ends it; no TLS, UDP or name resolution.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import termios
import threading
import time
import tty
from pathlib import Path

from dordt.errors import UserError
from provisioning.vboard_net import ROM_SOCKET, ROM_USOCKET, NetLink, umqtt_source

REPO = Path(__file__).resolve().parents[1]
MICROPYTHON_DIR = REPO / "tools" / "micropython"
BOARD_SCRIPT = MICROPYTHON_DIR / "board.mjs"
PACKAGE = "@micropython/micropython-webassembly-pyscript"
PACKAGE_ENTRY = MICROPYTHON_DIR / "node_modules" / PACKAGE / "micropython.mjs"
DEFAULT_PROFILE = "esp32-s3-devkitc-1"
PM_SENSORS = ("sds011", "pms5003")
RECORDS_ENV = "DORDT_VIRTUAL_BOARDS_DIR"
BOOT_TIMEOUT_S = 20
PENDING_OUT_MAX_BYTES = 1 << 20  # board output kept while the host does not read
SETUP_HINT = "run `make setup` (it installs Node and the MicroPython npm package)"

# machine.reset_cause() numbering (MicroPython docs, machine module)
PWRON_RESET = 1
HARD_RESET = 2

BME680_ADDRESS = 0x77
TONE_HZ = 1000.0
TONE_SPL_DB = 94.0  # a sound calibrator's level: 1 Pa rms
MIC_SENSITIVITY_DBFS = -26.0  # INMP441/ICS-43434 class MEMS microphone
I2S_RATES_HZ = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
BLE_LOOP_MS = 60_000  # the recorded street scene repeats every minute
PM_LOOP_S = 120


# -- the ROM: modules the board provides -----------------------------------------------------

ROM_IRQ = '''\
# Interrupt sources of the virtual board, run while Python sleeps (time.sleep*,
# machine.idle/lightsleep), as a real board's IRQs would run.
sources = []


def poll():
    for f in sources:
        try:
            f()
        except Exception as e:  # as a board's scheduler does: report, carry on
            import sys
            print("Uncaught exception in IRQ callback handler")
            sys.print_exception(e)
'''

ROM_MACHINE = '''\
# machine, as the virtual board provides it (emulated hardware; see vboard)
import _vb_time
import _vboard_host
import _vboard_irq
import vboard

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
_freq = [vboard.CPU_HZ]
_rtc_offset_s = [0]


def _data(name):
    f = open("/rom/_data/" + name, "rb")
    try:
        return f.read()
    finally:
        f.close()


def reset_cause():
    return _vboard_host.reset_cause()


def unique_id():
    return vboard.UNIQUE_ID


def freq(hz=None):
    if hz is None:
        return _freq[0]
    _freq[0] = hz


def reset():
    _vboard_host.request_reset(SOFT_RESET)
    raise SystemExit


def soft_reset():
    raise SystemExit


def idle():
    _vboard_irq.poll()


def lightsleep(ms=None):
    import time
    time.sleep_ms(ms or 0)


def deepsleep(ms=None):
    reset()


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, value=None, **kw):
        self.id = id
        self._value = 0
        self.init(mode, pull, value)

    def init(self, mode=-1, pull=-1, value=None, **kw):
        if value is not None:
            self._value = 1 if value else 0

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = 1 if v else 0

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self._value = 1

    def off(self):
        self._value = 0

    def irq(self, handler=None, trigger=3, **kw):
        return None

    def __repr__(self):
        return "Pin(%r)" % (self.id,)


class WDT:
    # a watchdog that is not fed in time resets the board (once the REPL is idle)
    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        _vboard_host.wdt_arm(timeout)

    def feed(self):
        _vboard_host.wdt_arm(self.timeout)


class RTC:
    def datetime(self, t=None):
        import time
        if t is None:
            g = time.gmtime(_vb_time.time() + _rtc_offset_s[0])
            return (g[0], g[1], g[2], g[6], g[3], g[4], g[5], 0)
        secs = time.mktime((t[0], t[1], t[2], t[4], t[5], t[6], 0, 0))
        _rtc_offset_s[0] = secs - int(_vb_time.time())

    def init(self, t):
        self.datetime(t)


class I2C:
    # one Bosch BME680 at 0x77: the register emulator's power-on dump, and each forced
    # measurement loads the next 17-byte field the emulator made on the host
    _regs = None

    def __init__(self, id=0, scl=None, sda=None, freq=400000, timeout=50000):
        self.freq = freq
        if I2C._regs is None:
            I2C._regs = bytearray(_data("bme680_regs.bin"))
            I2C._fields = _data("bme680_fields.bin")
            I2C._next = 0

    def scan(self):
        return [vboard.BME680_ADDRESS] if vboard.BME680_ADDRESS else []

    def _check(self, addr):
        if addr != vboard.BME680_ADDRESS:
            raise OSError(19)  # ENODEV: no device acknowledged, as the ESP32 port says

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        self._check(addr)
        regs = I2C._regs
        for i in range(len(buf)):
            buf[i] = regs[(memaddr + i) & 0xFF]

    def readfrom_mem(self, addr, memaddr, nbytes, addrsize=8):
        buf = bytearray(nbytes)
        self.readfrom_mem_into(addr, memaddr, buf)
        return bytes(buf)

    def writeto_mem(self, addr, memaddr, buf, addrsize=8):
        self._check(addr)
        data = bytes([memaddr]) + bytes(buf)
        regs = I2C._regs
        # a write is register/value pairs (BME680 datasheet, "I2C interface")
        for i in range(0, len(data) - 1, 2):
            reg, value = data[i], data[i + 1]
            if reg == 0xE0 and value == 0xB6:  # soft reset
                I2C._regs = regs = bytearray(_data("bme680_regs.bin"))
            elif 0x50 <= reg <= 0x75:
                regs[reg] = value
                if reg == 0x74 and value & 3 == 1:  # forced mode: measure
                    n = len(I2C._fields) // 17
                    k = I2C._next % n
                    regs[0x1D:0x1D + 17] = I2C._fields[17 * k:17 * k + 17]
                    regs[0x74] = value & 0xFC  # back to sleep mode
                    I2C._next += 1

    def writeto(self, addr, buf, stop=True):
        self._check(addr)
        buf = bytes(buf)
        if len(buf) == 1:
            I2C._pointer = buf[0]
        elif buf:
            self.writeto_mem(addr, buf[0], buf[1:])
        return len(buf)

    def readfrom_into(self, addr, buf, stop=True):
        self.readfrom_mem_into(addr, getattr(I2C, "_pointer", 0), buf)

    def readfrom(self, addr, nbytes, stop=True):
        buf = bytearray(nbytes)
        self.readfrom_into(addr, buf)
        return bytes(buf)


SoftI2C = I2C


class UART:
    # the particulate sensor (vboard.PM_SENSOR): a frame a second while awake, replies
    # to its sleep and wake commands
    def __init__(self, id=1, baudrate=9600, bits=8, parity=None, stop=1, tx=None, rx=None,
                 timeout=0, **kw):
        self.baudrate = baudrate
        self.timeout = timeout
        self._frames = _data("pm_frames.bin")
        self._flen = vboard.PM_FRAME_BYTES
        self._buf = b""
        self._cmd = b""
        self._awake = True
        self._t0 = _vb_time.ticks_ms()
        self._served = 0

    def init(self, baudrate=9600, **kw):
        self.baudrate = baudrate

    def deinit(self):
        pass

    def _pump(self):
        due = _vb_time.ticks_diff(_vb_time.ticks_ms(), self._t0) // 1000
        n = len(self._frames) // self._flen
        while self._served < due:
            if self._awake:
                k = self._served % n
                self._buf += self._frames[k * self._flen:(k + 1) * self._flen]
                if len(self._buf) > 512:  # the UART's RX ring overflows
                    self._buf = self._buf[-512:]
            self._served += 1

    def any(self):
        self._pump()
        return len(self._buf)

    def _wait(self, n):
        if self.timeout <= 0:
            return
        end = _vb_time.ticks_add(_vb_time.ticks_ms(), self.timeout)
        while self.any() < n and _vb_time.ticks_diff(end, _vb_time.ticks_ms()) > 0:
            _vb_time.sleep_ms(1)

    def read(self, n=-1):
        self._wait(1 if n < 0 else n)
        self._pump()
        if not self._buf:
            return None
        if n < 0:
            n = len(self._buf)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def readinto(self, buf, nbytes=None):
        want = len(buf) if nbytes is None else nbytes
        data = self.read(want)
        if not data:
            return None
        buf[:len(data)] = data
        return len(data)

    def readline(self):
        return self.read()

    def write(self, buf):
        buf = bytes(buf)
        self._pump()
        self._cmd = (self._cmd + buf)[-64:]
        for cmd, awake, reply in ((vboard.PM_SLEEP, False, "pm_reply_sleep.bin"),
                                  (vboard.PM_WAKE, True, "pm_reply_wake.bin")):
            if cmd and self._cmd.endswith(cmd):
                self._awake = awake
                self._buf += _data(reply)
                self._cmd = b""
                if awake:  # the next frame a second after waking
                    self._t0 = _vb_time.ticks_ms()
                    self._served = 0
        return len(buf)

    def flush(self):
        pass

    def txdone(self):
        return True


class I2S:
    # a MEMS microphone hearing a 1 kHz tone at 94 dB SPL (vboard.TONE_*): PCM the I2S
    # emulator rendered on the host, looped; a read blocks until its samples are due
    RX = 0
    TX = 1
    MONO = 0
    STEREO = 1

    def __init__(self, id=0, sck=None, ws=None, sd=None, mck=None, mode=0, bits=32,
                 format=0, rate=32000, ibuf=20000):
        if mode != I2S.RX:
            raise ValueError("the virtual board's I2S has a microphone only (RX)")
        if bits not in (16, 32):
            raise ValueError("bits must be 16 or 32")
        try:
            pcm = _data("tone_%d_%d.bin" % (rate, bits))
        except OSError:
            raise ValueError("rate %d not supported by the virtual board" % rate)
        self.rate = rate
        self.bps = bits // 8
        self.channels = 2 if format == I2S.STEREO else 1
        if self.channels == 2:
            out = bytearray()
            for i in range(0, len(pcm), self.bps):
                out += pcm[i:i + self.bps] * 2
            pcm = bytes(out)
        self._pcm = pcm
        self._frame = self.bps * self.channels
        self._ibuf_frames = max(1, ibuf // self._frame)
        self._t0 = _vb_time.ticks_ms()
        self._delivered = 0

    def _due(self):
        ms = _vb_time.ticks_diff(_vb_time.ticks_ms(), self._t0)
        return ms * self.rate // 1000 - self._delivered

    def readinto(self, buf):
        n = len(buf) // self._frame
        due = self._due()
        if due > self._ibuf_frames:  # the DMA ring overwrote the oldest audio
            self._delivered += due - self._ibuf_frames
        while self._due() < n:
            _vb_time.sleep_ms(1)
        pcm = self._pcm
        size = len(pcm)
        start = (self._delivered * self._frame) % size
        nbytes = n * self._frame
        mv = memoryview(buf)
        done = 0
        while done < nbytes:
            take = min(nbytes - done, size - start)
            mv[done:done + take] = pcm[start:start + take]
            done += take
            start = 0
        self._delivered += n
        return nbytes

    def irq(self, handler):
        pass

    def deinit(self):
        pass


class Timer:
    def __init__(self, id=-1, **kw):
        pass

    def init(self, **kw):
        pass

    def deinit(self):
        pass
'''

ROM_BLUETOOTH = '''\
# bluetooth, as the virtual board provides it: passive scans hear a street's phones
# (advertisements the BLE emulator made on the host, repeating every vboard.BLE_LOOP_MS)
import _vb_time
import _vboard_irq
import vboard

_IRQ_SCAN_RESULT = 5
_IRQ_SCAN_DONE = 6
_ADV_DATA = b"\\x02\\x01\\x1a\\x03\\xff\\x4c\\x00"  # flags + a short manufacturer field
FLAG_READ = 2
FLAG_WRITE = 8
FLAG_NOTIFY = 16


class UUID:
    def __init__(self, value):
        self.value = value


class BLE:
    _instance = None

    def __new__(cls):
        if BLE._instance is None:
            BLE._instance = object.__new__(cls)
            BLE._instance._init()
        return BLE._instance

    def __init__(self):
        pass

    def _init(self):
        self._active = False
        self._irq = None
        self._scanning = False
        f = open("/rom/_data/ble_adverts.bin", "rb")
        self._adverts = f.read()  # 11-byte records: t_ms (u32 LE), address (6), rssi (i8)
        f.close()
        self._n = len(self._adverts) // 11
        _vboard_irq.sources.append(self._poll)

    def active(self, on=None):
        if on is None:
            return self._active
        self._active = bool(on)
        if not on:
            self._scanning = False

    def irq(self, handler):
        self._irq = handler

    def config(self, *names, **kw):
        if names and names[0] == "mac":
            return (0, vboard.UNIQUE_ID)
        if names and names[0] == "gap_name":
            return b"dordt-vboard"
        return None

    def gap_advertise(self, interval_us, adv_data=None, **kw):
        pass

    def gap_scan(self, duration_ms, interval_us=1280000, window_us=11250, active=False):
        if not self._active:
            raise OSError(1)  # EPERM: the stack is not active, as on a board
        if duration_ms is None:
            if self._scanning:
                self._scanning = False
                self._fire(_IRQ_SCAN_DONE, None)
            return
        self._scanning = True
        self._t0 = _vb_time.ticks_ms()
        self._duration = duration_ms
        self._k = 0  # adverts delivered in this scan
        self._loops = 0

    def _fire(self, event, data):
        if self._irq is not None:
            self._irq(event, data)

    def _poll(self):
        if not self._scanning:
            return
        elapsed = _vb_time.ticks_diff(_vb_time.ticks_ms(), self._t0)
        if self._duration:
            elapsed = min(elapsed, self._duration)
        adverts = self._adverts
        addr = bytearray(6)
        while self._scanning and self._n:
            i = self._k % self._n
            loops = self._k // self._n
            r = 11 * i
            t = adverts[r] | adverts[r + 1] << 8 | adverts[r + 2] << 16 | adverts[r + 3] << 24
            if t + loops * vboard.BLE_LOOP_MS > elapsed:
                break
            addr[:] = adverts[r + 4:r + 10]
            rssi = adverts[r + 10]
            if rssi > 127:
                rssi -= 256
            self._k += 1
            self._fire(_IRQ_SCAN_RESULT, (1, memoryview(addr), 0, rssi, memoryview(_ADV_DATA)))
        if self._scanning and self._duration and elapsed >= self._duration:
            self._scanning = False
            self._fire(_IRQ_SCAN_DONE, None)
'''

ROM_NETWORK = '''\
# network, as the virtual board provides it: a WLAN that joins only when
# vboard.wifi_connects is True (traffic goes through `socket`, to 127.0.0.1 only)
import _vb_time
import vboard

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202


class WLAN:
    def __init__(self, interface=STA_IF):
        self._active = False
        self._since = None

    def active(self, on=None):
        if on is None:
            return self._active
        self._active = bool(on)

    def connect(self, ssid=None, key=None, **kw):
        if not self._active:
            raise OSError(1)
        self._since = _vb_time.ticks_ms()

    def disconnect(self):
        self._since = None

    def status(self, *args):
        if args:
            return -60 if args[0] == "rssi" else None
        if self._since is None:
            return STAT_IDLE
        if not vboard.wifi_connects:
            return STAT_CONNECTING
        if _vb_time.ticks_diff(_vb_time.ticks_ms(), self._since) < 1000:
            return STAT_CONNECTING
        return STAT_GOT_IP

    def isconnected(self):
        return self.status() == STAT_GOT_IP

    def ifconfig(self, *args):
        if self.isconnected():
            return ("192.168.4.23", "255.255.255.0", "192.168.4.1", "192.168.4.1")
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    def config(self, *names, **kw):
        if names and names[0] == "mac":
            return vboard.UNIQUE_ID
        return None

    def scan(self):
        return []
'''


def _rom_vboard(profile, usb_vid, usb_pid, unique_id, pm_sensor, pm_frame_bytes, sleep_cmd,
                wake_cmd, cpu_hz, bme680=True, wifi=False):
    return (
        "# Which board this virtual board emulates, and its emulated parts' settings.\n"
        f"PROFILE = {profile!r}\n"
        f"USB_VID = {usb_vid:#06x}\n"
        f"USB_PID = {usb_pid:#06x}\n"
        f"UNIQUE_ID = {unique_id!r}\n"
        f"CPU_HZ = {cpu_hz}\n"
        f"BME680_ADDRESS = {BME680_ADDRESS if bme680 else None}\n"
        f"PM_SENSOR = {pm_sensor!r}\n"
        f"PM_FRAME_BYTES = {pm_frame_bytes}\n"
        f"PM_SLEEP = {sleep_cmd!r}\n"
        f"PM_WAKE = {wake_cmd!r}\n"
        f"TONE_HZ = {TONE_HZ}\n"
        f"TONE_SPL_DB = {TONE_SPL_DB}\n"
        f"BLE_LOOP_MS = {BLE_LOOP_MS}\n"
        f"wifi_connects = {bool(wifi)}  # True: WLAN.connect() joins after a second\n"
    )


# -- ROM data, made by the emulators ---------------------------------------------------------


@functools.cache
def _bme680_data() -> tuple[bytes, bytes]:
    """The BME680's power-on registers and 12 measurement fields (17 bytes each), made by
    the register emulator as configured by the firmware's own driver."""
    from firmware.drivers import bme680 as driver_module
    from simulators.emulators.bme680 import BME680Emulator, Noise, Truth

    chip = BME680Emulator(noise=Noise(2, 2, 2, 1), seed=3)
    regs = bytes(chip.regs)
    driver = driver_module.BME680(chip, BME680_ADDRESS, sleep_ms=lambda ms: None)
    fields = bytearray()
    for k in range(12):  # a slow drift, so consecutive readings differ a little
        chip.truth = Truth(temperature_c=21.0 + 0.1 * (k % 4), pressure_hpa=1013.0 + 0.2 * (k % 3),
                           humidity_pct=48.0 + 0.5 * (k % 5), gas_ohm=120_000.0 + 1000.0 * k)
        driver.start(0)
        fields += chip.readfrom_mem(BME680_ADDRESS, 0x1D, 17)
    return regs, bytes(fields)


@functools.cache
def _pm_data(pm_sensor: str) -> tuple[bytes, int, bytes, bytes, bytes, bytes]:
    """PM_LOOP_S seconds of frames, the frame length, and the sensor's sleep/wake commands
    with the replies the emulator gives to them."""
    from simulators.emulators.pm import PMS5003Emulator, PMTruth, SDS011Emulator

    cls = {"sds011": SDS011Emulator, "pms5003": PMS5003Emulator}[pm_sensor]
    truth = PMTruth(pm1=6.1, pm25=9.4, pm10=15.2)
    frames = cls(truth, noise_pct=1, seed=4).stream(PM_LOOP_S)
    replies = []
    for command in (cls.SLEEP, cls.WAKE):
        emulator = cls(truth)
        emulator.receive(command, 0)
        replies.append(emulator.advance(0))
    return frames, len(frames) // PM_LOOP_S, cls.SLEEP, cls.WAKE, replies[0], replies[1]


@functools.cache
def _tone_pcm(rate_hz: int, bits: int) -> bytes:
    """A whole number of periods of the tone, as the microphone sends it."""
    from math import gcd

    from simulators.emulators import i2s

    periods = 1000 // gcd(rate_hz, 1000)
    n = rate_hz * periods // 1000
    while n < 256:  # loops of a few hundred samples keep the copy loop short
        n *= 2
    return i2s.render_pcm(i2s.Sine(TONE_HZ, TONE_SPL_DB), 0, n, rate_hz, bits,
                          MIC_SENSITIVITY_DBFS)


@functools.cache
def _ble_adverts() -> bytes:
    """A minute of a street with 12 phones near the node and 4 far away, as 11-byte
    records (t_ms u32 LE, address, rssi i8), in time order."""
    from simulators.emulators import ble

    class _Clock:
        def on_advance(self, f):
            self.advance = f

    population = ble.Population(ble.crowd(12, seed=5, far=4), seed=1, loss=0.1)
    clock = _Clock()
    scanner = ble.EmulatedScanner(population, clock)
    out = bytearray()
    step_ms = 50
    now_ms = [0]  # the end of the step being played: when the scanner hears it

    def heard(addr, rssi):
        out.extend(now_ms[0].to_bytes(4, "little") + bytes(addr) + (rssi & 0xFF).to_bytes(1))

    scanner.start(heard)
    for t in range(0, BLE_LOOP_MS, step_ms):
        now_ms[0] = t + step_ms
        clock.advance(t, t + step_ms)
    return bytes(out)


def write_rom(rom_dir: Path, profile: str, unique_id: bytes, pm_sensor: str,
              bme680: bool = True, wifi: bool = False) -> None:
    """The ROM modules and their data, for board.mjs --rom.  umqtt.simple is left out
    when setup has not fetched it (an import of it then fails on the board)."""
    from hardware.profiles import load_boards

    board = load_boards()[profile]
    usb = board.usb[0]
    frames, frame_bytes, sleep_cmd, wake_cmd, reply_sleep, reply_wake = _pm_data(pm_sensor)
    cpu_hz = 240_000_000 if board.mcu.startswith("esp32") else 125_000_000
    data = rom_dir / "_data"
    data.mkdir(parents=True, exist_ok=True)
    modules = {
        "_vboard_irq.py": ROM_IRQ, "machine.py": ROM_MACHINE, "bluetooth.py": ROM_BLUETOOTH,
        "network.py": ROM_NETWORK, "socket.py": ROM_SOCKET, "usocket.py": ROM_USOCKET,
        "vboard.py": _rom_vboard(profile, usb.vid, usb.pid, unique_id, pm_sensor, frame_bytes,
                                 sleep_cmd, wake_cmd, cpu_hz, bme680, wifi),
    }
    for name, text in modules.items():
        (rom_dir / name).write_text(text, encoding="utf-8")
    umqtt = umqtt_source()
    if umqtt is not None:
        (rom_dir / "umqtt").mkdir(exist_ok=True)
        (rom_dir / "umqtt" / "simple.py").write_bytes(umqtt)
    regs, fields = _bme680_data()
    files = {"bme680_regs.bin": regs, "bme680_fields.bin": fields, "pm_frames.bin": frames,
             "pm_reply_sleep.bin": reply_sleep, "pm_reply_wake.bin": reply_wake,
             "ble_adverts.bin": _ble_adverts()}
    for rate in I2S_RATES_HZ:
        for bits in (16, 32):
            files[f"tone_{rate}_{bits}.bin"] = _tone_pcm(rate, bits)
    for name, blob in files.items():
        (data / name).write_bytes(blob)


# -- discovery records -----------------------------------------------------------------------


def records_dir() -> Path:
    if os.environ.get(RECORDS_ENV):
        return Path(os.environ[RECORDS_ENV])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "dordt" / "virtual-boards"
    return Path.home() / ".cache" / "dordt" / "virtual-boards"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_boards() -> list[dict]:
    """Virtual boards running on this machine: dicts with port, device, profile, usb_vid,
    usb_pid, pid (the process serving the board), flash_dir.  Records whose process is
    gone or whose port has disappeared are ignored."""
    boards = []
    folder = records_dir()
    if not folder.is_dir():
        return boards
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            pid = int(record["pid"])
            port = str(record["port"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _pid_alive(pid) and os.path.exists(port):
            boards.append(record)
    return boards


# -- the board -------------------------------------------------------------------------------


def _check_node() -> str:
    node = shutil.which("node")
    if node is None:
        raise UserError("the virtual board needs Node (`node` is not on PATH): " + SETUP_HINT)
    if not PACKAGE_ENTRY.is_file():
        raise UserError(f"the virtual board needs the npm package {PACKAGE} (missing in "
                        f"{MICROPYTHON_DIR / 'node_modules'}): " + SETUP_HINT)
    return node


class VirtualBoard:
    """One virtual board.  Not plugged until start(); `.port` is the path to open.

    flash_dir: host directory holding the board's files (created if missing).
    profile: a board profile id from hardware/data/boards.
    link: a path kept as a symlink to the current pty (stable across plug/unplug).
    flash_bytes: flash capacity (writes past it fail with ENOSPC); None: the profile's
    file system partition.
    pm_sensor: which particulate sensor is on the UART ("sds011" or "pms5003").
    bme680: False leaves the I2C bus empty (a board whose BME680 is missing or unwired).
    wifi: True makes network.WLAN join (isconnected() a second after connect()), so a node
    firmware goes on to MQTT; sockets work either way.

    `net` is the host end of its network (vboard_net.NetLink), a new one at every power-on
    (start, plug, reset): its `connects` lists the addresses the board tried,
    `open_sockets()` counts its sockets, `drop()` / `drop_after_received(n)` cut its
    connections (a Wi-Fi drop, now or after n more bytes in).
    """

    def __init__(self, flash_dir, profile=DEFAULT_PROFILE, link=None, flash_bytes=None,
                 pm_sensor="sds011", bme680=True, wifi=False):
        from hardware.profiles import load_boards

        boards = load_boards()
        if profile not in boards:
            raise UserError(f"unknown board profile {profile!r}: choose one of "
                            f"{', '.join(sorted(boards))}", exit_code=2)
        if pm_sensor not in PM_SENSORS:
            raise UserError(f"unknown PM sensor {pm_sensor!r}: choose one of "
                            f"{', '.join(PM_SENSORS)}", exit_code=2)
        self.flash_dir = Path(flash_dir).resolve()
        self.profile = profile
        self.board = boards[profile]
        self.link = Path(link).absolute() if link else None  # records name it from anywhere
        if flash_bytes is None:
            vfs = [p for p in self.board.partitions if p["name"] == "vfs"]
            flash_bytes = vfs[0]["size"] if vfs else self.board.flash_size_mb << 20
        self.flash_bytes = int(flash_bytes)
        self.pm_sensor = pm_sensor
        self.bme680 = bme680
        self.wifi = bool(wifi)
        self.net = None
        self.unique_id = hashlib.sha256(str(self.flash_dir).encode()).digest()[:6]
        self.usb_vid = self.board.usb[0].vid
        self.usb_pid = self.board.usb[0].pid
        self.device = None  # the pty slave path while plugged
        self._node_bin = None
        self._rom_dir = None
        self._proc = None
        self._stderr = None
        self._master = None
        self._slave = None
        self._thread = None
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._drop_budget = None
        self._record = None
        self._pending_out = bytearray()
        self.last_exit = None  # how the Node process ended last time (for diagnostics)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> str | None:
        if self.device is None:
            return None
        return str(self.link) if self.link else self.device

    @property
    def plugged(self) -> bool:
        return self.device is not None

    def start(self) -> VirtualBoard:
        self._node_bin = _check_node()
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        self._rom_dir = Path(tempfile.mkdtemp(prefix="dordt-vboard-rom-"))
        try:
            write_rom(self._rom_dir, self.profile, self.unique_id, self.pm_sensor, self.bme680,
                      self.wifi)
            self.plug()
        except BaseException:
            self.stop()  # a board that did not start leaves no ROM folder behind
            raise
        return self

    def plug(self) -> None:
        """Power on and connect: a new pty, the board boots, the link points at it."""
        with self._lock:
            if self.plugged:
                return
            master, slave = os.openpty()
            tty.setraw(slave)
            attrs = termios.tcgetattr(slave)
            attrs[3] &= ~termios.ECHO
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            os.set_blocking(master, False)
            self._master, self._slave = master, slave
            self.device = os.ttyname(slave)
            try:
                self._start_node(PWRON_RESET)
            except BaseException:
                self.unplug()
                raise
            if self.link:
                tmp = self.link.with_name(self.link.name + ".new")
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(self.device)
                os.replace(tmp, self.link)
            self._start_bridge()
            self._write_record()

    def unplug(self) -> None:
        """Pull the cable: the host's open port gets I/O errors, the board loses power
        (files written by finished commands are kept; a file still open is not)."""
        with self._lock:
            if not self.plugged:
                return
            self._stop_bridge()
            self._kill_node()
            for fd in (self._master, self._slave):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self._master = self._slave = None
            self.device = None
            self._pending_out.clear()
            if self.link and self.link.is_symlink():
                self.link.unlink()
            self._remove_record()

    def reset(self) -> None:
        """Hard reset (the RST button): the interpreter restarts, flash kept, port kept."""
        with self._lock:
            if not self.plugged:
                raise UserError("the virtual board is unplugged: plug it in first")
            self._stop_bridge()
            self._kill_node()
            try:
                self._start_node(HARD_RESET)
            except BaseException:
                self.unplug()
                raise
            self._start_bridge()
            self._write_record()

    def drop_after(self, n_bytes: int) -> None:
        """A fault: the link drops (unplug) after `n_bytes` more bytes from the host."""
        with self._lock:
            self._drop_budget = int(n_bytes)

    def stop(self) -> None:
        self.unplug()
        if self._rom_dir is not None:
            shutil.rmtree(self._rom_dir, ignore_errors=True)
            self._rom_dir = None

    def __enter__(self) -> VirtualBoard:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- Node ---------------------------------------------------------------------------------

    def _start_node(self, reset_cause: int) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  # closed in _kill_node
        self.net = NetLink()
        try:
            self._proc = subprocess.Popen(
                [self._node_bin, str(BOARD_SCRIPT), "--flash", str(self.flash_dir),
                 "--rom", str(self._rom_dir), "--flash-bytes", str(self.flash_bytes),
                 "--reset-cause", str(reset_cause), *self.net.argv()],
                cwd=MICROPYTHON_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self._stderr, bufsize=0, start_new_session=True,
                pass_fds=self.net.child_fds)
        except BaseException:
            self.net.close()
            raise
        self.net.started()
        os.set_blocking(self._proc.stdout.fileno(), False)
        self._wait_for_boot()

    def _wait_for_boot(self) -> None:
        """Until the board's first output (its banner): then it answers on the port.  A
        board that cannot start is a UserError with what Node said."""
        out = self._proc.stdout.fileno()
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(0.1):
                    continue
                data = os.read(out, 65536)
                if data:
                    self._pending_out += data
                    return
                break  # Node exited
        lines = [line.strip() for line in self.node_stderr().splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or "board.mjs:" in line]
        said = (errors or lines or ["no output"])[0]
        self._kill_node()
        raise UserError(f"the virtual board did not start (Node said: {said[:300]}); "
                        + SETUP_HINT)

    def _kill_node(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()  # a power cut: no chance to write anything back
            proc.wait()
            self.last_exit = proc.returncode
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
        if self.net is not None:
            self.net.close()  # its TCP connections drop with the power
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def node_stderr(self) -> str:
        """What the board's Node process wrote to stderr (crashes), for diagnostics."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    # -- the pty <-> Node bridge ----------------------------------------------------------------

    def _start_bridge(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._bridge, name="vboard-bridge", daemon=True)
        self._thread.start()

    def _stop_bridge(self) -> None:
        self._stop.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()  # unblocks a bridge stuck writing to a busy board
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _bridge(self) -> None:
        master, proc = self._master, self._proc
        node_out = proc.stdout.fileno()
        node_in = proc.stdin.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(master, selectors.EVENT_READ, "host")
            sel.register(node_out, selectors.EVENT_READ, "board")
            writing = False
            while not self._stop.is_set():
                want_write = bool(self._pending_out)
                if want_write != writing:
                    sel.modify(master, selectors.EVENT_READ | (
                        selectors.EVENT_WRITE if want_write else 0), "host")
                    writing = want_write
                try:
                    ready = sel.select(0.05)
                except (OSError, ValueError):  # an fd closed under us: unplugged
                    return
                for key, events in ready:
                    if key.data == "board":
                        try:
                            data = os.read(node_out, 65536)
                        except BlockingIOError:
                            continue
                        if not data:  # Node ended: the board died, as a pulled cable
                            if not self._stop.is_set():
                                threading.Thread(target=self._lost, args=(proc,),
                                                 daemon=True).start()
                            return
                        self._pending_out += data
                        if len(self._pending_out) > PENDING_OUT_MAX_BYTES:
                            del self._pending_out[:-PENDING_OUT_MAX_BYTES]
                        self._flush_to_host(master)
                    elif events & selectors.EVENT_READ:
                        try:
                            data = os.read(master, 65536)
                        except (BlockingIOError, InterruptedError):
                            data = None
                        except OSError:
                            data = None
                        if data:
                            if not self._to_board(node_in, data):
                                return
                    if key.data == "host" and events & selectors.EVENT_WRITE:
                        self._flush_to_host(master)

    def _lost(self, proc) -> None:
        """The Node process `proc` ended by itself: unplug, unless it was replaced."""
        with self._lock:
            if self._proc is proc:
                self.unplug()

    def _flush_to_host(self, master) -> None:
        while self._pending_out:
            try:
                n = os.write(master, self._pending_out[:4096])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._pending_out.clear()
                return
            del self._pending_out[:n]

    def _to_board(self, node_in, data: bytes) -> bool:
        """Forward host bytes; False once a drop_after() fault has pulled the cable."""
        if b"\x03" in data and self.net is not None:
            self.net.interrupt()  # ends a socket call the board waits in (KeyboardInterrupt)
        budget = self._drop_budget
        cut = budget is not None and len(data) >= budget
        if cut:
            data = data[:budget]
        elif budget is not None:
            self._drop_budget = budget - len(data)
        try:
            if data:
                os.write(node_in, data)  # a pipe: blocks while the board is busy
        except OSError:
            pass
        if cut:
            self._drop_budget = None
            threading.Thread(target=self._lost, args=(self._proc,), daemon=True).start()
            return False
        return True

    # -- discovery record ----------------------------------------------------------------------

    def _write_record(self) -> None:
        folder = records_dir()
        folder.mkdir(parents=True, exist_ok=True)
        if self._record is None:
            self._record = folder / f"{os.getpid()}-{id(self):x}.json"
        doc = {"port": self.port, "device": self.device, "profile": self.profile,
               "usb_vid": self.usb_vid, "usb_pid": self.usb_pid, "pid": os.getpid(),
               "node_pid": self._proc.pid if self._proc else None,
               "flash_dir": str(self.flash_dir), "virtual": True}
        tmp = self._record.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(tmp, self._record)

    def _remove_record(self) -> None:
        if self._record is not None:
            self._record.unlink(missing_ok=True)


# -- `dordt provision virtual-board` ---------------------------------------------------------


def default_flash_dir(profile: str) -> Path:
    return Path.home() / ".local" / "share" / "dordt" / "virtual-board" / profile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hardware.profiles import load_boards

    parser.add_argument("--board", default=DEFAULT_PROFILE, choices=sorted(load_boards()),
                        help="board profile to emulate (default: %(default)s)")
    parser.add_argument("--flash", type=Path, default=None, metavar="DIR",
                        help="host directory that is the board's flash (kept between runs; "
                        "default: ~/.local/share/dordt/virtual-board/PROFILE)")
    parser.add_argument("--link", type=Path, default=None, metavar="PATH",
                        help="also make PATH a symlink to the board's port")
    parser.add_argument("--pm-sensor", default="sds011", choices=PM_SENSORS,
                        help="particulate sensor on the board's UART (default: %(default)s)")
    parser.add_argument("--no-bme680", dest="bme680", action="store_false",
                        help="no BME680 on the I2C bus (practise a wiring fault)")
    parser.add_argument("--wifi", action="store_true",
                        help="the board's Wi-Fi joins (so a node goes on to MQTT; its sockets "
                        "reach 127.0.0.1 only)")


def command_virtual_board(args) -> int:
    flash = args.flash or default_flash_dir(args.board)
    board = VirtualBoard(flash, profile=args.board, link=args.link,
                         pm_sensor=getattr(args, "pm_sensor", "sds011"),
                         bme680=getattr(args, "bme680", True),
                         wifi=getattr(args, "wifi", False))
    stopping = threading.Event()

    def on_signal(signum, frame):
        stopping.set()

    old = signal.signal(signal.SIGTERM, on_signal)
    try:
        board.start()
        port = board.port
        usb = f"{board.usb_vid:04x}:{board.usb_pid:04x}"
        print(f"virtual board {args.board} (USB {usb}) on {port}")
        print(f"  flash: {board.flash_dir}")
        if board.wifi:
            print("  wifi:  joins; its sockets reach 127.0.0.1 only")
        print(f"  try:   mpremote connect {port} ls")
        print(f"         dordt provision run --port {port}")
        print("  Ctrl-C stops the board.", flush=True)
        while not stopping.is_set():
            stopping.wait(0.5)
            if not board.plugged:
                print("virtual board: MicroPython stopped; the board is unplugged")
                return 3
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        board.stop()
    print("virtual board stopped")
    return 0


