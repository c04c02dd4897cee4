# Crowd node: how many distinct Bluetooth LE devices were heard in each window, and how
# strongly.  Privacy by construction (ARCHITECTURE.md, "Privacy by construction"; the
# Enschede wifi-tracking case: hashed MAC addresses are still personal data):
#
# - An advertiser's address is hashed with a key drawn from hw.rng at the start of every
#   window (default 60 s).  The key lives only in RAM; at the end of the window the table
#   of hashes is zeroed in place and the key state is overwritten with the next key.
#   Only 30 bits of each 64-bit hash are kept, and only in that RAM table.
# - Only aggregates leave: crowd_count, rssi_bin_0..4 and crowd_faults (registry group
#   "crowd", docs/protocol.md §8, §8.1).  No address, hash, truncated hash or sketch is
#   returned, printed or written to flash; the output is a function of the per-window
#   number of distinct devices and of their strongest RSSI only, so the same phones in the
#   next window, or at another node, give nothing to link.
# - An RSSI floor (default -95 dBm) limits range to the street in front of the node.
#   Scanning is passive (board.py): the node never sends scan requests.
#
# In:  hw.ble.start(callback): callback(addr, rssi) per advertisement, from the Bluetooth
#      IRQ on a board; hw.rng.urandom(16) per window; hw.clock ticks.
# Out: poll(now_ms) returns {"crowd_count", "rssi_bin_0".."rssi_bin_4", "crowd_faults"} when
#      a window closes (the same dict object each time: read it before the next poll).
# On failure: no scanner -> FAULT_NO_SCANNER and zero counts; RNG error -> FAULT_NO_KEY and
#      the window is not counted; more devices than the table holds -> FAULT_TABLE_FULL and
#      the count saturates at the table's limit (a lower bound).  Never raises from the IRQ.
#
# Hash choice: SipHash-2-4 (Aumasson & Bernstein, "SipHash: a fast short-input PRF", 2012),
# a keyed PRF made for exactly this: hash tables whose inputs an outsider chooses.  With a
# fresh 128-bit key per window, two different addresses collide in the kept 30 bits with
# probability 2**-30 whatever they are (a radio that forges addresses cannot aim for
# collisions it cannot compute), so dedupe within a window is sound; and hashes of one
# address under two window keys are independent, so even the RAM table does not link
# windows.  The alternatives both allocate on every advertisement, which the IRQ path must
# not: HMAC-SHA256 (protocol.hmac_sha256, pure Python on a node) leaves ~1.1 KB of garbage
# and takes ~0.21 ms; sha256(key || addr) is fast in C (~4 us) but leaves ~240 bytes (the
# concatenation, the hash object, the digest): 240 KB/s at 1000 advertisements a second
# in a busy street, and a collection every few seconds.  SipHash is written here
# in 16-bit limbs, so every intermediate is a MicroPython small int and hashing allocates
# nothing (tests/firmware/test_crowd.py measures it); it is checked against the paper's test
# vectors.  Cost: 0.08..0.17 ms per advertisement on the WebAssembly MicroPython of the
# tests (not yet measured on an ESP32-S3); SipHash-1-3, as CPython and Rust use for their
# hash tables, would save a third if a board needs it.
#
# Address rotation: phones advertise resolvable private addresses that change about every
# 15 minutes (Bluetooth Core 5.4 Vol 3 Part C, Appendix A: TGAP(private_addr_int)), so a
# phone present for a whole window of W seconds shows up as 1 + W/R addresses on average
# (R = rotation period, random phase).  The count is divided by that factor
# (address_rotation_s, default 900; 0 turns the correction off) and the histogram is
# scaled to the same total by largest remainders.
#
# Config (node config "sampler" section):
#   window_s 60 (10..3600), rssi_floor_dbm -95 (-127..0), table_slots 2048 (power of two,
#   64..16384; at most 3/4 are filled), address_rotation_s 900 (0..3600)
#
# RAM: table_slots * 5 bytes (a 4-byte hash and a 1-byte RSSI per slot: 10 KB at 2048)
#      + ~300 bytes.  The IRQ path allocates nothing; a window close allocates the 16-byte
#      key that hw.rng returns.

