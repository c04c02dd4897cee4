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
# The per-sample kernels are kept as source text (KERNEL_SOURCES) that is compiled at
# start-up two ways from the same text: as `@micropython.viper` native code where the
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
# buffers 4.7 KB, band state 2.3 KB, three more kernels).  Importing this module from
# source costs ~55 KB more (bytecode, kernel texts); frozen, both stay in flash.

import math
from array import array

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

# IEC 61672-1:2013 Annex E (E.1-E.7): the pole frequencies of the A-weighting.
_FR = 1000.0
_FL = 10**1.5
_FH = 10**3.9
_FA = 10**2.45


def iec_pole_frequencies():
    """(f1, f2, f3, f4) in Hz from IEC 61672-1 equations E.2-E.7 (20.6, 107.7, 737.9,
    12194 Hz)."""
    d = math.sqrt(0.5)
    b = (_FR**2 + _FL**2 * _FH**2 / _FR**2 - d * (_FL**2 + _FH**2)) / (1.0 - d)
    c = _FL**2 * _FH**2
    root = math.sqrt(b * b - 4.0 * c)
    f1 = math.sqrt((-b - root) / 2.0)
    f4 = math.sqrt((-b + root) / 2.0)
    f2 = (3.0 - math.sqrt(5.0)) / 2.0 * _FA
    f3 = (3.0 + math.sqrt(5.0)) / 2.0 * _FA
    return f1, f2, f3, f4


def a_weighting_db(f):
    """The analog A-weighting of IEC 61672-1 (E.6), normalised to exactly 0 dB at 1 kHz
    (the standard's A1000 = -2.000 dB is this normalisation rounded; the difference is
    0.0003 dB)."""
    f1, f2, f3, f4 = iec_pole_frequencies()

    def ra2(x):
        x2 = x * x
        return (f4**4 * x2**4) / (
            (x2 + f1 * f1) ** 2 * (x2 + f2 * f2) * (x2 + f3 * f3) * (x2 + f4 * f4) ** 2
        )

    return 10.0 * math.log10(ra2(f) / ra2(1000.0))


def _hypot(a, b):  # math.hypot is missing on MicroPython
    return math.sqrt(a * a + b * b)


# -- fixed-point coefficients ------------------------------------------------------------

_BIAS = const(536870912)  # 2**29: kernel words are stored biased, see _A_KERNEL
_SPLIT = const(14)  # split multiplies take the state as (v >> 14, v & 16383)


def fixed_coefficient(c):
    """c as (m, r1, r2): c*v == ((v >> 14) * m >> r1) + ((v & 16383) * m >> r2) within
    2 LSB, with |m| < 2**15 so both products stay below 2**29 for |v| < 2**28."""
    if not -2.0 < c < 2.0:
        raise ValueError("filter coefficient %r out of the fixed-point range (-2, 2)" % c)
    r2 = _SPLIT
    while r2 < 45 and abs(c) * (1 << (r2 + 1)) < 32767.5:
        r2 += 1
    m = int(round(c * (1 << r2)))
    if m == 0:
        r2 = _SPLIT
    return m, r2 - _SPLIT, r2


def fixed_value(m, r2):
    return m / float(1 << r2)


# -- A-weighting design (IEC 61672-1 5.5, Annex E) ----------------------------------------


