# Noise node measurement: I2S PCM -> A-weighting (IEC 61672-1 class 2) -> LAeq, LAFmax,
# LAF10/50/90 and optional 1/3-octave band levels (IEC 61260-1 class 2) per interval.
#
# In:  PCM blocks from hw.i2s.readinto(buf) (machine.I2S semantics: returns the number of
#      bytes written, mono, little-endian, 16-bit or 32-bit signed slots; 32-bit slots carry
#      24-bit microphones such as the INMP441 left-justified).
# Out: NoiseSampler.poll(now_ms) returns, once per reporting interval, a dict of registry
#      metrics (firmware/metrics.py: laeq_db, lamax_db, la10_db, la50_db, la90_db,
#      band_*_db when bands are on, noise_faults); otherwise None.
# On failure: an OSError from readinto() is counted and flagged (FAULT_I2S), never raised;
#      bad configuration raises ValueError naming the option.
#
# Privacy: audio lives only in one PCM bytearray that every read overwrites; nothing derived
# from it but energy sums leaves this module.  The dict returned by poll() holds levels and
# a fault bitmask, nothing else (docs/noise.md, "Privacy").
#
# Arithmetic.  MicroPython boxes every float on the ESP32 (and on the WebAssembly build
# used in tests), so a float sample loop allocates ~200 bytes per sample.  Everything that
# runs per sample or per sub-block here is integer arithmetic kept inside the small-int
# range (|v| < 2**30): filters are fixed point with split multiplies (a 28-bit state times a
# 15-bit coefficient as two 14 x 15-bit products), energies are block-floating-point and the
# running sums are tiny software floats (mantissa < 2**29, integer exponent).  Floats
# appear only at start-up (filter design) and when an interval closes (the dB values).
# Measured: 0 bytes allocated per audio block under MicroPython, with and without bands
# (tests/firmware/test_noise.py).
#
# The per-sample kernels are kept as source text (KERNEL_SOURCES, noise_kernels.py) that is
# compiled at start-up two ways from the same text: as `@micropython.viper` native code where the
# port's compiler has a native emitter (ESP32-S3: xtensawin), and, with the decorator and
# the viper casts `int(...)` removed, as plain bytecode (the reference path: under CPython,
# on ports without a native emitter, or with config["viper"] False).  They are strings, not
# functions, because mpy-cross without -march (as for any .py here) rejects viper code.
# Every value stays below 2**30, so viper's machine-word ints and Python's ints give
# bit-identical results; test_noise.py checks that on MicroPython's Unix port and compiles
# the viper text with `mpy-cross -march=xtensawin`.
#
# RAM (32 kHz, 32-bit slots, 1024-sample blocks), retained after gc.collect() as measured on
# MicroPython's Unix port (64-bit objects, an upper bound for the ESP32): 12 KB, of which
# PCM block 4 KB, level histogram 3.8 KB, compiled kernel ~3 KB; with bands 25 KB (stage
# buffers 4.7 KB, band state 2.3 KB, three more kernels).  Code that runs only while a
# sampler is made, the filter design with the rest of the start-up (noise_design.py: the
# config checks, the kernels compiled, the buffers allocated) and the kernel texts
# (noise_kernels.py), is imported then and dropped again (firmware.drop_module), so a node
# keeps only the per-block code of this module: ~6 KB as an .mpy file under MicroPython
# 1.27's WebAssembly build (bench/firmware_memory.py); frozen into the image, it stays in
# flash.

import math
from array import array

from firmware import drop_module, use_module

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


from firmware.ticks import ticks_add as _ticks_add
from firmware.ticks import ticks_diff as _ticks_diff

KIND = "noise"

# noise_faults bits (metric 0x25 noise_faults, a bitmask per reporting interval)
FAULT_I2S = const(0x01)  # readinto() raised OSError at least once in the interval
FAULT_CLIPPED = const(0x02)  # a sample reached full scale: levels are lower bounds
FAULT_STUCK = const(0x04)  # the PCM value did not change (peak-to-peak <= 2 LSB) for 1 s
FAULT_SILENT = const(0x08)  # a 1-s LAeq fell below silence_floor_db: microphone not hearing
FAULT_INCOMPLETE = const(0x10)  # audio covered < 90 % of the interval (overrun, stalls)

