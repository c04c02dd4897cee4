"""`dordt provision ...`: the technician's tool (planned: find, flash, install, enrol,
self-test over USB serial, with a virtual board for tests)."""

from __future__ import annotations

from dordt.errors import UserError


def register(groups) -> None:
    g = groups.add_parser(
        "provision", help="flash and enrol boards (not built yet)",
        description="Find a board, flash MicroPython, install the firmware, enrol it and "
        "self-test it. Not built yet: it follows the firmware issue.")
    g.set_defaults(handler=_not_built)


def _not_built(args) -> int:
    raise UserError("`dordt provision` has no commands yet: it is planned, not built", 2)