def a_weighting_design(fs):
    """The digital A-weighting for sample rate `fs` as realised by the kernel.

    Four first-order high-pass sections H(z) = (1 - z^-1) / (1 - p z^-1), one per low pole
    (f1, f1, f2, f3), made by the bilinear transform with each pole pre-warped
    (w' = 2 fs tan(pi f / fs)), so the low poles land exactly; and one biquad for the double
    pole f4 at 12.2 kHz, which the bilinear transform would misplace badly at 32 kHz: its
    poles are matched (p = exp(-2 pi f4 / fs)) and its numerator is chosen so the biquad's
    magnitude equals the analog 1/(1 + s/w4)^2 at DC, at fs/4 and at Nyquist (Vicanek,
    "Matched second order digital filters", 2016).  Returns
    {"eps": [(m, r1, r2)] * 4, "lp": [(m, r1, r2)] * 5 for b0 b1 b2 a1 a2, "gain_1k": |H|
    of the unnormalised fixed-point filter at 1 kHz}.
    """
    f1, f2, f3, f4 = iec_pole_frequencies()
    eps = []
    for fp in (f1, f1, f2, f3):
        k = math.tan(math.pi * fp / fs)  # w' / (2 fs)
        p = (1.0 - k) / (1.0 + k)
        eps.append(fixed_coefficient(1.0 - p))
    pl = math.exp(-2.0 * math.pi * f4 / fs)
    a1 = -2.0 * pl
    a2 = pl * pl

    def target(f):  # |1 / (1 + j f/f4)^2|^2
        return 1.0 / (1.0 + (f / f4) ** 2) ** 2

    big_a0 = (1.0 + a1 + a2) ** 2
    big_a1 = (1.0 - a1 + a2) ** 2
    big_a2 = -4.0 * a2
    phi = 0.5  # sin^2(pi fm / fs) at fm = fs / 4
    den = big_a0 * (1.0 - phi) + big_a1 * phi + big_a2 * 4.0 * phi * (1.0 - phi)
    big_b0 = big_a0 * target(0.0)
    big_b1 = big_a1 * target(fs / 2.0)
    big_b2 = (target(fs / 4.0) * den - big_b0 * (1.0 - phi) - big_b1 * phi) / (
        4.0 * phi * (1.0 - phi)
    )
    s0 = math.sqrt(big_b0)
    s1 = math.sqrt(big_b1)
    w = (s0 + s1) / 2.0
    root = math.sqrt(w * w + big_b2)
    b0 = (w + root) / 2.0
    b1 = (s0 - s1) / 2.0
    b2 = (w - root) / 2.0
    lp = [fixed_coefficient(c) for c in (b0, b1, b2, a1, a2)]
    design = {"eps": eps, "lp": lp, "gain_1k": 1.0}
    design["gain_1k"] = _a_response(design, 1000.0, fs)
    return design


def _a_response(design, f, fs):
    """|H| of the unnormalised fixed-point A filter at f (complex arithmetic by hand: no
    cmath on every port)."""
    w = 2.0 * math.pi * f / fs
    c1, s1 = math.cos(w), -math.sin(w)  # z^-1
    c2, s2 = math.cos(2 * w), -math.sin(2 * w)  # z^-2
    mag = 1.0
    for m, _r1, r2 in design["eps"]:
        p = 1.0 - fixed_value(m, r2)
        num = _hypot(1.0 - c1, -s1)
        den = _hypot(1.0 - p * c1, -p * s1)
        mag *= num / den
    b0, b1, b2, a1, a2 = [fixed_value(m, r2) for m, _r1, r2 in design["lp"]]
    num = _hypot(b0 + b1 * c1 + b2 * c2, b1 * s1 + b2 * s2)
    den = _hypot(1.0 + a1 * c1 + a2 * c2, a1 * s1 + a2 * s2)
    return mag * num / den


def a_weighting_response_db(f, fs, design=None):
    """The kernel's A-weighting at f, normalised to 0 dB at 1 kHz (compare a_weighting_db)."""
    if design is None:
        design = a_weighting_design(fs)
    return 20.0 * math.log10(_a_response(design, f, fs) / design["gain_1k"])


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

_A_WORDS = const(45)
_A_EN = const(41)
_A_SH = const(42)
_A_XMAX = const(43)
_A_XMIN = const(44)

