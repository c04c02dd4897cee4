# Millisecond tick arithmetic with MicroPython's semantics (time.ticks_add / ticks_diff:
# ticks wrap every TICKS_PERIOD ms, docs.micropython.org "time" module), and the same
# semantics on CPython, so firmware logic behaves alike under both interpreters and a
# host run across the wrap finds the same bugs a board would.

import time as _time

TICKS_PERIOD = 1 << 30  # MICROPY_PY_TIME_TICKS_PERIOD on the ports we build for
_MASK = TICKS_PERIOD - 1
_HALF = TICKS_PERIOD // 2

try:
    # getattr: the board's own functions where they exist; the names stay untyped for
    # pyright, whose stubs constrain the argument types more tightly than callers need
    ticks_add = getattr(_time, "ticks_add")  # noqa: B009
    ticks_diff = getattr(_time, "ticks_diff")  # noqa: B009
except AttributeError:  # CPython

    def ticks_add(ticks, delta):
        return (ticks + delta) & _MASK

    def ticks_diff(ticks1, ticks2):
        return ((ticks1 - ticks2 + _HALF) & _MASK) - _HALF