DEFAULTS = {
    "interval_s": 60,
    "sample_rate": 32000,
    "bits": 32,  # PCM slot width: 16 or 32
    "sensitivity_dbfs": -26.0,  # INMP441: -26 dBFS for a 94 dB SPL 1 kHz sine
    "calibration_offset_db": 0.0,  # per microphone, from the field calibrator
    "bands": False,  # 1/3-octave bands cost ~7x the A-weighting path's CPU
    "block_samples": 0,  # 0: 8 sub-blocks (32 ms)
    "max_blocks_per_poll": 8,
    "silence_floor_db": 15.0,  # below any MEMS microphone's self-noise (INMP441: 33 dB(A))
    "viper": True,  # use the native kernel where the port can compile it
}

# Start-up-only code lives in modules of its own, imported while a NoiseSampler is made and
# dropped again (firmware/__init__.py): the filter design with the rest of the sampler's
# start-up (noise_design.setup), and the kernel texts.
_DESIGN = "firmware.measure.noise_design"
_KERNELS = "firmware.measure.noise_kernels"


def __getattr__(name):
    """The start-up-only names, for host code and tests that use them from here
    (noise.a_weighting_design, noise.compile_kernel, noise.KERNEL_SOURCES, ...): loaded at
    each use."""
    if name.startswith("__"):
        raise AttributeError(name)
    module = use_module(_KERNELS if name == "KERNEL_SOURCES" else _DESIGN)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError("module %r has no attribute %r" % (__name__, name)) from None


# -- the per-sample kernels ---------------------------------------------------------------
#
# Word layout of the A kernel's state array (array("i"), every word stored + 2**29 so that
# it is never negative: viper's ptr32 loads zero-extend on 64-bit ports, sign-extend on
# 32-bit ones; a non-negative word reads the same on both):
#   0 byte offset of the first sample   1 bytes per sample   2..5 byte offsets/low mask
#   6..17  four high-pass sections: eps as (m, r1, r2)
#   18..32 the f4 biquad: b0 b1 b2 a1 a2 as (m, r1, r2)
#   33 x[n-1]  34..37 section outputs  38 biquad input[n-2]  39 y[n-1]  40 y[n-2]
#   41 energy sum  42 its shift  43 max sample  44 min sample
# Bounds (docs/noise.md): the 24-bit sample is scaled by 2**3 (|x| <= 2**26) so that quiet
# sounds keep precision in the leak products eps * p; the worst-case gain (sum |h|) of
# every partial cascade of the sections is <= 2.32 at any rate, so states stay below
# 2**27.3 and every product below 2**29.  The energy
# of a sub-block is en * 4**sh: samples are squared as (y >> sh) with sh raised whenever
# |y| >= 2**(10 + sh), so each square is <= 2**20 and a sub-block of <= 511 samples sums to
# < 2**29.

_BIAS = const(536870912)  # 2**29: kernel words are stored biased (layout above)
_A_WORDS = const(45)
_A_EN = const(41)
_A_SH = const(42)
_A_XMAX = const(43)
_A_XMIN = const(44)


def identity(buf):
    """ptr8 and ptr32 of the reference kernels (noise_design.compile_kernel)."""
    return buf


# -- software floats for the running sums (small ints only) -------------------------------
#
# A value is a pair (m, x) = m * 2**x in two slots of an array("i"), 0 <= m < 2**29.
# Normalised values have 2**28 <= m < 2**29 (or m == 0).

_M_TOP = const(536870912)  # 2**29
_M_LOW = const(268435456)  # 2**28


def _fadd(a, i, m, x):
    """a[i:i+2] += m * 2**x (0 <= m < 2**30)."""
    if m == 0:
        return
    while m >= _M_TOP:
        m >>= 1
        x += 1
    am = a[i]
    if am == 0:
        a[i] = m
        a[i + 1] = x
        return
    ax = a[i + 1]
    if x > ax:
        d = x - ax
        am = am >> d if d < 30 else 0
        ax = x
    elif ax > x:
        d = ax - x
        m = m >> d if d < 30 else 0
    am += m
    if am >= _M_TOP:
        am >>= 1
        ax += 1
    a[i] = am
    a[i + 1] = ax


def _fnorm(a, i):
    m = a[i]
    if m == 0:
        return
    x = a[i + 1]
    while m >= _M_TOP:
        m >>= 1
        x += 1
    while m < _M_LOW:
        m <<= 1
        x -= 1
    a[i] = m
    a[i + 1] = x


def _fvalue(a, i):
    """The float value (interval close only: allocates)."""
    return a[i] * 2.0 ** a[i + 1]


