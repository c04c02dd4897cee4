"""The USB link to a board's MicroPython: mpremote's `SerialTransport`, with our errors.

In:  a serial port path (a USB CDC/UART device, or a virtual board's pty).
Out: `BoardLink`: `exec(code)` runs code in the board's raw REPL and returns what it
     printed; `exec_json(code)` parses the last printed line; `transport` is mpremote's own
     object for its file-system API (fs_writefile, fs_listdir, ...).
On failure: every fault of the link or the board becomes a `LinkError` (a `UserError`,
     exit code 3) saying what happened and what to do: no such port, port busy, no REPL
     (a program that will not stop, another tool on the port), the cable pulled mid-way.
     Code that raises on the board becomes `BoardCodeError` with the board's traceback:
     that is our bug or a board fault, never silently ignored.

Timeouts everywhere: a serial read never blocks for more than `timeout_s` without a byte
(MicroPython's WebAssembly port, and a board stuck in a busy loop, cannot be interrupted).
"""

from __future__ import annotations

import json
import os

import serial
from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from dordt.errors import UserError

EXIT_LINK = 3  # the board or its link: not found, not answering, dropped

REPLUG_HINT = ("check the USB cable (a data cable, not a charge-only one), plug the board "
               "back in and run the same command again; the board keeps its previous "
               "firmware until an install completes")


class LinkError(UserError):
    def __init__(self, message: str):
        super().__init__(message, EXIT_LINK)


class BoardCodeError(Exception):
    """Code run on the board raised; `traceback` is the board's own text."""

    def __init__(self, what: str, traceback: str):
        super().__init__(f"{what}: the board raised:\n{traceback.strip()}")
        self.traceback = traceback


class BoardLink:
    """One open raw-REPL session on a board.  Use as a context manager."""

    def __init__(self, port: str, timeout_s: float = 10.0):
        self.port = port
        self.timeout_s = timeout_s
        self.transport: SerialTransport | None = None
        self.boot_output = ""

    def __enter__(self) -> BoardLink:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self, soft_reset: bool = True) -> None:
        """Open the port and enter the raw REPL; with `soft_reset` the board restarts its
        interpreter first (boot.py runs, RAM is clean), as mpremote does."""
        if not os.path.exists(self.port):
            raise LinkError(f"no serial port {self.port}: is the board plugged in? "
                            "`dordt provision ports` lists the boards it sees")
        try:
            self.transport = SerialTransport(self.port, baudrate=115200,
                                             timeout=self.timeout_s)
        except (TransportError, serial.SerialException, OSError) as exc:
            raise LinkError(f"cannot open {self.port} ({_reason(exc)}): close any other "
                            "program using it (mpremote, screen, Thonny) and try again") from None
        try:
            self.transport.enter_raw_repl(soft_reset=soft_reset,
                                          timeout_overall=self.timeout_s)
        except (TransportError, serial.SerialException, OSError) as exc:
            self.close()
            raise LinkError(f"the board on {self.port} does not answer at its REPL "
                            f"({_reason(exc)}): press its reset button (or unplug and plug "
                            "it back in) and try again; if it still does not answer, "
                            "flash MicroPython (`dordt provision flash`)") from None
        self.boot_output = ""

    def close(self) -> None:
        transport, self.transport = self.transport, None
        if transport is None:
            return
        try:
            if transport.in_raw_repl:
                transport.exit_raw_repl()
        except (TransportError, serial.SerialException, OSError):
            pass
        try:
            transport.close()
        except (serial.SerialException, OSError):
            pass

    def soft_reset(self) -> str:
        """Restart the board's interpreter (boot.py runs) and come back to the raw REPL;
        returns what boot.py printed."""
        t = self._t()
        try:
            t.serial.write(b"\x04")
            out = t.read_until(1, b"soft reboot\r\n", timeout_overall=self.timeout_s)
            if not out.endswith(b"soft reboot\r\n"):
                raise TransportError("no soft reboot")
            booted = t.read_until(1, b"raw REPL; CTRL-B to exit\r\n",
                                  timeout_overall=self.timeout_s)
            if not booted.endswith(b"raw REPL; CTRL-B to exit\r\n"):
                raise TransportError("no raw REPL after the soft reboot")
        except (TransportError, serial.SerialException, OSError) as exc:
            raise self._dropped("restarting the board", exc) from None
        self.boot_output = booted[: -len(b"raw REPL; CTRL-B to exit\r\n")].decode(
            "utf-8", "replace")
        return self.boot_output

    def exec(self, code: str, what: str = "running code on the board",
             timeout_s: float | None = None) -> str:
        t = self._t()
        try:
            out, err = t.exec_raw(code, timeout=timeout_s or self.timeout_s)
        except (TransportError, serial.SerialException, OSError) as exc:
            raise self._dropped(what, exc) from None
        if err:
            raise BoardCodeError(what, err.decode("utf-8", "replace"))
        return out.decode("utf-8", "replace")

    def exec_json(self, code: str, what: str = "running code on the board",
                  timeout_s: float | None = None):
        out = self.exec(code, what, timeout_s)
        lines = [line for line in out.splitlines() if line.strip()]
        try:
            return json.loads(lines[-1])
        except (IndexError, ValueError):
            raise BoardCodeError(what, f"expected a JSON line, got: {out[-300:]!r}") from None

    def _t(self) -> SerialTransport:
        if self.transport is None:
            raise LinkError(f"the link to {self.port} is closed")
        return self.transport

    def _dropped(self, what: str, exc: BaseException) -> LinkError:
        self.close()
        return LinkError(f"the link to the board on {self.port} failed while {what} "
                         f"({_reason(exc)}): {REPLUG_HINT}")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:160]