_A_KERNEL = """
@micropython.viper
def a_weight(buf, n: int, st) -> int:
    b = ptr8(buf)
    s = ptr32(st)
    B = 536870912
    k = int(s[0]) - B
    step = int(s[1]) - B
    o2 = int(s[2]) - B
    o1 = int(s[3]) - B
    o0 = int(s[4]) - B
    m0 = int(s[5]) - B
    e1 = int(s[6]) - B
    g1 = int(s[7]) - B
    l1 = int(s[8]) - B
    e2 = int(s[9]) - B
    g2 = int(s[10]) - B
    l2 = int(s[11]) - B
    e3 = int(s[12]) - B
    g3 = int(s[13]) - B
    l3 = int(s[14]) - B
    e4 = int(s[15]) - B
    g4 = int(s[16]) - B
    l4 = int(s[17]) - B
    cb0 = int(s[18]) - B
    gb0 = int(s[19]) - B
    lb0 = int(s[20]) - B
    cb1 = int(s[21]) - B
    gb1 = int(s[22]) - B
    lb1 = int(s[23]) - B
    cb2 = int(s[24]) - B
    gb2 = int(s[25]) - B
    lb2 = int(s[26]) - B
    ca1 = int(s[27]) - B
    ga1 = int(s[28]) - B
    la1 = int(s[29]) - B
    ca2 = int(s[30]) - B
    ga2 = int(s[31]) - B
    la2 = int(s[32]) - B
    x1 = int(s[33]) - B
    p1 = int(s[34]) - B
    p2 = int(s[35]) - B
    p3 = int(s[36]) - B
    p4 = int(s[37]) - B
    z = int(s[38]) - B
    y1 = int(s[39]) - B
    y2 = int(s[40]) - B
    en = int(s[41]) - B
    sh = int(s[42]) - B
    xmax = int(s[43]) - B
    xmin = int(s[44]) - B
    lim = 1024 << sh
    for i in range(n):
        h = int(b[k + o2])
        if h > 127:
            h -= 256
        x = (h << 16) | (int(b[k + o1]) << 8) | (int(b[k + o0]) & m0)
        k += step
        if x > xmax:
            xmax = x
        if x < xmin:
            xmin = x
        x = x << 3
        d = x - x1
        x1 = x
        q = d + p1 - ((((p1 >> 14) * e1) >> g1) + (((p1 & 16383) * e1) >> l1))
        d = q - p1
        p1 = q
        q = d + p2 - ((((p2 >> 14) * e2) >> g2) + (((p2 & 16383) * e2) >> l2))
        d = q - p2
        p2 = q
        q = d + p3 - ((((p3 >> 14) * e3) >> g3) + (((p3 & 16383) * e3) >> l3))
        d = q - p3
        p3 = q
        q = d + p4 - ((((p4 >> 14) * e4) >> g4) + (((p4 & 16383) * e4) >> l4))
        y = ((((q >> 14) * cb0) >> gb0) + (((q & 16383) * cb0) >> lb0)
             + (((p4 >> 14) * cb1) >> gb1) + (((p4 & 16383) * cb1) >> lb1)
             + (((z >> 14) * cb2) >> gb2) + (((z & 16383) * cb2) >> lb2)
             - (((y1 >> 14) * ca1) >> ga1) - (((y1 & 16383) * ca1) >> la1)
             - (((y2 >> 14) * ca2) >> ga2) - (((y2 & 16383) * ca2) >> la2))
        z = p4
        p4 = q
        y2 = y1
        y1 = y
        a = y
        if a < 0:
            a = 0 - a
        while a >= lim:
            sh += 1
            lim = lim << 1
            en = en >> 2
        a = y >> sh
        en += a * a
    s[33] = x1 + B
    s[34] = p1 + B
    s[35] = p2 + B
    s[36] = p3 + B
    s[37] = p4 + B
    s[38] = z + B
    s[39] = y1 + B
    s[40] = y2 + B
    s[41] = en + B
    s[42] = sh + B
    s[43] = xmax + B
    s[44] = xmin + B
    return 0
"""

# The band bank runs block-wise, one filter at a time over a stage buffer (array("i"),
# words biased like the state): words 0 and 1 hold the stage input's history x[-2], x[-1],
# the samples start at word 2.  pcm_decode() fills stage 0's buffer; band_pass() runs one
# band's three sections and sums its energy; half_band() low-passes a stage buffer and
# writes every second output into the next stage's buffer.  The band state array starts
# with the A kernel's header words 0..5, word 6 selects the filter (its first word):
#   band:  3 sections (g, a1, a2, w[n-1], w[n-2]), energy sum, its shift   (17 words)
#   low-pass: 3 sections (g, a1, a2, w[n-1], w[n-2]), gain m x 2**-14, phase (17 words)
# A band-pass section is w = ((v[n] - v[n-2]) >> g) - a1 w[n-1] - a2 w[n-2], a low-pass
# section w = ((v[n] + 2 v[n-1] + v[n-2]) >> g) - a1 w[n-1] - a2 w[n-2]; a section's input
# history is the previous section's output history.  a1 is stored x 2**14, a2 x 2**15
# (fixed shifts: pole radii here are <= 0.98, where 2**-15 steps move a band edge by
# < 0.1 %).  Sample values stay below 2**26 (docs/noise.md), products below 2**29.
_FILTER_WORDS = const(17)
_HDR = const(7)

_DECODE_KERNEL = """
@micropython.viper
def pcm_decode(buf, n: int, st, dst) -> int:
    b = ptr8(buf)
    s = ptr32(st)
    d = ptr32(dst)
    B = 536870912
    k = int(s[0]) - B
    step = int(s[1]) - B
    o2 = int(s[2]) - B
    o1 = int(s[3]) - B
    o0 = int(s[4]) - B
    m0 = int(s[5]) - B
    for i in range(n):
        h = int(b[k + o2])
        if h > 127:
            h -= 256
        d[i + 2] = ((h << 16) | (int(b[k + o1]) << 8) | (int(b[k + o0]) & m0)) + B
        k += step
    return 0
"""

