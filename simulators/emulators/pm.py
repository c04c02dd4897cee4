"""SDS011 and PMS5003 particulate sensors as serial byte streams at a known truth.

An emulator is a clock-driven source of the bytes the sensor would send: one data frame a
second while awake, none while asleep, and the acknowledgement frames the real sensors
send for commands.  It listens for the sleep/wake commands of `firmware.drivers.pm`.

Faults, each configurable: `noise_pct` (relative white noise on every reading),
`bad_checksum_every` (every n-th frame has a wrong checksum), `garbage_every` /
`garbage_len` (random bytes before every n-th frame), `cut_every` (every n-th frame is cut
short), `stuck` (the first frame repeated bit for bit forever), `missing` (no bytes at all,
commands ignored).  Every data frame sent is logged in `sent` with its values and whether
it was good, so a test can compute what a correct parser must make of the stream.

Two ways to deliver the bytes:

- `PtyLink(emulator)`: a real pseudo-terminal (os.openpty).  The emulator writes to the
  master side; the code under test reads the slave side through pyserial
  (`link.uart()` gives a `machine.UART`-shaped adapter: any/readinto/read/write).
  `link.pump(now_ms)` moves the simulated time forward: it hands the commands the code
  wrote to the emulator, then writes the frames due by `now_ms`, and returns once they are
  readable on the slave side, so runs are deterministic.
- `emulator.timeline(until_ms)` / `stream(n)`: the same bytes as data, for MicroPython tests
  (which cannot open a pty): a list of (time_ms, bytes) chunks.
"""

from __future__ import annotations

import fcntl
import os
import random
import select
import struct
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass

FRAME_PERIOD_MS = 1000

SDS011_SLEEP = b"\xaa\xb4\x06\x01\x00" + bytes(10) + b"\xff\xff\x05\xab"
SDS011_WAKE = b"\xaa\xb4\x06\x01\x01" + bytes(10) + b"\xff\xff\x06\xab"
PMS5003_SLEEP = bytes.fromhex("424de400000173")
PMS5003_WAKE = bytes.fromhex("424de400010174")


@dataclass(frozen=True)
class PMTruth:
    """Mass concentrations in ug/m3."""

    pm1: float = 8.0
    pm25: float = 12.0
    pm10: float = 20.0


@dataclass(frozen=True)
class SentFrame:
    t_ms: int
    pm1_x10: int  # -1 when the sensor does not measure PM1 (SDS011)
    pm25_x10: int
    pm10_x10: int
    good: bool  # False: checksum spoiled or frame cut short


