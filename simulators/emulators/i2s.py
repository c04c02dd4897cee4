"""An I2S MEMS microphone on a simulated clock, with sound of a known level.

`I2SEmulator` has the `readinto(buf)` of `machine.I2S` (non-blocking mode: it returns the
number of bytes written, 0 when no audio is due yet): it hands out exactly the samples whose
time has passed on a `SimClock`, so a sampler polled on that clock sees audio at the real
rate.  Like the I2S DMA ring, it holds at most `dma_samples` unread samples; older ones
are dropped and counted (`overruns`, `dropped_samples`).

The PCM is what an INMP441-style microphone would send: mono, little-endian, 32-bit slots
carrying 24-bit samples left-justified (bits=32) or 16-bit samples (bits=16), scaled by
the microphone sensitivity: a 94 dB SPL sine is `sensitivity_dbfs` dB below a full-scale
sine (0 dBFS = the RMS of a full-scale sine, AES17).  `read_errors` makes readinto() raise
OSError on chosen calls.

Sources, each with its truth (`spl_db`, and `laeq_db(fs)` where it is defined):

- `Sine(freq_hz, spl_db)`: a steady tone; LAeq = spl + A(f) (IEC 61672-1 E.6).
- `ToneBurst(freq_hz, spl_db, start_s, duration_s)`: a tone switched on and off at
  zero crossings (IEC 61672-1 5.9 tonebursts), silence around it.
- `Steps(freq_hz, [(duration_s, spl_db), ...])`: a tone whose level steps, for percentiles.
- `PinkNoise(spl_db, seed)`: a random-phase multisine on the grid of one period of
  `period_samples`, power per bin proportional to 1/f from 20 Hz to min(20 kHz, 0.45 fs);
  made with an inverse FFT written here (no numpy).  Because the signal is exactly a sum of
  sines, its true LAeq is exact: the sum over bins of (amplitude^2 / 2) times the analog
  A-weighting magnitude squared at the bin's frequency (`laeq_db`), no filter involved.
- `Constant(value)`: a stuck microphone (a constant PCM word).
- `PcmLoop(pcm_bytes)`: replays PCM made elsewhere (e.g. by `render_pcm()` on the host)
  cyclically; the only source MicroPython tests need, so this module runs there too.

Written in the MicroPython subset (no typing, no dataclasses) so MicroPython tests can use
the same `I2SEmulator`; the PCM of the float sources is best rendered on the host.
"""

import math
import sys
from array import array

from firmware.ticks import ticks_diff

P_REF = 20e-6  # Pa, the reference sound pressure
P_94 = P_REF * 10 ** (94.0 / 20.0)  # 1.0024 Pa: the 94 dB SPL of calibrators and datasheets


def a_weighting_db(f):
    """IEC 61672-1 (E.6) A-weighting of the analog design, 0 dB at 1 kHz."""
    d = math.sqrt(0.5)
    fr, fl, fh = 1000.0, 10**1.5, 10**3.9
    b = (fr**2 + fl**2 * fh**2 / fr**2 - d * (fl**2 + fh**2)) / (1.0 - d)
    c = fl**2 * fh**2
    f1 = math.sqrt((-b - math.sqrt(b * b - 4.0 * c)) / 2.0)
    f4 = math.sqrt((-b + math.sqrt(b * b - 4.0 * c)) / 2.0)
    fa = 10**2.45
    f2 = (3.0 - math.sqrt(5.0)) / 2.0 * fa
    f3 = (3.0 + math.sqrt(5.0)) / 2.0 * fa

    def ra2(x):
        x2 = x * x
        return (f4**4 * x2**4) / (
            (x2 + f1 * f1) ** 2 * (x2 + f2 * f2) * (x2 + f3 * f3) * (x2 + f4 * f4) ** 2
        )

    return 10.0 * math.log10(ra2(f) / ra2(1000.0))


def spl_to_pa_rms(spl_db):
    return P_REF * 10 ** (spl_db / 20.0)


class SimClock:
    """Milliseconds since the start of the simulation; the test moves it."""

    def __init__(self, start_ms=0):
        self.now_ms = start_ms

    def ticks_ms(self):
        return self.now_ms

    def advance(self, ms):
        self.now_ms += ms
        return self.now_ms


# -- sources: pressure in Pa at sample indices [start, start + n) -------------------------


class Sine:
    def __init__(self, freq_hz, spl_db, phase=0.0):
        self.freq_hz = freq_hz
        self.spl_db = spl_db
        self.phase = phase
        self.amplitude_pa = spl_to_pa_rms(spl_db) * math.sqrt(2.0)

    def laeq_db(self, fs=None):
        return self.spl_db + a_weighting_db(self.freq_hz)

    def pressure(self, start, n, fs):
        w = 2.0 * math.pi * self.freq_hz / fs
        a = self.amplitude_pa
        ph = self.phase
        return [a * math.sin(w * (start + i) + ph) for i in range(n)]


