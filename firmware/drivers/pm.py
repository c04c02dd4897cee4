# Particulate matter sensors on a UART: Nova Fitness SDS011 and Plantower PMS5003.
#
# In:  a UART-like object: `any()` (bytes waiting), `readinto(buf)` (or `read(n)`) and
#      `write(buf)`: a `machine.UART` at 9600 baud, 8N1 on a node; pyserial with
#      `timeout=0` behind a small adapter on the host.  `poll()` reads only what `any()`
#      says is waiting (`readinto(buf, nbytes)` where the UART has it), so it never waits.
# Out: each good data frame is handed to `sink(pm1_x10, pm25_x10, pm10_x10, signature)`:
#      concentrations in tenths of ug/m3 (ints; pm1 is -1 on the SDS011, which does not
#      measure it) and a 24-bit signature of the frame's payload (equal payloads, equal
#      signatures: the stuck-sensor check uses it).  Counters: `frames`, `checksum_errors`
#      (frames whose checksum failed, skipped), `garbage_bytes` (bytes dropped while
#      looking for a frame start), `replies` (command acknowledgements).
# On failure: nothing raises on bad input; a bad frame is counted and skipped, and the
#      parser resynchronises on the next frame header.
#
# Frame formats:
#   SDS011 (Laser Dust Sensor Control Protocol V1.3): 10 bytes AA C0 p25L p25H p10L p10H
#     id1 id2 sum AB, sum = (bytes 2..7) & 0xFF, values in 0.1 ug/m3; a reply to a command
#     has C5 instead of C0 and the same length.
#   PMS5003 (Plantower PMS5003 data manual, "Appendix I"): 42 4D, frame length (16-bit BE,
#     28 for data), 13 data words (BE), 16-bit BE sum of every byte before it.  Words 4-6
#     are PM1.0/PM2.5/PM10 "under atmospheric environment" in ug/m3, the values
#     Sensor.Community's airrohr reports; words 7-12 are particle counts per 0.1 L.  A reply
#     to a command is a 4-byte-length frame.
#
# RAM: 32-byte frame and replay buffers and a 64-byte receive buffer per sensor, made in the
# constructor; `poll()` allocates nothing with machine.UART's readinto(buf, nbytes) (one
# small memoryview per read with a readinto(buf)-only UART).

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_SDS_HEAD = const(0xAA)
_SDS_DATA = const(0xC0)
_SDS_REPLY = const(0xC5)
_SDS_TAIL = const(0xAB)
_SDS_LEN = const(10)

_PMS_HEAD1 = const(0x42)
_PMS_HEAD2 = const(0x4D)
_PMS_DATA_LEN = const(28)  # frame length field of a data frame
_PMS_MAX = const(32)

_RX_LEN = const(64)

# SDS011 "set sleep and work" (protocol V1.3, §"Set sleep and work"): AA B4 06 01 mode
# 00 x10 FF FF sum AB; mode 0 sleeps, 1 works; device id FF FF addresses any sensor;
# sum = bytes 2..16 & 0xFF.
SDS011_SLEEP = b"\xaa\xb4\x06\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\x05\xab"
SDS011_WAKE = b"\xaa\xb4\x06\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\x06\xab"
# PMS5003 commands (data manual, "Appendix II"): 42 4D cmd dataH dataL sumH sumL;
# E4 00 00 sleeps, E4 00 01 wakes (the fan restarts; data is stable 30 s later).
PMS5003_SLEEP = b"\x42\x4d\xe4\x00\x00\x01\x73"
PMS5003_WAKE = b"\x42\x4d\xe4\x00\x01\x01\x74"


def _ignore(pm1_x10, pm25_x10, pm10_x10, signature):
    pass


