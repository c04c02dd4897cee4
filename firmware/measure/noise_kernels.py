# The noise node's per-sample kernels, as source text: noise.compile_kernel() compiles each
# at start-up, as `@micropython.viper` native code where the port has a native emitter and
# otherwise, with the decorator and the viper casts removed, as plain bytecode (see
# noise.py, "The per-sample kernels are kept as source text").  The A kernel's state words
# are laid out in noise.py ("the per-sample kernels"); the band kernels' below.
#
# In/Out: KERNEL_SOURCES, kernel name -> text.  On failure: nothing here runs.
#
# RAM: start-up only.  compile_kernel imports this module, takes one text and drops the
# module again (firmware.drop_module), so the ~7 KB of text does not stay in a node's heap
# (bench/firmware_memory.py).

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