class ToneBurst:
    """A tone of `spl_db` (its steady level) present from start_s for duration_s."""

    def __init__(self, freq_hz, spl_db, start_s, duration_s):
        self.freq_hz = freq_hz
        self.spl_db = spl_db
        self.start_s = start_s
        self.duration_s = duration_s
        self.amplitude_pa = spl_to_pa_rms(spl_db) * math.sqrt(2.0)

    def pressure(self, start, n, fs):
        w = 2.0 * math.pi * self.freq_hz / fs
        on = int(round(self.start_s * fs))
        off = on + int(round(self.duration_s * fs))
        a = self.amplitude_pa
        out = []
        for i in range(start, start + n):
            # starts at a zero crossing; the phase counts from the burst's start
            out.append(a * math.sin(w * (i - on)) if on <= i < off else 0.0)
        return out


class Steps:
    """A tone at `freq_hz` whose level follows `steps` [(duration_s, spl_db), ...], then
    repeats; a spl_db of None is silence."""

    def __init__(self, freq_hz, steps):
        self.freq_hz = freq_hz
        self.steps = list(steps)
        self.period_s = sum(d for d, _ in self.steps)

    def pressure(self, start, n, fs):
        w = 2.0 * math.pi * self.freq_hz / fs
        bounds = []
        t = 0
        for d, spl in self.steps:
            t += int(round(d * fs))
            amp = 0.0 if spl is None else spl_to_pa_rms(spl) * math.sqrt(2.0)
            bounds.append((t, amp))
        period = t
        out = []
        for i in range(start, start + n):
            k = i % period
            amp = 0.0
            for end, level in bounds:
                amp = level
                if k < end:
                    break
            out.append(amp * math.sin(w * i))
        return out


class Constant:
    """A stuck data line: every sample is the same PCM value (in full-scale units)."""

    def __init__(self, value_fs=0.0):
        self.value_fs = value_fs

    def pressure(self, start, n, fs):
        return None  # handled by I2SEmulator as a constant full-scale value


class PinkNoise:
    """Pink noise of total (unweighted) level spl_db, as a periodic random-phase multisine.

    One period has `period_samples` (a power of two) samples at `fs`; the spectrum has
    bins k from ceil(f_lo / df) to floor(f_hi / df) (df = fs / period_samples) with power
    proportional to 1 / f_k and phases from a seeded generator.
    """

    def __init__(self, spl_db, fs, seed=1, period_samples=65536, f_lo=20.0, f_hi=20000.0):
        if period_samples & (period_samples - 1):
            raise ValueError("period_samples must be a power of two")
        self.spl_db = spl_db
        self.fs = fs
        self.period = period_samples
        df = fs / period_samples
        f_hi = min(f_hi, 0.45 * fs)
        k_lo = int(math.ceil(f_lo / df))
        k_hi = int(f_hi / df)
        rng = _Lcg(seed)
        bins = []
        total = 0.0
        for k in range(k_lo, k_hi + 1):
            amp = 1.0 / math.sqrt(k * df)
            bins.append((k, amp, 2.0 * math.pi * rng.uniform()))
            total += amp * amp / 2.0
        scale = spl_to_pa_rms(spl_db) / math.sqrt(total)
        self.bins = [(k, amp * scale, ph) for k, amp, ph in bins]
        self.df = df
        self._wave = None

    def laeq_db(self, fs=None):
        """The exact A-weighted level: sum of a_k^2 / 2 * |A(f_k)|^2 over the bins."""
        energy = 0.0
        for k, amp, _ph in self.bins:
            energy += amp * amp / 2.0 * 10 ** (a_weighting_db(k * self.df) / 10.0)
        return 10.0 * math.log10(energy / (P_REF * P_REF))

    def wave(self):
        """One period in Pa: x[n] = sum_k a_k cos(2 pi k n / N + phi_k), by inverse FFT."""
        if self._wave is None:
            n = self.period
            re = [0.0] * n
            im = [0.0] * n
            for k, amp, ph in self.bins:
                # a cos(wn + ph) = (a/2) e^{j(wn+ph)} + conj: bins k and N - k
                c, s = amp / 2.0 * math.cos(ph), amp / 2.0 * math.sin(ph)
                re[k] += c
                im[k] += s
                re[n - k] += c
                im[n - k] -= s
            _fft_inplace(re, im, inverse=True)
            self._wave = re
        return self._wave

    def pressure(self, start, n, fs):
        if fs != self.fs:
            raise ValueError(f"PinkNoise made for {self.fs!r} Hz, asked for {fs!r} Hz")
        w = self.wave()
        p = self.period
        return [w[(start + i) % p] for i in range(n)]


class PcmLoop:
    """Replays `pcm` (bytes of whole samples) cyclically."""

    def __init__(self, pcm):
        self.pcm = memoryview(pcm)

    def copy_into(self, dst, sample_start, nbytes, bps):
        src = self.pcm
        size = len(src)
        pos = (sample_start * bps) % size
        done = 0
        while done < nbytes:
            take = min(nbytes - done, size - pos)
            dst[done : done + take] = src[pos : pos + take]
            done += take
            pos = 0