def _mulq15(m, q):
    """m * q / 2**15 for 0 <= m < 2**29, 0 <= q <= 2**15, in small ints."""
    return (m >> 15) * q + (((m & 32767) * q) >> 15)


_HIST_BINS = const(1900)  # 0.1 dB bins of the FAST level, 0 .. 190 dB re 1 LSB^2
_SEC_FLOAT_SLOTS = const(12)  # second, interval, fast, fast max, silence threshold, seed
_SEED_SHIFT = const(5)
_SEED_SB = const(32)  # 2**_SEED_SHIFT sub-blocks

# The constants noise_design.setup() builds a sampler's arrays with, in its order (const()
# names are the compiler's only: another module cannot read them).
LAYOUT = (_BIAS, _A_WORDS, _SEC_FLOAT_SLOTS, _HIST_BINS, _SEED_SB, _M_TOP, _M_LOW)


def _bins_of(a, i, tab):
    """0.1 dB histogram bin of the normalised value a[i:i+2] (small ints only)."""
    m = a[i]
    if m == 0:
        return 0
    cdb = ((a[i + 1] + 28) * 30103) // 100 + tab[(m >> 20) - 256]
    b = cdb // 10
    if b < 0:
        return 0
    if b >= _HIST_BINS:
        return _HIST_BINS - 1
    return b


def _level_db(energy, count, offset_db):
    if energy <= 0.0 or count <= 0:
        return 0.0
    v = 10.0 * math.log10(energy / count) + offset_db
    if v < 0.0:
        return 0.0
    if v > 150.0:
        return 150.0
    return v