class _UartSensor:
    """The parts both parsers share: the UART, the buffers and the counters."""

    SLEEP = b""
    WAKE = b""

    def __init__(self, uart, sink=None):
        self._uart = uart
        self._sink = sink or _ignore
        self._frame = bytearray(_PMS_MAX)
        self._n = 0  # bytes of the current candidate frame in _frame
        self._rx = bytearray(_RX_LEN)
        self._replay = bytearray(_PMS_MAX)  # bytes to parse again after a false start
        self._rpos = 0
        self._rn = 0
        self._rx_mv = memoryview(self._rx)
        self._has_readinto = hasattr(uart, "readinto")
        self._nbytes = self._has_readinto  # until readinto(buf, nbytes) proves unsupported
        self.frames = 0
        self.checksum_errors = 0
        self.garbage_bytes = 0
        self.replies = 0

    def sleep(self):
        """Send the sensor to sleep (fan and laser off)."""
        self._uart.write(self.SLEEP)

    def wake(self):
        """Wake the sensor; it reports once a second again."""
        self._uart.write(self.WAKE)

    def poll(self):
        """Parse what the UART holds now; returns the number of good data frames."""
        before = self.frames
        uart = self._uart
        while True:
            waiting = uart.any()
            if not waiting:
                break
            n = waiting if waiting < _RX_LEN else _RX_LEN
            chunk = self._rx
            if self._nbytes:
                # machine.UART.readinto(buf, nbytes): no more than is waiting, so a UART
                # built with a timeout (board.py uses 100 ms) never waits for more
                try:
                    got = uart.readinto(chunk, n)
                except TypeError:  # readinto(buf) only (pyserial): a view of n bytes
                    self._nbytes = False
                    got = uart.readinto(self._rx_mv[:n])
            elif self._has_readinto:
                got = uart.readinto(self._rx_mv[:n])  # allocates one small view
            else:
                chunk = uart.read(min(waiting, _RX_LEN))
                got = len(chunk) if chunk else 0
            if not got:
                break
            for i in range(got):
                self._put(chunk[i])
        return self.frames - before

    def feed(self, data):
        """Parse bytes given directly (tests, replays); returns good data frames."""
        before = self.frames
        for b in data:
            self._put(b)
        return self.frames - before

    def _step(self, b):  # the sensor's frame state machine, one byte at a time
        raise NotImplementedError

    def _put(self, b):
        self._step(b)
        # bytes handed back by _resync are parsed again, in order, before the next new one
        while self._rpos < self._rn:
            c = self._replay[self._rpos]
            self._rpos += 1
            self._step(c)
        self._rpos = self._rn = 0

    def _resync(self, drop):
        """The candidate frame is not one: drop its first `drop` bytes and parse the rest
        again (ahead of any bytes still waiting to be re-parsed), so a header hidden
        inside garbage or a cut-off frame is not lost.  No recursion: _put re-parses."""
        f = self._frame
        r = self._replay
        keep = self._n - drop
        rpos = self._rpos
        remaining = self._rn - rpos
        self.garbage_bytes += drop
        # new replay = f[drop:n] + r[rpos:rn]; the total never exceeds one frame, because
        # every byte in it was handed back once and at least one byte is dropped each time
        if keep > rpos:
            for i in range(remaining - 1, -1, -1):
                r[keep + i] = r[rpos + i]
        else:
            for i in range(remaining):
                r[keep + i] = r[rpos + i]
        for i in range(keep):
            r[i] = f[drop + i]
        self._rpos = 0
        self._rn = keep + remaining
        self._n = 0


class SDS011(_UartSensor):
    """Nova Fitness SDS011 in its default active reporting mode (one frame a second)."""

    SLEEP = SDS011_SLEEP
    WAKE = SDS011_WAKE

    def _step(self, b):
        f = self._frame
        n = self._n
        if n == 0:
            if b == _SDS_HEAD:
                f[0] = b
                self._n = 1
            else:
                self.garbage_bytes += 1
            return
        f[n] = b
        n += 1
        self._n = n
        if n == 2:
            if b != _SDS_DATA and b != _SDS_REPLY:
                self._resync(1)
            return
        if n < _SDS_LEN:
            return
        if f[9] != _SDS_TAIL:
            self._resync(1)  # not a frame after all: look for AA inside it
            return
        if (f[2] + f[3] + f[4] + f[5] + f[6] + f[7]) & 0xFF != f[8]:
            # a frame cut short and spliced onto the next one also fails: resume at the
            # next frame start inside it if there is one, else count a corrupted frame
            for k in range(1, _SDS_LEN - 1):
                if f[k] == _SDS_HEAD and (f[k + 1] == _SDS_DATA or f[k + 1] == _SDS_REPLY):
                    self._resync(k)
                    return
            self._n = 0
            self.checksum_errors += 1
            return
        self._n = 0
        if f[1] == _SDS_REPLY:
            self.replies += 1
            return
        self.frames += 1
        pm25 = f[2] | (f[3] << 8)
        pm10 = f[4] | (f[5] << 8)
        self._sink(-1, pm25, pm10, (pm25 << 8) ^ pm10)


class PMS5003(_UartSensor):
    """Plantower PMS5003 in its default active mode (a frame every 0.2-2.3 s; about one a
    second in stable air)."""

    SLEEP = PMS5003_SLEEP
    WAKE = PMS5003_WAKE

    def _step(self, b):
        f = self._frame
        n = self._n
        if n == 0:
            if b == _PMS_HEAD1:
                f[0] = b
                self._n = 1
            else:
                self.garbage_bytes += 1
            return
        f[n] = b
        n += 1
        self._n = n
        if n == 2:
            if b != _PMS_HEAD2:
                self._resync(1)
            return
        if n < 4:
            return
        length = (f[2] << 8) | f[3]
        if n == 4:
            # a data frame (28) or a command reply (4); anything else is not a frame
            if length != _PMS_DATA_LEN and length != 4:
                self._resync(1)
            return
        if n < length + 4:
            return
        total = 0
        for i in range(n - 2):
            total += f[i]
        if total & 0xFFFF != (f[n - 2] << 8) | f[n - 1]:
            # as SDS011: a cut-off frame spliced onto the next one is a framing error
            for k in range(2, n - 1):
                if f[k] == _PMS_HEAD1 and f[k + 1] == _PMS_HEAD2:
                    self._resync(k)
                    return
            self._n = 0
            self.checksum_errors += 1
            return
        self._n = 0
        if length != _PMS_DATA_LEN:
            self.replies += 1
            return
        self.frames += 1
        sig = 0
        for i in range(4, 30, 2):  # the 13 data words, for the stuck-sensor check
            sig = ((sig << 5) ^ (sig >> 19) ^ ((f[i] << 8) | f[i + 1])) & 0xFFFFFF
        # words 4..6 (bytes 10..15): PM1.0, PM2.5, PM10 under atmospheric environment
        self._sink(((f[10] << 8) | f[11]) * 10, ((f[12] << 8) | f[13]) * 10,
                   ((f[14] << 8) | f[15]) * 10, sig)


SENSORS = {"sds011": SDS011, "pms5003": PMS5003}
