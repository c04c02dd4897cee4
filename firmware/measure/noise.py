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
# sampler is made, the filter design (noise_design.py) and the kernel texts
# (noise_kernels.py), is imported then and dropped again (firmware.drop_module), so a node keeps
# only the per-block code of this module: ~13 KB as an .mpy file under MicroPython 1.27's
# WebAssembly build (bench/firmware_memory.py); frozen into the image, it stays in flash.

import math
from array import array

from firmware import drop_module, use_module
from firmware.metrics import BAND_CENTRES_HZ

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
# dropped again (firmware/__init__.py): the filter design and the kernel texts.
_DESIGN = "firmware.measure.noise_design"
_KERNELS = "firmware.measure.noise_kernels"


def __getattr__(name):
    """The start-up-only names, for host code and tests that use them from here
    (noise.a_weighting_design, noise.KERNEL_SOURCES, ...): loaded at each use."""
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



def reference_source(src):
    """The bytecode (reference) version of a viper kernel text: the same statements with
    the decorator and viper's `int(...)` casts removed; ptr8/ptr32 become identities."""
    return src.replace("@micropython.viper\n", "").replace("int(", "(")


def _identity(buf):
    return buf


def compile_kernel(name, viper):
    """The kernel `name` (a key of KERNEL_SOURCES), natively compiled when `viper` (raises
    SyntaxError/ValueError where the port has no native emitter), else as bytecode."""
    src = use_module(_KERNELS).KERNEL_SOURCES[name]
    drop_module(_KERNELS)  # the text is garbage once compiled
    ns = {}
    if viper:
        import micropython  # the compiler resolves the decorator by this name

        ns["micropython"] = micropython
    else:
        src = reference_source(src)
        ns["ptr8"] = _identity
        ns["ptr32"] = _identity
    exec(src, ns)
    return ns[name]


def _pcm_layout(bits):
    """Header words 1..5 (bytes per sample, MSB/middle/low byte offsets, low-byte mask):
    both formats are read as 24-bit values, 16-bit samples shifted up by 8 bits."""
    if bits == 32:
        return 4, 3, 2, 1, 0xFF
    if bits == 16:
        return 2, 1, 0, 0, 0
    raise ValueError("bits must be 16 or 32, got %r" % (bits,))


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


_LOG_TAB = None  # 10 log10(1 + (t + 0.5)/256) in 0.01 dB, t = 0..255 (built on first use)
_HIST_BINS = const(1900)  # 0.1 dB bins of the FAST level, 0 .. 190 dB re 1 LSB^2
_SEC_FLOAT_SLOTS = const(12)  # second, interval, fast, fast max, silence threshold, seed
_SEED_SHIFT = const(5)
_SEED_SB = const(32)  # 2**_SEED_SHIFT sub-blocks