_BAND_KERNEL = """
@micropython.viper
def band_pass(src, n: int, st) -> int:
    v = ptr32(src)
    s = ptr32(st)
    B = 536870912
    o = int(s[6]) - B
    g1 = int(s[o]) - B
    c11 = int(s[o + 1]) - B
    c21 = int(s[o + 2]) - B
    y11 = int(s[o + 3]) - B
    y21 = int(s[o + 4]) - B
    g2 = int(s[o + 5]) - B
    c12 = int(s[o + 6]) - B
    c22 = int(s[o + 7]) - B
    y12 = int(s[o + 8]) - B
    y22 = int(s[o + 9]) - B
    g3 = int(s[o + 10]) - B
    c13 = int(s[o + 11]) - B
    c23 = int(s[o + 12]) - B
    y13 = int(s[o + 13]) - B
    y23 = int(s[o + 14]) - B
    en = int(s[o + 15]) - B
    sh = int(s[o + 16]) - B
    lim = 1024 << sh
    for i in range(n):
        w = (((int(v[i + 2]) - int(v[i])) >> g1)
             - (((y11 >> 14) * c11) + (((y11 & 16383) * c11) >> 14))
             - ((((y21 >> 14) * c21) >> 1) + (((y21 & 16383) * c21) >> 15)))
        u = y21
        y21 = y11
        y11 = w
        w = (((w - u) >> g2)
             - (((y12 >> 14) * c12) + (((y12 & 16383) * c12) >> 14))
             - ((((y22 >> 14) * c22) >> 1) + (((y22 & 16383) * c22) >> 15)))
        u = y22
        y22 = y12
        y12 = w
        w = (((w - u) >> g3)
             - (((y13 >> 14) * c13) + (((y13 & 16383) * c13) >> 14))
             - ((((y23 >> 14) * c23) >> 1) + (((y23 & 16383) * c23) >> 15)))
        y23 = y13
        y13 = w
        a = w
        if a < 0:
            a = 0 - a
        while a >= lim:
            sh += 1
            lim = lim << 1
            en = en >> 2
        a = w >> sh
        en += a * a
    s[o + 3] = y11 + B
    s[o + 4] = y21 + B
    s[o + 8] = y12 + B
    s[o + 9] = y22 + B
    s[o + 13] = y13 + B
    s[o + 14] = y23 + B
    s[o + 15] = en + B
    s[o + 16] = sh + B
    return 0
"""

_HALF_KERNEL = """
@micropython.viper
def half_band(src, n: int, st, dst) -> int:
    v = ptr32(src)
    s = ptr32(st)
    d = ptr32(dst)
    B = 536870912
    o = int(s[6]) - B
    g1 = int(s[o]) - B
    c11 = int(s[o + 1]) - B
    c21 = int(s[o + 2]) - B
    y11 = int(s[o + 3]) - B
    y21 = int(s[o + 4]) - B
    g2 = int(s[o + 5]) - B
    c12 = int(s[o + 6]) - B
    c22 = int(s[o + 7]) - B
    y12 = int(s[o + 8]) - B
    y22 = int(s[o + 9]) - B
    g3 = int(s[o + 10]) - B
    c13 = int(s[o + 11]) - B
    c23 = int(s[o + 12]) - B
    y13 = int(s[o + 13]) - B
    y23 = int(s[o + 14]) - B
    cg = int(s[o + 15]) - B
    ph = int(s[o + 16]) - B
    m = 0
    for i in range(n):
        x1 = int(v[i + 1]) - B
        w = ((((int(v[i + 2]) - B) + x1 + x1 + (int(v[i]) - B)) >> g1)
             - (((y11 >> 14) * c11) + (((y11 & 16383) * c11) >> 14))
             - ((((y21 >> 14) * c21) >> 1) + (((y21 & 16383) * c21) >> 15)))
        u = y21
        y21 = y11
        y11 = w
        w = (((w + y21 + y21 + u) >> g2)
             - (((y12 >> 14) * c12) + (((y12 & 16383) * c12) >> 14))
             - ((((y22 >> 14) * c22) >> 1) + (((y22 & 16383) * c22) >> 15)))
        u = y22
        y22 = y12
        y12 = w
        w = (((w + y22 + y22 + u) >> g3)
             - (((y13 >> 14) * c13) + (((y13 & 16383) * c13) >> 14))
             - ((((y23 >> 14) * c23) >> 1) + (((y23 & 16383) * c23) >> 15)))
        y23 = y13
        y13 = w
        ph = 1 - ph
        if ph:
            d[m + 2] = ((w >> 14) * cg) + (((w & 16383) * cg) >> 14) + B
            m += 1
    s[o + 3] = y11 + B
    s[o + 4] = y21 + B
    s[o + 8] = y12 + B
    s[o + 9] = y22 + B
    s[o + 13] = y13 + B
    s[o + 14] = y23 + B
    s[o + 16] = ph + B
    return m
"""

