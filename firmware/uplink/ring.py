# The offline ring buffer: frames made while the broker is unreachable wait here and leave
# oldest first (docs/protocol.md §6.1: buffered frames MUST be sent oldest first).
#
# In:  frames (bytes, 1..255 bytes; a protocol frame is at most 200).
# Out: the oldest frame, as a memoryview into the buffer, until pop() releases it.
# On failure: when a new frame does not fit, the OLDEST frames are dropped to make room
# (as Telegraf's metric buffer does: the newest readings and status frames are the most
# useful after an outage) and counted in `dropped`, which the status frame reports.
# A frame larger than the whole buffer raises ValueError.
#
# RAM: one bytearray of `capacity` bytes allocated at start-up, plus a few ints.  put() and
# pop() allocate nothing; peek() makes one memoryview slice.
#
# Layout: records [length u8][frame bytes] one after another.  A record never wraps: when
# it does not fit before the end, a 0 length byte (or the end itself) marks "continue at
# offset 0".  Frames are never empty, so 0 is free to mean that.

_WRAP = 0


class FrameRing:
    def __init__(self, capacity):
        if capacity < 2:
            raise ValueError("ring capacity must be at least 2 bytes, got %d" % capacity)
        self._buf = bytearray(capacity)
        self._mv = memoryview(self._buf)
        self._cap = capacity
        self._head = 0  # offset of the oldest record
        self._tail = 0  # offset where the next record goes
        self._count = 0
        self.dropped = 0  # frames dropped to make room, since start-up
        self.bytes_used = 0  # frame bytes held (without length bytes and wrap gaps)

    @property
    def capacity(self):
        return self._cap

    def __len__(self):
        return self._count

    def put(self, frame):
        """Append a frame; drops the oldest frames (counted) until it fits."""
        n = len(frame)
        need = n + 1
        if n < 1 or n > 255 or need > self._cap:
            raise ValueError("a %d-byte frame cannot be buffered (1..%d bytes)" % (
                n, min(255, self._cap - 1)))
        while True:
            at = self._place(need)
            if at >= 0:
                break
            self.pop()
            self.dropped += 1
        if at != self._tail and self._tail < self._cap:
            self._buf[self._tail] = _WRAP  # the rest of the buffer is a gap
        self._buf[at] = n
        self._mv[at + 1:at + need] = frame
        self._tail = at + need
        self._count += 1
        self.bytes_used += n

    def _place(self, need):
        """Where a record of `need` bytes can go, or -1 when the oldest must go first."""
        if self._count == 0:
            self._head = self._tail = 0
            return 0
        self._skip_gap()  # a gap at the head is free space once nothing precedes it
        head, tail = self._head, self._tail
        if tail > head:  # used: [head, tail); free: [tail, cap) and [0, head)
            if self._cap - tail >= need:
                return tail
            if head >= need:
                return 0
            return -1
        # tail <= head: used [head, cap) and [0, tail); free: [tail, head)
        if head - tail >= need:
            return tail
        return -1

    def peek(self):
        """The oldest frame (a memoryview, valid until pop() or put()), or None."""
        if self._count == 0:
            return None
        self._skip_gap()
        n = self._buf[self._head]
        return self._mv[self._head + 1:self._head + 1 + n]

    def pop(self):
        """Forget the oldest frame (after it was sent)."""
        if self._count == 0:
            return
        self._skip_gap()
        n = self._buf[self._head]
        self._head += n + 1
        self._count -= 1
        self.bytes_used -= n
        if self._count == 0:
            self._head = self._tail = 0

    def _skip_gap(self):
        if self._head >= self._cap or self._buf[self._head] == _WRAP:
            self._head = 0

    def clear(self):
        self._head = self._tail = self._count = self.bytes_used = 0