from array import array

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from firmware import metrics

KIND = "crowd"

FAULT_TABLE_FULL = const(0x01)  # more devices than the table holds: count is a lower bound
FAULT_NO_SCANNER = const(0x02)  # no BLE scanner, or it would not start
FAULT_NO_KEY = const(0x04)  # the RNG failed: this window was not counted

_M = const(0xFFFF)
_H30 = const(0x3FFF)
_RSSI_OFFSET = const(128)  # RSSI dBm + 128 fits a byte; 0 never occurs for a stored entry

# SipHash initial state constants "somepseudorandomlygeneratedbytes" (paper §2.2) as
# little-endian 16-bit limbs: v0, v1, v2, v3.
_IV = (
    0x6575, 0x7073, 0x6D65, 0x736F,  # 0x736f6d6570736575
    0x6F6D, 0x6E64, 0x7261, 0x646F,  # 0x646f72616e646f6d
    0x7261, 0x6E65, 0x6765, 0x6C79,  # 0x6c7967656e657261
    0x6573, 0x7974, 0x6462, 0x7465,  # 0x7465646279746573
)

_DEFAULTS = {"window_s": 60, "rssi_floor_dbm": -95, "table_slots": 2048,
             "address_rotation_s": 900}
_RANGES = {"window_s": (10, 3600), "rssi_floor_dbm": (-127, 0), "table_slots": (64, 16384),
           "address_rotation_s": (0, 3600)}


def siphash_key_state(key, state):
    """Load the SipHash-2-4 state for a 16-byte `key` into `state` (array of 16 limbs)."""
    for j in range(4):
        a = key[2 * j] | (key[2 * j + 1] << 8)  # k0, little-endian (paper §2.1)
        b = key[8 + 2 * j] | (key[9 + 2 * j] << 8)  # k1
        state[j] = a ^ _IV[j]
        state[4 + j] = b ^ _IV[4 + j]
        state[8 + j] = a ^ _IV[8 + j]
        state[12 + j] = b ^ _IV[12 + j]