class NoiseSampler:
    """A-weighted sound levels of one I2S microphone, per reporting interval.

    Lifecycle: construct once at boot (designs the filters and allocates every buffer);
    call poll(now_ms) whenever wait_ms() has passed; poll() never raises for I/O faults.
    now_ms is the node's monotonic millisecond clock (time.ticks_ms() on a board);
    differences are taken with ticks_diff, so wrap-around is harmless.

    Per interval (IEC 61672-1:2013): laeq_db = 10 lg(mean of p_A^2 / p0^2) over all audio
    of the interval (5.2, the energy mean of the 1-s LAeq values); lamax_db = maximum of
    the FAST time-weighted level (tau = 125 ms, 5.8), evaluated every 4 ms; la10/50/90_db =
    levels exceeded for 10/50/90 % of the time by the FAST level sampled every 100 ms
    (10 Hz), from a 0.1 dB histogram; band_<f>hz_db = unweighted Leq per 1/3-octave band
    (IEC 61260-1 class 2 band-pass filters), when config["bands"].
    """

    KIND = KIND

    # The state noise_design.setup() gives a sampler at start-up, declared here for readers
    # and the type checker (MicroPython compiles a bare annotation to nothing: no heap).
    config: dict
    sample_rate: int
    interval_s: int
    block_samples: int
    kernel_kind: str  # "viper" or "reference"
    a_design: dict
    _bps: int
    _nsb: int  # samples per sub-block (4 ms)
    _buf: bytearray  # the PCM block
    _max_blocks: int
    _sb_per_sec: int
    _sb_per_pct: int
    _settle_sb: int
    _cal_a: float
    _st: array  # the A kernel's state words (layout above)
    _bands: int
    _bst: array
    _band_at: array
    _band_stage: array
    _lpf_at: array
    _band_names: list
    _band_cal: list
    _stages: list
    _stage_bands: list
    _f: array
    _hist: array
    _tab: array
    _q0: int
    _q1: int
    _t_start: "int | None"
    _t_close: int
    _settle: int
    _backlog: bool
    _sb_fill: int

    def __init__(self, hw, config=None):
        self._i2s = hw.i2s
        # the config checked, the filters designed, the kernels compiled and every buffer
        # allocated: start-up only, so in noise_design.py (see RAM in the header)
        designer = use_module(_DESIGN)
        try:
            kernels = designer.setup(self, config)
        finally:
            drop_module(_DESIGN)
        # (A-weighting, and with bands: PCM decode, band-pass, half-band decimation)
        self._kernel, self._k_decode, self._k_band, self._k_half = kernels

    # -- lifecycle -----------------------------------------------------------------------

    def poll(self, now_ms):
        """Read and process the audio available now (at most max_blocks_per_poll blocks);
        return the interval's metrics dict when the interval has closed, else None."""
        if self._t_start is None:
            self._t_start = now_ms
            self._t_close = _ticks_add(now_ms, self.interval_s * 1000)
        buf = self._buf
        full = len(buf)
        blocks = 0
        self._backlog = False
        while blocks < self._max_blocks:
            try:
                nbytes = self._i2s.readinto(buf)
            except OSError:
                self._faults |= FAULT_I2S
                self.read_errors += 1
                break
            if not nbytes:
                break
            self._process(nbytes // self._bps)
            blocks += 1
            if nbytes < full:
                break
            if blocks == self._max_blocks:
                self._backlog = True
        if _ticks_diff(now_ms, self._t_close) >= 0:
            return self._close(now_ms)
        return None

    def wait_ms(self, now_ms):
        """How long the node may sleep before the next poll: 0 while audio is waiting,
        else one block's duration, never past the interval's close."""
        if self._backlog:
            return 0
        block_ms = self.block_samples * 1000 // self.sample_rate
        if self._t_start is None:
            return 0
        left = _ticks_diff(self._t_close, now_ms)
        if left < 0:
            return 0
        return left if left < block_ms else block_ms

    # -- per block / sub-block (no allocation) -------------------------------------------

    def _reset_subblock_words(self):
        st = self._st
        st[_A_EN] = _BIAS
        st[_A_SH] = _BIAS
        st[_A_XMAX] = _BIAS - 8388609
        st[_A_XMIN] = _BIAS + 8388609

    def _process(self, nsamp):
        st = self._st
        bps = self._bps
        nsb = self._nsb
        kernel = self._kernel
        buf = self._buf
        pos = 0
        while pos < nsamp:
            take = nsb - self._sb_fill
            if take > nsamp - pos:
                take = nsamp - pos
            st[0] = pos * bps + _BIAS
            kernel(buf, take, st)
            if self._bands:
                self._run_bands(pos * bps, take)
            pos += take
            self._sb_fill += take
            if self._sb_fill >= nsb:
                self._sb_fill = 0
                self._close_subblock()
        self.samples_read += nsamp

    def _close_subblock(self):
        st = self._st
        f = self._f
        en = st[_A_EN] - _BIAS
        sh = st[_A_SH] - _BIAS
        xmax = st[_A_XMAX] - _BIAS
        xmin = st[_A_XMIN] - _BIAS
        self._reset_subblock_words()
        # FAST time weighting (IEC 61672-1 5.8): F = a F + (1 - a) E_subblock
        f[4] = _mulq15(f[4], self._q0)
        _fadd(f, 4, _mulq15(en, self._q1), 2 * sh)
        _fnorm(f, 4)
        if self._settle:
            # start-up: the filters settle (64 ms), then the FAST level is seeded with the
            # mean of the next 32 sub-blocks (128 ms, four periods of 31.5 Hz) instead of
            # rising from zero; nothing of this counts.
            self._settle -= 1
            if self._settle < _SEED_SB:
                _fadd(f, 10, en, 2 * sh)
            if self._settle == 0:
                f[4] = f[10]
                f[5] = f[11] - _SEED_SHIFT
                _fnorm(f, 4)
                f[10] = 0
                f[11] = 0
            if self._bands:
                self._clear_band_energy()
            return
        # energy sums (LAeq, IEC 61672-1 5.2 / 3.9)
        _fadd(f, 0, en, 2 * sh)
        self.samples_counted += self._nsb
        # LAFmax (5.9): the maximum of F, evaluated every sub-block
        if f[5] > f[7] or (f[5] == f[7] and f[4] > f[6]) or f[6] == 0:
            f[6] = f[4]
            f[7] = f[5]
        if xmax > self._sec_xmax:
            self._sec_xmax = xmax
        if xmin < self._sec_xmin:
            self._sec_xmin = xmin
        if xmax >= 8388352 or xmin <= -8388352:  # full scale of 16-bit and 24-bit PCM
            self._faults |= FAULT_CLIPPED
        if self._bands:
            self._collect_band_energy()
        self._pct_count += 1
        if self._pct_count >= self._sb_per_pct:
            self._pct_count = 0
            self._hist[_bins_of(f, 4, self._tab)] += 1
        self._sec_count += 1
        if self._sec_count >= self._sb_per_sec:
            self._close_second()

    def _run_bands(self, offset, n):
        bst = self._bst
        bst[0] = offset + _BIAS
        stages = self._stages
        self._k_decode(self._buf, n, bst, stages[0])
        last = len(stages) - 1
        k_band = self._k_band
        for s in range(last + 1):
            src = stages[s]
            for at in self._stage_bands[s]:
                bst[6] = at + _BIAS
                k_band(src, n, bst)
            m = 0
            if s < last:
                bst[6] = self._lpf_at[s] + _BIAS
                m = self._k_half(src, n, bst, stages[s + 1])
            src[0] = src[n]  # the history of the next block: its last two inputs
            src[1] = src[n + 1]
            n = m
            if n == 0:
                break

    def _clear_band_energy(self):
        bst = self._bst
        at = self._band_at
        for b in range(self._bands):
            p = at[b] + 15
            bst[p] = _BIAS
            bst[p + 1] = _BIAS

    def _collect_band_energy(self):
        bst = self._bst
        at = self._band_at
        f = self._f
        for b in range(self._bands):
            p = at[b] + 15
            en = bst[p] - _BIAS
            if en:
                _fadd(f, _SEC_FLOAT_SLOTS + 2 * b, en, 2 * (bst[p + 1] - _BIAS))
                bst[p] = _BIAS
            bst[p + 1] = _BIAS

    def _close_second(self):
        f = self._f
        self._sec_count = 0
        # silence: the second's energy below the floor's (normalised compare)
        _fnorm(f, 0)
        if f[0] == 0 or f[1] < f[9] or (f[1] == f[9] and f[0] < f[8]):
            self._faults |= FAULT_SILENT
        if self._sec_xmax - self._sec_xmin <= 2:
            self._faults |= FAULT_STUCK
        self._sec_xmax = -8388609
        self._sec_xmin = 8388609
        _fadd(f, 2, f[0], f[1])
        f[0] = 0
        f[1] = 0

    # -- interval close (allocates: runs once per interval) ------------------------------

    def _reset_interval(self):
        f = self._f
        for i in (0, 1, 2, 3, 6, 7):
            f[i] = 0
        for i in range(_SEC_FLOAT_SLOTS, len(f)):
            f[i] = 0
        h = self._hist
        for i in range(len(h)):
            h[i] = 0
        self._faults = 0
        self.read_errors = 0
        self.samples_read = 0
        self.samples_counted = 0
        self._sec_count = 0
        self._pct_count = 0
        self._sec_xmax = -8388609
        self._sec_xmin = 8388609

    def _percentile(self, exceeded_pct, total):
        """Level (0.1 dB bin centre, raw dB) exceeded for exceeded_pct % of the samples."""
        h = self._hist
        cum = 0
        b = _HIST_BINS - 1
        while b > 0:
            cum += h[b]
            if cum * 100 >= total * exceeded_pct:
                break
            b -= 1
        return (b + 0.5) / 10.0

    def _close(self, now_ms):
        f = self._f
        if self._sec_count:  # the partial second still counts
            _fadd(f, 2, f[0], f[1])
        elapsed_ms = _ticks_diff(now_ms, _ticks_add(self._t_close, -self.interval_s * 1000))
        expected = elapsed_ms * self.sample_rate / 1000.0
        if self.samples_read < 0.9 * expected:
            self._faults |= FAULT_INCOMPLETE
        cal = self._cal_a
        nsb_db = 10.0 * math.log10(self._nsb)
        out = {
            "laeq_db": _level_db(_fvalue(f, 2), self.samples_counted, cal),
            "lamax_db": _level_db(_fvalue(f, 6), self._nsb, cal),
        }
        total = 0
        for c in self._hist:
            total += c
        for name, pct in (("la10_db", 10), ("la50_db", 50), ("la90_db", 90)):
            if total:
                v = self._percentile(pct, total) - nsb_db + cal
                out[name] = 0.0 if v < 0.0 else (150.0 if v > 150.0 else v)
            else:
                out[name] = 0.0
        if self._bands:
            for b in range(self._bands):
                n = self.samples_counted >> self._band_stage[b]
                e = _fvalue(f, _SEC_FLOAT_SLOTS + 2 * b)
                out[self._band_names[b]] = _level_db(e, n, self._band_cal[b])
        out["noise_faults"] = self._faults
        self.last_samples_counted = self.samples_counted
        self._reset_interval()
        self._t_close = _ticks_add(self._t_close, self.interval_s * 1000)
        if _ticks_diff(now_ms, self._t_close) >= 0:  # a stall longer than an interval
            self._t_close = _ticks_add(now_ms, self.interval_s * 1000)
        return out
