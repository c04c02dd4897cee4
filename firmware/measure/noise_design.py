# Filter design of the noise node (firmware/measure/noise.py): the digital A-weighting
# (IEC 61672-1 class 2) and the decimating 1/3-octave band bank (IEC 61260-1 class 2), as
# the fixed-point coefficient words its kernels run on; and the rest of a NoiseSampler's
# start-up (setup: its config checked, its kernels compiled from their texts, its buffers
# allocated).
#
# In:  a sample rate.  Out: coefficient words and gains (a_weighting_design, band_design);
#      the analog and realised responses, for checks (a_weighting_db,
#      a_weighting_response_db).  setup(): a NoiseSampler, its config and the hardware.
# On failure: ValueError when a coefficient does not fit the kernels' fixed-point range,
#      or (setup) naming the config option that is wrong.
#
# RAM: start-up only.  NoiseSampler imports this module while it is constructed and drops
# it again (firmware.drop_module), so its bytecode and float constants do not stay in a
# node's heap (~7 KB as an .mpy file, bench/firmware_memory.py).  Host code and tests may
# also reach these functions as attributes of noise.py.

import math
from array import array

from firmware import drop_module, use_module
from firmware.metrics import BAND_CENTRES_HZ

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_SPLIT = const(14)  # split multiplies take the state as (v >> 14, v & 16383)
_HDR = const(7)  # header words of the band state array (noise_kernels.py)
_KERNELS = "firmware.measure.noise_kernels"

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


# -- the sampler's start-up (NoiseSampler.__init__) ----------------------------------------