KERNEL_SOURCES = {
    "a_weight": _A_KERNEL,
    "pcm_decode": _DECODE_KERNEL,
    "band_pass": _BAND_KERNEL,
    "half_band": _HALF_KERNEL,
}


def reference_source(src):
    """The bytecode (reference) version of a viper kernel text: the same statements with
    the decorator and viper's `int(...)` casts removed; ptr8/ptr32 become identities."""
    return src.replace("@micropython.viper\n", "").replace("int(", "(")


def _identity(buf):
    return buf


def compile_kernel(name, viper):
    """The kernel `name` (a key of KERNEL_SOURCES), natively compiled when `viper` (raises
    SyntaxError/ValueError where the port has no native emitter), else as bytecode."""
    src = KERNEL_SOURCES[name]
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


# -- 1/3-octave bands (IEC 61260-1:2014, base-10, class 2) --------------------------------

_LPF_CUT = 0.21  # decimation low-pass cut-off / stage rate: flat to 0.15, -50 dB at 0.35
_BAND_TOP = 0.3  # a band runs at the lowest stage rate that keeps f_upper <= 0.3 rate


def band_centres_hz():
    """Exact base-10 mid-band frequencies 10**(k/10) kHz, k = -15 .. 9 (31.5 Hz .. 8 kHz)."""
    return [1000.0 * 10 ** (k / 10.0) for k in range(-15, 10)]


def _bilinear_pole(s_re, s_im, fs):
    k = 2.0 * fs
    # z = (k + s) / (k - s)
    nr, ni = k + s_re, s_im
    dr, di = k - s_re, -s_im
    den = dr * dr + di * di
    zr = (nr * dr + ni * di) / den
    zi = (ni * dr - nr * di) / den
    return -2.0 * zr, zr * zr + zi * zi  # a1, a2 of the conjugate pair


def _section_response(c1, c2, a1, a2, w):
    """|(1 + c1 z^-1 + c2 z^-2) / (1 + a1 z^-1 + a2 z^-2)| at z = e^{jw}."""
    cr1, ci1 = math.cos(w), -math.sin(w)
    cr2, ci2 = math.cos(2 * w), -math.sin(2 * w)
    num = _hypot(1.0 + c1 * cr1 + c2 * cr2, c1 * ci1 + c2 * ci2)
    den = _hypot(1.0 + a1 * cr1 + a2 * cr2, a1 * ci1 + a2 * ci2)
    return num / den


def _bandpass_poles(f_lo, f_hi, fs):
    """3rd-order Butterworth band-pass (6 poles, bilinear with pre-warped edges) as three
    (a1, a2) pairs."""
    k = 2.0 * fs
    wl = k * math.tan(math.pi * f_lo / fs)
    wu = k * math.tan(math.pi * f_hi / fs)
    w0sq = wl * wu
    bw = wu - wl
    pairs = []
    # low-pass prototype poles -1 and -1/2 +- j sqrt(3)/2; s -> (s^2 + w0^2) / (bw s)
    for pr, pi_, both in ((-1.0, 0.0, False), (-0.5, math.sqrt(3.0) / 2.0, True)):
        br, bi = pr * bw, pi_ * bw  # roots of s^2 - (p bw) s + w0^2
        dr, di = br * br - bi * bi - 4.0 * w0sq, 2.0 * br * bi
        mod = math.sqrt(_hypot(dr, di))
        ang = math.atan2(di, dr) / 2.0
        sr, si = mod * math.cos(ang), mod * math.sin(ang)
        roots = [((br + sr) / 2.0, (bi + si) / 2.0)]
        if both:
            roots.append(((br - sr) / 2.0, (bi - si) / 2.0))
        for re, im in roots:
            pairs.append(_bilinear_pole(re, im, fs))
    return pairs


