# The node's frame counter (docs/protocol.md §6.1): strictly increasing, never reused, not
# even across resets and power cuts, and written to flash only once per `reserve` frames.
#
# Scheme: flash holds a *mark*: no counter at or above it has ever been handed out.  On
# boot the node continues from the stored mark and first stores mark + reserve; it hands
# out counters below the stored mark, and stores the next mark before it would reach it.
# Counters between the last frame sent and the stored mark are skipped after a reset;
# the gateway accepts any jump forward (§6.2).  At one frame a minute and reserve 1000, the
# flash sees one small write every ~17 hours plus one per boot.
#
# Power cuts: marks are written with Flash.replace() (write <name>.new, sync, rename), and
# read back from both <name> and <name>.new, keeping the highest *valid* one.  A record is
# valid only when it is complete and its check field matches, so a torn write is ignored
# and the previous mark, still on flash, is used.  A mark is stored before any counter at
# or above the previous mark is handed out, so whichever copy survives is above every
# counter already used.  (Tests cut the power at every step of this sequence.)
#
# In:  hal.Flash.  Out: take() -> the next counter.
# On failure: CounterError when flash holds a counter file that no longer reads as any
# valid mark (the node cannot prove it would not reuse a counter: it goes to safe mode
# and must be re-enrolled); CounterExhausted after 0xffffffff (§6.3); OSError from flash
# when the mark cannot be written (no counter is handed out then).
#
# RAM: three ints.

FILE = "counter"
TMP_SUFFIX = ".new"  # hal.TMP_SUFFIX; repeated so this module needs only a Flash-like object
U32_LIMIT = 1 << 32  # counters are u32 (§2); a mark of 2**32 means every counter is used
DEFAULT_RESERVE = 1000

# Record: b"DCTR <mark, 9 hex digits> <mark xor 0xfffffffff, 9 hex digits>\n" (25 bytes).
# Nine digits hold the mark 2**32; the complement detects torn and bit-flipped records.
_MAGIC = b"DCTR "
_RECORD_LEN = 25
_CHECK_MASK = 0xFFFFFFFFF


class CounterError(Exception):
    """The stored counter cannot be trusted; the message says what to do."""


class CounterExhausted(CounterError):
    """Every u32 counter has been used (§6.3): re-enrol under a new node id."""


def encode_mark(mark):
    return b"%s%09x %09x\n" % (_MAGIC, mark, mark ^ _CHECK_MASK)


def decode_mark(data):
    """The mark in a record, or None when `data` is not one complete, valid record."""
    if data is None or len(data) != _RECORD_LEN or data[:5] != _MAGIC or data[-1:] != b"\n":
        return None
    if data[14:15] != b" ":
        return None
    for i in range(5, 24):  # exactly lower-case hex digits (int() would allow " ", "_", "+")
        c = data[i]
        if i != 14 and not (0x30 <= c <= 0x39 or 0x61 <= c <= 0x66):
            return None
    mark = int(data[5:14], 16)
    check = int(data[15:24], 16)
    if mark ^ check != _CHECK_MASK or mark > U32_LIMIT:
        return None
    return mark


class FrameCounter:
    """Hands out frame counters (§6.1).  Call boot() once, then take() per frame."""

    def __init__(self, flash, reserve=DEFAULT_RESERVE, name=FILE):
        if not isinstance(reserve, int) or reserve < 1:
            raise ValueError("counter reserve must be a positive integer, got %r" % (reserve,))
        self._flash = flash
        self._name = name
        self.reserve = reserve
        self.next = None  # the counter take() returns next
        self.mark = None  # the mark stored on flash: counters >= mark were never used
        self.first = None  # the first counter of this boot (uplink uses it for freshness)
        self.writes = 0  # marks written since boot

    def stored(self):
        """The highest valid mark on flash, 0 when there is none yet (first boot)."""
        main = self._flash.read(self._name)
        new = self._flash.read(self._name + TMP_SUFFIX)
        best = None
        for data in (main, new):
            mark = decode_mark(data)
            if mark is not None and (best is None or mark > best):
                best = mark
        if best is not None:
            return best
        if main is None:
            # Nothing valid and no main file: the very first replace() was cut before its
            # rename, so no mark was ever stored and no counter was ever used.
            return 0
        raise CounterError(
            "counter file %r is damaged and no valid copy exists: the node cannot prove it "
            "would not reuse a frame counter; re-enrol it (new node id or key)" % self._name
        )

    def boot(self):
        """Continue from the stored mark; store the next mark before any frame is sent."""
        start = self.stored()
        if start >= U32_LIMIT:
            raise CounterExhausted("every frame counter of this node id is used (§6.3): "
                                   "re-enrol the node under a new node id")
        self._store(min(start + self.reserve, U32_LIMIT))
        self.next = start
        self.first = start
        return start

    def take(self):
        """The next counter; stores a new mark first when the stored one is reached."""
        n = self.next
        if n is None:
            raise CounterError("FrameCounter.take() before boot()")
        if n >= U32_LIMIT:
            raise CounterExhausted("counter 0xffffffff was the last (§6.3): re-enrol the node")
        if n >= self.mark:
            self._store(min(n + self.reserve, U32_LIMIT))
        self.next = n + 1
        return n

    def _store(self, mark):
        self._flash.replace(self._name, encode_mark(mark))
        self.mark = mark
        self.writes += 1