def setup(sampler, config):
    """NoiseSampler.__init__: check `config` (noise.DEFAULTS, ValueError naming the option),
    design the filters and allocate every buffer of `sampler`.  Returns its kernels, compiled:
    (A-weighting, PCM decode, band-pass, half-band), the last three None without bands."""
    from firmware.measure import noise

    bias, a_words, sec_float_slots, hist_bins, seed_sb, m_top, m_low = noise.LAYOUT
    cfg = dict(noise.DEFAULTS)
    if config:
        for key in config:
            if key not in noise.DEFAULTS:
                raise ValueError(
                    "unknown noise option %r; known: %s" % (key, ", ".join(sorted(noise.DEFAULTS)))
                )
            cfg[key] = config[key]
    sampler.config = cfg
    fs = int(cfg["sample_rate"])
    if fs < 32000 or fs > 96000:
        raise ValueError(
            "sample_rate must be 32000..96000 Hz (A-weighting up to 8 kHz needs >= 32 kHz),"
            " got %r" % (cfg["sample_rate"],)
        )
    interval_s = int(cfg["interval_s"])
    if interval_s < 1 or interval_s > 3600:
        raise ValueError("interval_s must be 1..3600, got %r" % (cfg["interval_s"],))
    sampler.sample_rate = fs
    sampler.interval_s = interval_s
    bps, o2, o1, o0, m0 = _pcm_layout(int(cfg["bits"]))
    sampler._bps = bps
    # sub-block: the time-weighting step, 4 ms (IEC 61672-1 5.8 exponential averaging is
    # exact for a mean square that is constant within a step)
    nsb = (fs + 125) // 250
    sampler._nsb = nsb
    block = int(cfg["block_samples"]) or 8 * nsb
    if block < 1 or block > 16384:
        raise ValueError("block_samples must be 1..16384, got %r" % (cfg["block_samples"],))
    sampler.block_samples = block
    sampler._buf = bytearray(block * bps)
    sampler._max_blocks = max(1, int(cfg["max_blocks_per_poll"]))
    sampler._sb_per_sec = (fs + nsb // 2) // nsb
    sampler._sb_per_pct = max(1, (fs // 10 + nsb // 2) // nsb)  # 100 ms
    sampler._settle_sb = 16 + seed_sb  # 192 ms at start-up, see _close_subblock

    # calibration (docs/noise.md): 0 dBFS = RMS of a full-scale sine = 2**23 / sqrt(2)
    base = 94.0 - float(cfg["sensitivity_dbfs"]) + float(cfg["calibration_offset_db"])
    base -= 10.0 * math.log10(2.0**45)
    design = a_weighting_design(fs)
    band_bank = band_design(fs) if cfg["bands"] else None
    sampler.a_design = design
    # the A kernel works on samples scaled by 2**3
    sampler._cal_a = base - 20.0 * math.log10(design["gain_1k"] * 8.0)

    words = [0, bps, o2, o1, o0, m0]
    for m, r1, r2 in design["eps"]:
        words.extend((m, r1, r2))
    for m, r1, r2 in design["lp"]:
        words.extend((m, r1, r2))
    words.extend([0] * (a_words - len(words)))
    sampler._st = array("i", [w + bias for w in words])
    sampler._reset_subblock_words()

    kernel = None
    sampler.kernel_kind = "reference"
    if cfg["viper"]:
        # ports without a native emitter (the WebAssembly build in tests) refuse the
        # decorator at compile time: SyntaxError "invalid micropython decorator"
        try:
            kernel = compile_kernel("a_weight", True)
            sampler.kernel_kind = "viper"
        except (SyntaxError, ValueError, ImportError, NotImplementedError):
            kernel = None
    if kernel is None:
        kernel = compile_kernel("a_weight", False)

    sampler._bands = 0
    if band_bank is not None:  # config "bands"
        bwords, bands, lpf_at = band_bank
        for i in range(1, 6):
            bwords[i] = words[i]
        sampler._bst = array("i", [w + bias for w in bwords])
        sampler._band_at = array("H", [at for _i, _s, _g, at in bands])
        sampler._band_stage = array("B", [stage for _i, stage, _g, _at in bands])
        sampler._lpf_at = array("H", lpf_at)
        sampler._band_names = ["band_" + BAND_CENTRES_HZ[i] + "hz_db" for i, _s, _g, _a in bands]
        sampler._band_cal = [base - 20.0 * math.log10(g) for _i, _s, g, _a in bands]
        sampler._bands = len(bands)
        sampler._stages = [array("i", [bias] * (nsb + 3)) for _s in range(len(lpf_at) + 1)]
        # per stage: the first word of each band it runs
        sampler._stage_bands = [
            array("H", [at for _i, st_, _g, at in bands if st_ == s])
            for s in range(len(lpf_at) + 1)
        ]
        native = sampler.kernel_kind == "viper"
        kernels = (kernel, compile_kernel("pcm_decode", native),
                   compile_kernel("band_pass", native), compile_kernel("half_band", native))
    else:
        kernels = (kernel, None, None, None)

    sampler._f = f = array("i", [0] * (sec_float_slots + 2 * sampler._bands))
    sampler._hist = array("H", [0] * hist_bins)
    sampler._tab = log_table()
    # FAST time weighting per sub-block: F = a F + (1 - a) E, a = exp(-T / 0.125 s)
    alpha = math.exp(-(nsb / fs) / 0.125)
    sampler._q0 = int(round(alpha * 32768))
    sampler._q1 = 32768 - sampler._q0
    # silence threshold: the energy of one second at silence_floor_db
    thr = nsb * sampler._sb_per_sec * 10 ** (
        (float(cfg["silence_floor_db"]) - sampler._cal_a) / 10)
    xe = 0
    while thr >= m_top:
        thr /= 2.0
        xe += 1
    while 0.0 < thr < m_low:
        thr *= 2.0
        xe -= 1
    f[8] = int(thr)
    f[9] = xe

    sampler._t_start = None
    sampler._t_close = 0
    sampler._settle = sampler._settle_sb
    sampler._backlog = False
    sampler._sb_fill = 0
    sampler._reset_interval()
    return kernels


def reference_source(src):
    """The bytecode (reference) version of a viper kernel text: the same statements with
    the decorator and viper's `int(...)` casts removed; ptr8/ptr32 become identities."""
    return src.replace("@micropython.viper\n", "").replace("int(", "(")


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
        # noise.py's function: one of this module, dropped after start-up, would keep the
        # whole module in the heap for as long as the kernel lives
        from firmware.measure.noise import identity

        ns["ptr8"] = identity
        ns["ptr32"] = identity
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


def log_table():
    """10 log10(1 + (t + 0.5)/256) in 0.01 dB, t = 0..255: the mantissa part of the FAST
    level's histogram bin (noise._bins_of)."""
    return array(
        "H", [int(round(1000.0 * math.log10(1.0 + (t + 0.5) / 256.0))) for t in range(256)]
    )