def siphash24(state, msg, n, out=None):
    """SipHash-2-4 of msg[0:n] under the keyed `state`.  Returns the low 30 bits of the
    64-bit result (never 0: 0 marks an empty slot, so 0 becomes 1); writes all four
    16-bit limbs, least significant first, to `out` when given.  Allocates nothing."""
    a0 = state[0]
    a1 = state[1]
    a2 = state[2]
    a3 = state[3]
    b0 = state[4]
    b1 = state[5]
    b2 = state[6]
    b3 = state[7]
    c0 = state[8]
    c1 = state[9]
    c2 = state[10]
    c3 = state[11]
    d0 = state[12]
    d1 = state[13]
    d2 = state[14]
    d3 = state[15]
    blocks = (n >> 3) + 1  # full 8-byte words, then the last word carrying n (paper §2.1)
    m0 = m1 = m2 = m3 = 0
    for step in range(blocks + 1):
        if step < blocks:
            p = step << 3
            left = n - p
            if left >= 8:
                m0 = msg[p] | (msg[p + 1] << 8)
                m1 = msg[p + 2] | (msg[p + 3] << 8)
                m2 = msg[p + 4] | (msg[p + 5] << 8)
                m3 = msg[p + 6] | (msg[p + 7] << 8)
            else:
                m0 = m1 = m2 = 0
                m3 = (n & 0xFF) << 8
                i = 0
                while i < left:
                    x = msg[p + i] << ((i & 1) << 3)
                    j = i >> 1
                    if j == 0:
                        m0 |= x
                    elif j == 1:
                        m1 |= x
                    elif j == 2:
                        m2 |= x
                    else:
                        m3 |= x
                    i += 1
            d0 ^= m0
            d1 ^= m1
            d2 ^= m2
            d3 ^= m3
            rounds = 2  # c = 2 compression rounds per word
        else:
            c0 ^= 0xFF
            rounds = 4  # d = 4 finalization rounds
        for _ in range(rounds):
            # SipRound (paper §2.2), 64-bit words as 4 limbs a* = v0, b* = v1, c* = v2, d* = v3
            t = a0 + b0  # v0 += v1
            a0 = t & _M
            t = a1 + b1 + (t >> 16)
            a1 = t & _M
            t = a2 + b2 + (t >> 16)
            a2 = t & _M
            a3 = (a3 + b3 + (t >> 16)) & _M
            t = b3  # v1 = rotl(v1, 13) ^ v0
            b3 = (((b3 << 13) | (b2 >> 3)) & _M) ^ a3
            b2 = (((b2 << 13) | (b1 >> 3)) & _M) ^ a2
            b1 = (((b1 << 13) | (b0 >> 3)) & _M) ^ a1
            b0 = (((b0 << 13) | (t >> 3)) & _M) ^ a0
            t = a0  # v0 = rotl(v0, 32)
            a0 = a2
            a2 = t
            t = a1
            a1 = a3
            a3 = t
            t = c0 + d0  # v2 += v3
            c0 = t & _M
            t = c1 + d1 + (t >> 16)
            c1 = t & _M
            t = c2 + d2 + (t >> 16)
            c2 = t & _M
            c3 = (c3 + d3 + (t >> 16)) & _M
            t = d3  # v3 = rotl(v3, 16) ^ v2
            d3 = d2 ^ c3
            d2 = d1 ^ c2
            d1 = d0 ^ c1
            d0 = t ^ c0
            t = a0 + d0  # v0 += v3
            a0 = t & _M
            t = a1 + d1 + (t >> 16)
            a1 = t & _M
            t = a2 + d2 + (t >> 16)
            a2 = t & _M
            a3 = (a3 + d3 + (t >> 16)) & _M
            t = d3  # v3 = rotl(v3, 21) ^ v0
            u = d2
            d3 = (((d2 << 5) | (d1 >> 11)) & _M) ^ a3
            d2 = (((d1 << 5) | (d0 >> 11)) & _M) ^ a2
            d1 = (((d0 << 5) | (t >> 11)) & _M) ^ a1
            d0 = (((t << 5) | (u >> 11)) & _M) ^ a0
            t = c0 + b0  # v2 += v1
            c0 = t & _M
            t = c1 + b1 + (t >> 16)
            c1 = t & _M
            t = c2 + b2 + (t >> 16)
            c2 = t & _M
            c3 = (c3 + b3 + (t >> 16)) & _M
            t = b3  # v1 = rotl(v1, 17) ^ v2
            u = b2
            b3 = (((b2 << 1) | (b1 >> 15)) & _M) ^ c3
            b2 = (((b1 << 1) | (b0 >> 15)) & _M) ^ c2
            b1 = (((b0 << 1) | (t >> 15)) & _M) ^ c1
            b0 = (((t << 1) | (u >> 15)) & _M) ^ c0
            t = c0  # v2 = rotl(v2, 32)
            c0 = c2
            c2 = t
            t = c1
            c1 = c3
            c3 = t
        if step < blocks:
            a0 ^= m0
            a1 ^= m1
            a2 ^= m2
            a3 ^= m3
    h0 = a0 ^ b0 ^ c0 ^ d0
    h1 = a1 ^ b1 ^ c1 ^ d1
    if out is not None:
        out[0] = h0
        out[1] = h1
        out[2] = a2 ^ b2 ^ c2 ^ d2
        out[3] = a3 ^ b3 ^ c3 ^ d3
    h = ((h1 & _H30) << 16) | h0
    return h if h else 1