def _log_table():
    global _LOG_TAB
    if _LOG_TAB is None:
        _LOG_TAB = array(
            "H", [int(round(1000.0 * math.log10(1.0 + (t + 0.5) / 256.0))) for t in range(256)]
        )
    return _LOG_TAB


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

    def __init__(self, hw, config=None):
        cfg = dict(DEFAULTS)
        if config:
            for key in config:
                if key not in DEFAULTS:
                    raise ValueError(
                        "unknown noise option %r; known: %s" % (key, ", ".join(sorted(DEFAULTS)))
                    )
                cfg[key] = config[key]
        self.config = cfg
        fs = int(cfg["sample_rate"])
        if fs < 32000 or fs > 96000:
            raise ValueError(
                "sample_rate must be 32000..96000 Hz (A-weighting up to 8 kHz needs >= 32 kHz),"
                " got %r" % (cfg["sample_rate"],)
            )
        interval_s = int(cfg["interval_s"])
        if interval_s < 1 or interval_s > 3600:
            raise ValueError("interval_s must be 1..3600, got %r" % (cfg["interval_s"],))
        self._i2s = hw.i2s
        self.sample_rate = fs
        self.interval_s = interval_s
        bps, o2, o1, o0, m0 = _pcm_layout(int(cfg["bits"]))
        self._bps = bps
        # sub-block: the time-weighting step, 4 ms (IEC 61672-1 5.8 exponential averaging is
        # exact for a mean square that is constant within a step)
        nsb = (fs + 125) // 250
        self._nsb = nsb
        block = int(cfg["block_samples"]) or 8 * nsb
        if block < 1 or block > 16384:
            raise ValueError("block_samples must be 1..16384, got %r" % (cfg["block_samples"],))
        self.block_samples = block
        self._buf = bytearray(block * bps)
        self._max_blocks = max(1, int(cfg["max_blocks_per_poll"]))
        self._sb_per_sec = (fs + nsb // 2) // nsb
        self._sb_per_pct = max(1, (fs // 10 + nsb // 2) // nsb)  # 100 ms
        self._settle_sb = 16 + _SEED_SB  # 192 ms at start-up, see _close_subblock

        # calibration (docs/noise.md): 0 dBFS = RMS of a full-scale sine = 2**23 / sqrt(2)
        base = 94.0 - float(cfg["sensitivity_dbfs"]) + float(cfg["calibration_offset_db"])
        base -= 10.0 * math.log10(2.0**45)
        designer = use_module(_DESIGN)
        try:
            design = designer.a_weighting_design(fs)
            band_bank = designer.band_design(fs) if cfg["bands"] else None
        finally:
            drop_module(_DESIGN)
        self.a_design = design
        # the A kernel works on samples scaled by 2**3
        self._cal_a = base - 20.0 * math.log10(design["gain_1k"] * 8.0)

        words = [0, bps, o2, o1, o0, m0]
        for m, r1, r2 in design["eps"]:
            words.extend((m, r1, r2))
        for m, r1, r2 in design["lp"]:
            words.extend((m, r1, r2))
        words.extend([0] * (_A_WORDS - len(words)))
        self._st = array("i", [w + _BIAS for w in words])
        self._reset_subblock_words()

        kernel = None
        self.kernel_kind = "reference"
        if cfg["viper"]:
            # ports without a native emitter (the WebAssembly build in tests) refuse the
            # decorator at compile time: SyntaxError "invalid micropython decorator"
            try:
                kernel = compile_kernel("a_weight", True)
                self.kernel_kind = "viper"
            except (SyntaxError, ValueError, ImportError, NotImplementedError):
                kernel = None
        if kernel is None:
            kernel = compile_kernel("a_weight", False)
        self._kernel = kernel

        self._bands = 0
        if band_bank is not None:  # config "bands"
            bwords, bands, lpf_at = band_bank
            for i in range(1, 6):
                bwords[i] = words[i]
            self._bst = array("i", [w + _BIAS for w in bwords])
            self._band_at = array("H", [at for _i, _s, _g, at in bands])
            self._band_stage = array("B", [stage for _i, stage, _g, _at in bands])
            self._lpf_at = array("H", lpf_at)
            self._band_names = ["band_" + BAND_CENTRES_HZ[i] + "hz_db" for i, _s, _g, _a in bands]
            self._band_cal = [base - 20.0 * math.log10(g) for _i, _s, g, _a in bands]
            self._bands = len(bands)
            self._stages = [array("i", [_BIAS] * (nsb + 3)) for _s in range(len(lpf_at) + 1)]
            # per stage: the first word of each band it runs
            self._stage_bands = [
                array("H", [at for _i, st_, _g, at in bands if st_ == s])
                for s in range(len(lpf_at) + 1)
            ]
            native = self.kernel_kind == "viper"
            self._k_decode = compile_kernel("pcm_decode", native)
            self._k_band = compile_kernel("band_pass", native)
            self._k_half = compile_kernel("half_band", native)

        self._f = array("i", [0] * (_SEC_FLOAT_SLOTS + 2 * self._bands))
        self._hist = array("H", [0] * _HIST_BINS)
        self._tab = _log_table()
        # FAST time weighting per sub-block: F = a F + (1 - a) E, a = exp(-T / 0.125 s)
        alpha = math.exp(-(nsb / fs) / 0.125)
        self._q0 = int(round(alpha * 32768))
        self._q1 = 32768 - self._q0
        # silence threshold: the energy of one second at silence_floor_db
        thr = nsb * self._sb_per_sec * 10 ** ((float(cfg["silence_floor_db"]) - self._cal_a) / 10)
        xe = 0
        while thr >= _M_TOP:
            thr /= 2.0
            xe += 1
        while 0.0 < thr < _M_LOW:
            thr *= 2.0
            xe -= 1
        self._f[8] = int(thr)
        self._f[9] = xe

        self._t_start = None
        self._t_close = 0
        self._settle = self._settle_sb
        self._backlog = False
        self._sb_fill = 0
        self._reset_interval()

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