def _band_section(c1, c2, a1, a2, w_peak):
    """A band-kernel section (g, a1 x 2**14, a2 x 2**15) and its realised (a1, a2, g):
    the input shift g brings the section's gain near its peak into [1, 2)."""
    m1 = int(round(a1 * 16384))
    m2 = int(round(a2 * 32768))
    if not (-32768 <= m1 < 32768 and 0 <= m2 < 32768):
        raise ValueError("band filter pole outside the fixed-point range: %r %r" % (a1, a2))
    ea1 = m1 / 16384.0
    ea2 = m2 / 32768.0
    peak = _section_response(c1, c2, ea1, ea2, w_peak)
    g = 0
    while peak / (1 << (g + 1)) >= 1.0:
        g += 1
    return [g, m1, m2, 0, 0], (ea1, ea2, g)


def band_design(fs):
    """The decimating 1/3-octave filter bank for sample rate fs (IEC 61260-1 class 2).

    Each band is a 3rd-order Butterworth band-pass (6 poles, edges fm * 10**(+-1/20))
    run at the lowest rate fs / 2**s that keeps its upper edge <= 0.3 of the rate; each
    halving is a 6th-order Butterworth low-pass at 0.21 of the rate.  Returns
    (words, bands, lpf_at): `words` is the band state array content (unbiased), `bands`
    lists per band, lowest first, (index, stage, gain at mid-band of everything in its
    path, index of its first word), lpf_at[s] is the first word of stage s's low-pass.
    """
    centres = band_centres_hz()
    edge = 10 ** (1.0 / 20.0)  # G**(1/6), G = 10**(3/10)
    stage_of = []
    for fm in centres:
        s = 0
        while fm * edge <= _BAND_TOP * fs / (1 << (s + 1)):
            s += 1
        stage_of.append(s)
    nstages = max(stage_of) + 1
    wc = math.tan(math.pi * _LPF_CUT) * 2.0  # pre-warped cut-off at a normalised rate 1
    lpf = []
    lpf_eff = []
    for kk in (0, 1, 2):  # poles in order of rising Q
        ang = math.pi * (2 * kk + 7) / 12.0
        a1, a2 = _bilinear_pole(wc * math.cos(ang), wc * math.sin(ang), 1.0)
        words, eff = _band_section(2, 1, a1, a2, 0.0)
        lpf.append(words)
        lpf_eff.append(eff)
    lpf_dc = 1.0
    for ea1, ea2, g in lpf_eff:
        lpf_dc *= _section_response(2, 1, ea1, ea2, 0.0) / (1 << g)
    gcomp = int(round(16384 / lpf_dc))
    if not 0 < gcomp < 32768:
        raise ValueError("decimation gain %r out of range" % (1 / lpf_dc,))

    def lpf_gain(w):
        g_ = gcomp / 16384.0
        for ea1, ea2, g in lpf_eff:
            g_ *= _section_response(2, 1, ea1, ea2, w) / (1 << g)
        return g_

    words = [0] * _HDR
    bands = []
    lpf_at = []
    for s in range(nstages):
        rate = fs / (1 << s)
        for i in range(len(centres)):
            if stage_of[i] != s:
                continue
            fm = centres[i]
            pairs = _bandpass_poles(fm / edge, fm * edge, rate)
            pairs.sort(key=lambda pr: pr[1])  # rising pole radius (rising Q)
            gain = 1.0
            wm = 2.0 * math.pi * fm / rate
            at = len(words)
            for a1, a2 in pairs:
                r = math.sqrt(a2)
                w_peak = math.acos(max(-1.0, min(1.0, -a1 / (2.0 * r))))
                sec, (ea1, ea2, g) = _band_section(0, -1, a1, a2, w_peak)
                words.extend(sec)
                gain *= _section_response(0, -1, ea1, ea2, wm) / (1 << g)
            words.extend((0, 0))  # energy, shift
            for s_prev in range(s):
                gain *= lpf_gain(2.0 * math.pi * fm / (fs / (1 << s_prev)))
            bands.append((i, s, gain, at))
        if s < nstages - 1:
            lpf_at.append(len(words))
            for sec in lpf:
                words.extend(sec)
            words.extend((gcomp, 0))
    bands.sort()
    return words, bands, lpf_at


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
        design = a_weighting_design(fs)
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
        if cfg["bands"]:
            bwords, bands, lpf_at = band_design(fs)
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