class PMEmulator:
    """Common clock and fault machinery; subclasses make the frames."""

    name = ""
    SLEEP = b""
    WAKE = b""

    def __init__(
        self,
        truth: PMTruth | Callable[[int], PMTruth] = PMTruth(),
        *,
        noise_pct: float = 0.0,
        seed: int = 0,
        bad_checksum_every: int = 0,
        garbage_every: int = 0,
        garbage_len: int = 7,
        cut_every: int = 0,
        stuck: bool = False,
        missing: bool = False,
        awake: bool = True,
        start_ms: int = 0,
    ):
        self.truth = truth
        self.noise_pct = noise_pct
        self.bad_checksum_every = bad_checksum_every
        self.garbage_every = garbage_every
        self.garbage_len = garbage_len
        self.cut_every = cut_every
        self.stuck = stuck
        self.missing = missing
        self.awake = awake
        self._rng = random.Random(seed)
        self._next_ms = start_ms + FRAME_PERIOD_MS
        self._count = 0
        self._stuck_frame: bytes | None = None
        self._stuck_values: tuple[int, int, int] | None = None
        self._cmd = bytearray()
        self._replies = bytearray()
        self.sent: list[SentFrame] = []
        self.commands: list[tuple[int, str]] = []  # (time, "sleep"/"wake")

    # -- what the sensor measures ------------------------------------------------------------

    def truth_at(self, t_ms: int) -> PMTruth:
        return self.truth(t_ms) if callable(self.truth) else self.truth

    def _noisy(self, value: float) -> float:
        if self.noise_pct:
            value *= 1.0 + self._rng.gauss(0.0, self.noise_pct / 100.0)
        return max(0.0, value)

    # -- commands from the host --------------------------------------------------------------

    def receive(self, data: bytes, now_ms: int) -> None:
        """Bytes the host wrote to the sensor."""
        if self.missing:
            return
        self._cmd += data
        for command, name in ((self.SLEEP, "sleep"), (self.WAKE, "wake")):
            while command in self._cmd:
                at = self._cmd.index(command)
                del self._cmd[: at + len(command)]
                self.commands.append((now_ms, name))
                self._replies += self._reply(name)
                if name == "sleep":
                    self.awake = False
                elif not self.awake:
                    self.awake = True
                    self._next_ms = now_ms + FRAME_PERIOD_MS
        del self._cmd[:-32]  # keep only what could still start a command

    def _reply(self, name: str) -> bytes:
        return b""

    # -- what the sensor sends ---------------------------------------------------------------

    def advance(self, now_ms: int) -> bytes:
        """All bytes the sensor sends up to `now_ms` (replies first, then due frames)."""
        out = bytearray(self._replies)
        self._replies.clear()
        if self.missing:
            return b""
        if not self.awake:
            self._next_ms = max(self._next_ms, now_ms + FRAME_PERIOD_MS)
            return bytes(out)
        while self._next_ms <= now_ms:
            out += self._emit(self._next_ms)
            self._next_ms += FRAME_PERIOD_MS
        return bytes(out)

    def _emit(self, t_ms: int) -> bytes:
        self._count += 1
        n = self._count
        if self.stuck and self._stuck_frame is not None:
            assert self._stuck_values is not None
            self.sent.append(SentFrame(t_ms, *self._stuck_values, good=True))
            return self._stuck_frame
        truth = self.truth_at(t_ms)
        values = self._values(truth)
        frame = bytearray(self._frame(*values))
        good = True
        if self.bad_checksum_every and n % self.bad_checksum_every == 0:
            frame[self._checksum_index()] ^= 0x5A
            good = False
        if self.cut_every and n % self.cut_every == 0:
            frame = frame[: len(frame) // 2]
            good = False
        if self.stuck and self._stuck_frame is None and good:
            self._stuck_frame, self._stuck_values = bytes(frame), values
        self.sent.append(SentFrame(t_ms, *values, good=good))
        prefix = b""
        if self.garbage_every and n % self.garbage_every == 0:
            prefix = bytes(self._rng.randrange(256) for _ in range(self.garbage_len))
        return prefix + bytes(frame)

    def _values(self, truth: PMTruth) -> tuple[int, int, int]:
        raise NotImplementedError

    def _frame(self, pm1_x10: int, pm25_x10: int, pm10_x10: int) -> bytes:
        raise NotImplementedError

    def _checksum_index(self) -> int:
        raise NotImplementedError

    # -- the same bytes as data ----------------------------------------------------------------

    def timeline(self, until_ms: int, step_ms: int = FRAME_PERIOD_MS) -> list[tuple[int, bytes]]:
        """(time_ms, bytes) for each step up to `until_ms`, as if always awake: MicroPython
        tests serve chunk k once their clock reaches its time (and drop it while their fake
        sensor sleeps)."""
        out = []
        t = 0
        while t <= until_ms:
            chunk = self.advance(t)
            if chunk:
                out.append((t, chunk))
            t += step_ms
        return out

    def stream(self, frames: int) -> bytes:
        """The next `frames` seconds of output as one byte string."""
        start = self._next_ms
        return self.advance(start + (frames - 1) * FRAME_PERIOD_MS)


class SDS011Emulator(PMEmulator):
    """Nova Fitness SDS011: 10-byte frames, PM2.5 and PM10 in 0.1 ug/m3 (protocol V1.3)."""

    name = "sds011"
    SLEEP = SDS011_SLEEP
    WAKE = SDS011_WAKE
    device_id = (0x1E, 0xA4)

    def _values(self, truth: PMTruth) -> tuple[int, int, int]:
        pm25 = min(9999, round(self._noisy(truth.pm25) * 10))
        pm10 = min(9999, max(pm25, round(self._noisy(truth.pm10) * 10)))
        return -1, pm25, pm10

    def _frame(self, pm1_x10: int, pm25_x10: int, pm10_x10: int) -> bytes:
        data = struct.pack("<HH", pm25_x10, pm10_x10) + bytes(self.device_id)
        return b"\xaa\xc0" + data + bytes([sum(data) & 0xFF, 0xAB])

    def _checksum_index(self) -> int:
        return 8

    def _reply(self, name: str) -> bytes:
        # "Set sleep and work" reply: AA C5 06 01 mode 00 id id sum AB
        data = bytes([0x06, 0x01, 1 if name == "wake" else 0, 0x00]) + bytes(self.device_id)
        return b"\xaa\xc5" + data + bytes([sum(data) & 0xFF, 0xAB])


class PMS5003Emulator(PMEmulator):
    """Plantower PMS5003: 32-byte frames, PM1/PM2.5/PM10 in whole ug/m3 plus particle
    counts (data manual, Appendix I)."""

    name = "pms5003"
    SLEEP = PMS5003_SLEEP
    WAKE = PMS5003_WAKE

    def _values(self, truth: PMTruth) -> tuple[int, int, int]:
        pm1 = round(self._noisy(truth.pm1))
        pm25 = max(pm1, round(self._noisy(truth.pm25)))
        pm10 = max(pm25, round(self._noisy(truth.pm10)))
        return pm1 * 10, pm25 * 10, pm10 * 10

    def _frame(self, pm1_x10: int, pm25_x10: int, pm10_x10: int) -> bytes:
        atm = (pm1_x10 // 10, pm25_x10 // 10, pm10_x10 // 10)
        # CF=1 ("standard particle") equals the atmospheric value at low concentrations
        cf1 = tuple(v if v < 30 else round(v * 1.5) for v in atm)
        # counts per 0.1 L: roughly proportional to mass, noisy even in clean air
        base = atm[1] * 60 + 150
        counts = [max(0, round(base / (2.0**i) * (1.0 + self._rng.gauss(0.0, 0.05))))
                  for i in range(6)]
        words = [min(0xFFFF, w) for w in (*cf1, *atm, *counts, 0)]
        body = b"\x42\x4d" + struct.pack(">H", 28) + struct.pack(">13H", *words)
        return body + struct.pack(">H", sum(body) & 0xFFFF)

    def _checksum_index(self) -> int:
        return 31

    def _reply(self, name: str) -> bytes:
        if name != "sleep":
            return b""  # waking answers with data frames
        body = b"\x42\x4d\x00\x04\xe4\x00"
        return body + struct.pack(">H", sum(body))


EMULATORS = {"sds011": SDS011Emulator, "pms5003": PMS5003Emulator}


# -- a real pty ------------------------------------------------------------------------------


def _inq(fd: int) -> int:
    """Bytes waiting to be read on a tty fd (TIOCINQ)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


class SerialUart:
    """A `machine.UART`-shaped adapter over pyserial: any(), readinto(), read(), write()."""

    def __init__(self, port):
        self.serial = port
        self.written = 0

    def any(self) -> int:
        return self.serial.in_waiting

    def readinto(self, buf, nbytes: int | None = None) -> int | None:
        if nbytes is not None:
            buf = memoryview(buf)[:nbytes]
        n = self.serial.readinto(buf)
        return n or None

    def read(self, n: int = -1) -> bytes | None:
        data = self.serial.read(n if n >= 0 else self.serial.in_waiting)
        return data or None

    def write(self, buf) -> int:
        n = self.serial.write(bytes(buf))
        self.serial.flush()
        self.written += n or 0
        return n

    def close(self) -> None:
        self.serial.close()


class PtyLink:
    """A pseudo-terminal between an emulator (master side) and pyserial (slave side)."""

    def __init__(self, emulator: PMEmulator, settle_s: float = 2.0):
        self.emulator = emulator
        self.settle_s = settle_s
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no CR/LF translation: a binary line
        os.set_blocking(self.master, False)
        self.port_name = os.ttyname(self._slave)
        self._uart: SerialUart | None = None
        self._received = 0
        self.overruns = 0

    def uart(self, baudrate: int = 9600) -> SerialUart:
        import serial  # pyserial, a test extra

        if self._uart is None:
            self._uart = SerialUart(serial.Serial(self.port_name, baudrate=baudrate, timeout=0))
        return self._uart

    def pump(self, now_ms: int) -> int:
        """Advance the emulator to `now_ms` through the pty; returns bytes sent."""
        self._take_commands(now_ms)
        out = self.emulator.advance(now_ms)
        if out:
            before = _inq(self._slave)
            sent = 0
            deadline = time.monotonic() + self.settle_s
            while sent < len(out):
                try:
                    sent += os.write(self.master, out[sent:])
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        self.overruns += len(out) - sent  # a full UART buffer drops bytes
                        break
                    time.sleep(0.001)
            self._wait(lambda: _inq(self._slave) >= before + sent, "bytes to reach the slave")
            return sent
        return 0

    def _take_commands(self, now_ms: int) -> None:
        expected = (self._uart.written if self._uart else 0) - self._received
        data = bytearray()
        deadline = time.monotonic() + self.settle_s
        while len(data) < expected and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.01)
            if ready:
                data += os.read(self.master, 4096)
        self._received += len(data)
        if data:
            self.emulator.receive(bytes(data), now_ms)

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.settle_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"pty: waited {self.settle_s} s for {what}")
            time.sleep(0.0005)

    def close(self) -> None:
        if self._uart is not None:
            self._uart.close()
        for fd in (self.master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> PtyLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
