# The board's entry point: the /main.py stub that provisioning installs (firmware/slots.py,
# MAIN_PY) calls start() after boot.py has put the active firmware slot on sys.path.
# Imported (tests, the module checks) it does nothing.
#
# In: the board.  Out: a running node (node.run never returns on a board).
# On failure: an exception escaping the node is printed and the board resets, so the
# watchdog-fed loop starts again from a clean heap.
#
# RAM: nothing of its own.


def start():
    from firmware import board, node

    try:
        node.run(board.build())
    except Exception as exc:  # last resort: say why, then start over
        import sys

        sys.print_exception(exc)  # type: ignore  # MicroPython
        import machine

        machine.reset()


if __name__ == "__main__":
    start()