class _Lcg:
    """A small portable generator (Numerical Recipes LCG) for reproducible phases."""

    def __init__(self, seed):
        self.x = (seed * 2654435761 + 1) & 0xFFFFFFFF

    def uniform(self):
        self.x = (1664525 * self.x + 1013904223) & 0xFFFFFFFF
        return self.x / 4294967296.0


def _fft_inplace(re, im, inverse=False):
    """Iterative radix-2 FFT on two lists; inverse=True computes sum_k X_k e^{+j2pikn/N}
    (no 1/N: the spectrum above is already in amplitude units)."""
    n = len(re)
    j = 0
    for i in range(1, n):
        bit = n >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
        if i < j:
            re[i], re[j] = re[j], re[i]
            im[i], im[j] = im[j], im[i]
    sign = 1.0 if inverse else -1.0
    size = 2
    while size <= n:
        half = size // 2
        ang = sign * 2.0 * math.pi / size
        wr_step, wi_step = math.cos(ang), math.sin(ang)
        for start in range(0, n, size):
            wr, wi = 1.0, 0.0
            for k in range(start, start + half):
                t = k + half
                tr = wr * re[t] - wi * im[t]
                ti = wr * im[t] + wi * re[t]
                re[t] = re[k] - tr
                im[t] = im[k] - ti
                re[k] += tr
                im[k] += ti
                wr, wi = wr * wr_step - wi * wi_step, wr * wi_step + wi * wr_step
        size *= 2


# -- PCM ----------------------------------------------------------------------------------


def pa_to_full_scale(sensitivity_dbfs):
    """Full-scale units (a full-scale sine has peak 1) per Pa."""
    return 10 ** (sensitivity_dbfs / 20.0) / (math.sqrt(2.0) * P_94)


def render_pcm(source, start, n, fs, bits=32, sensitivity_dbfs=-26.0):
    """PCM bytes of samples [start, start + n) of `source`, as the microphone sends them."""
    if sys.byteorder != "little":
        raise RuntimeError("PCM is little-endian; this host is not")
    if isinstance(source, Constant):
        values = [source.value_fs] * n
    else:
        k = pa_to_full_scale(sensitivity_dbfs)
        values = [p * k for p in source.pressure(start, n, fs)]
    if bits == 32:
        out = array("i", [0]) * n
        for i in range(n):
            q = int(round(values[i] * 8388608.0))
            q = -8388608 if q < -8388608 else (8388607 if q > 8388607 else q)
            out[i] = q * 256  # 24 bits, left-justified in the 32-bit slot
    elif bits == 16:
        out = array("h", [0]) * n
        for i in range(n):
            q = int(round(values[i] * 32768.0))
            out[i] = -32768 if q < -32768 else (32767 if q > 32767 else q)
    else:
        raise ValueError(f"bits must be 16 or 32, got {bits!r}")
    return bytes(out)


class I2SEmulator:
    """`machine.I2S`-shaped microphone input on `clock` (see the module docstring)."""

    def __init__(
        self,
        source,
        clock,
        sample_rate=32000,
        bits=32,
        sensitivity_dbfs=-26.0,
        dma_samples=None,
        read_errors=(),
    ):
        if bits not in (16, 32):
            raise ValueError(f"bits must be 16 or 32, got {bits!r}")
        self.source = source
        self.clock = clock
        self.sample_rate = sample_rate
        self.bits = bits
        self.bps = bits // 8
        self.sensitivity_dbfs = sensitivity_dbfs
        self.dma_samples = dma_samples or sample_rate // 4  # ESP32 ibuf ~ 250 ms
        self.read_errors = set(read_errors)  # readinto() call numbers that raise
        self.delivered = 0  # samples handed out (or dropped) so far
        self.dropped_samples = 0
        self.overruns = 0
        self.calls = 0
        self._t0 = clock.ticks_ms()

    def due(self):
        """Samples whose time has passed and that were not handed out yet."""
        elapsed = ticks_diff(self.clock.ticks_ms(), self._t0)
        return elapsed * self.sample_rate // 1000 - self.delivered

    def readinto(self, buf):
        self.calls += 1
        if self.calls in self.read_errors:
            raise OSError(5, "EIO (emulated I2S read error)")
        due = self.due()
        if due > self.dma_samples:  # the DMA ring overwrote the oldest audio
            lost = due - self.dma_samples
            self.delivered += lost
            self.dropped_samples += lost
            self.overruns += 1
            due = self.dma_samples
        n = min(due, len(buf) // self.bps)
        if n <= 0:
            return 0
        nbytes = n * self.bps
        if isinstance(self.source, PcmLoop):
            self.source.copy_into(memoryview(buf), self.delivered, nbytes, self.bps)
        else:
            pcm = render_pcm(
                self.source, self.delivered, n, self.sample_rate, self.bits, self.sensitivity_dbfs
            )
            memoryview(buf)[:nbytes] = pcm
        self.delivered += n
        return nbytes