def check_config(section):
    """The crowd settings with defaults filled in; ValueError naming the key otherwise."""
    if not isinstance(section, dict):
        raise ValueError("[sampler] must be an object for a crowd node")
    for key in section:
        if key not in _DEFAULTS:
            raise ValueError("[sampler.%s] is an invalid option for a crowd node: use %s" % (
                key, ", ".join(sorted(_DEFAULTS))))
    out = {}
    for key in _DEFAULTS:
        value = section.get(key, _DEFAULTS[key])
        lo, hi = _RANGES[key]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError("[sampler.%s] must be an integer in %d..%d, got %r" % (
                key, lo, hi, value))
        out[key] = value
    slots = out["table_slots"]
    if slots & (slots - 1):
        raise ValueError("[sampler.table_slots] must be a power of two (e.g. 1024, 2048), "
                         "got %d" % slots)
    return out


class CrowdSampler:
    """Counts distinct BLE advertisers per window; see the module header."""

    KIND = KIND

    def __init__(self, hw, config):
        cfg = check_config(config if config is not None else {})
        self._clock = hw.clock
        self._rng = hw.rng
        self.window_s = cfg["window_s"]
        self._window_ms = self.window_s * 1000
        self._floor = cfg["rssi_floor_dbm"]
        self._rotation_s = cfg["address_rotation_s"]
        slots = cfg["table_slots"]
        self._slots = slots
        self._mask = slots - 1
        self._limit = (slots * 3) // 4  # keeps linear probing short (Knuth 6.4)
        self._table = array("I", bytes(4 * slots))  # 30-bit hashes; 0 = empty
        self._rssi = bytearray(slots)  # strongest RSSI + 128 per stored hash
        self._state = array("H", bytes(32))  # the window key, as SipHash state
        # RSSI bin edges (metrics.RSSI_BIN_EDGES_DBM) in stored units
        e = metrics.RSSI_BIN_EDGES_DBM
        self._e0 = e[0] + _RSSI_OFFSET
        self._e1 = e[1] + _RSSI_OFFSET
        self._e2 = e[2] + _RSSI_OFFSET
        self._e3 = e[3] + _RSSI_OFFSET
        self._bins = [0, 0, 0, 0, 0]
        self._rem = [0, 0, 0, 0, 0]
        self._out = {
            "crowd_count": 0, "rssi_bin_0": 0, "rssi_bin_1": 0, "rssi_bin_2": 0,
            "rssi_bin_3": 0, "rssi_bin_4": 0, "crowd_faults": 0,
        }
        self._used = 0
        self._full = 0
        self._closing = 0
        self._in_cb = 0
        self._keyed = 0
        self.window_ads = 0  # advertisements above the floor this window (RAM only)
        self.last_window_ads = 0
        self.last_distinct = 0  # distinct hashes in the last closed window, uncorrected
        self.keys_used = 0
        self._fault_scanner = 0
        self._fault_key = 0
        self._rekey()
        self._end = self._clock.ticks_add(self._clock.ticks_ms(), self._window_ms)
        self._cb = self._on_advertisement  # bound once: the IRQ path must not allocate
        self._ble = hw.ble
        ble = self._ble
        if ble is None:
            self._fault_scanner = FAULT_NO_SCANNER
        else:
            try:
                ble.start(self._cb)
            except Exception as exc:
                print("crowd: BLE scanner would not start (%s)" % type(exc).__name__)
                self._fault_scanner = FAULT_NO_SCANNER

    # -- the IRQ path: no allocation, no blocking ------------------------------------------

    def _on_advertisement(self, addr, rssi):
        self._in_cb = 1
        if self._closing or not self._keyed or rssi < self._floor:
            self._in_cb = 0
            return
        self.window_ads += 1
        h = siphash24(self._state, addr, len(addr))
        table = self._table
        mask = self._mask
        i = h & mask
        r = rssi + _RSSI_OFFSET
        if r > 255:
            r = 255
        while True:
            v = table[i]
            if v == h:
                if r > self._rssi[i]:
                    self._rssi[i] = r
                break
            if v == 0:
                if self._used >= self._limit:
                    self._full = 1
                else:
                    table[i] = h
                    self._rssi[i] = r
                    self._used += 1
                break
            i = (i + 1) & mask
        self._in_cb = 0

    # -- the sampler contract --------------------------------------------------------------

    def poll(self, now_ms):
        if self._clock.ticks_diff(now_ms, self._end) < 0:
            return None
        self._closing = 1
        spins = 0
        while self._in_cb and spins < 100000:  # a callback on another thread finishes
            spins += 1
        counted = self._keyed
        self._histogram_and_wipe()
        distinct = self._used
        full = self._full
        self.last_distinct = distinct
        self.last_window_ads = self.window_ads
        self._used = 0
        self._full = 0
        self.window_ads = 0
        self._rekey()
        end = self._clock.ticks_add(self._end, self._window_ms)
        if self._clock.ticks_diff(now_ms, end) >= 0:  # polled late by a window or more
            end = self._clock.ticks_add(now_ms, self._window_ms)
        self._end = end
        self._closing = 0

        out = self._out
        bins = self._bins
        faults = self._fault_scanner | self._fault_key
        if not counted:
            faults |= FAULT_NO_KEY
            distinct = bins[0] = bins[1] = bins[2] = bins[3] = bins[4] = 0
        if full:
            faults |= FAULT_TABLE_FULL
        if self._rotation_s and distinct:
            distinct = self._correct(distinct)
        out["crowd_count"] = distinct
        out["rssi_bin_0"] = bins[0]
        out["rssi_bin_1"] = bins[1]
        out["rssi_bin_2"] = bins[2]
        out["rssi_bin_3"] = bins[3]
        out["rssi_bin_4"] = bins[4]
        out["crowd_faults"] = faults
        return out

    def wait_ms(self, now_ms):
        d = self._clock.ticks_diff(self._end, now_ms)
        return d if d > 0 else 0

    def close(self):
        """Stop scanning and wipe the table and the key."""
        self._closing = 1
        ble = self._ble
        if ble is not None:
            try:
                ble.stop()
            except Exception:
                pass
        self._histogram_and_wipe()
        self._used = 0
        state = self._state
        for i in range(16):
            state[i] = 0
        self._keyed = 0

    # -- internals -------------------------------------------------------------------------

    def _histogram_and_wipe(self):
        """Per-bin device counts into self._bins (each device by its strongest RSSI, §8.1);
        zeroes every used slot on the way."""
        table = self._table
        rssi = self._rssi
        e0 = self._e0
        e1 = self._e1
        e2 = self._e2
        e3 = self._e3
        b0 = b1 = b2 = b3 = b4 = 0
        for i in range(self._slots):
            if table[i]:
                r = rssi[i]
                if r < e0:
                    b0 += 1
                elif r < e1:
                    b1 += 1
                elif r < e2:
                    b2 += 1
                elif r < e3:
                    b3 += 1
                else:
                    b4 += 1
                table[i] = 0
                rssi[i] = 0
        bins = self._bins
        bins[0] = b0
        bins[1] = b1
        bins[2] = b2
        bins[3] = b3
        bins[4] = b4

    def _rekey(self):
        rng = self._rng
        try:
            if rng is None:
                raise OSError("no RNG")
            key = rng.urandom(16)
            if len(key) != 16:
                raise OSError("short read from the RNG")
            siphash_key_state(key, self._state)
        except Exception:
            self._keyed = 0
            self._fault_key = FAULT_NO_KEY
            return
        self._keyed = 1
        self._fault_key = 0
        self.keys_used += 1

    def _correct(self, distinct):
        """Divide by 1 + W/R (see the header); scale the bins, in place, to the same total
        by largest remainders."""
        r = self._rotation_s
        den = r + self.window_s
        count = (2 * distinct * r + den) // (2 * den)
        bins = self._bins
        rem = self._rem
        left = count
        for i in range(5):
            x = bins[i] * r
            bins[i] = x // den
            rem[i] = x % den
            left -= bins[i]
        while left > 0:
            best = 0
            for i in range(1, 5):
                if rem[i] > rem[best]:
                    best = i
            bins[best] += 1
            rem[best] = -1
            left -= 1
        return count
