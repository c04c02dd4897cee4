"""Serial ingest: framed bytes from a USB-UART or RS-485 adapter → Envelopes on a queue.

In:  the byte stream of docs/protocol.md §5.2 (00 | COBS(frame | CRC-16) | 00), read with
pyserial from a device path (`/dev/ttyUSB0`, a `/dev/serial/by-id/...` link) or from the
adapter found by USB id (`usb:10c4:ea60`, optionally `usb:10c4:ea60:SERIALNO`).
Out: `Envelope("serial", topic="", frame, received_s, ack=None)` for each frame whose CRC
checks.  A serial frame has no topic: its node id is authenticated by its tag, and
verify skips the topic check for an empty topic.  There is nothing to acknowledge.
On failure: a bad frame (CRC, stuffing, size) is counted and dropped, never raised.  An
unplugged or failing port (SerialException, OSError) is closed, and the reader thread
reopens the same path or USB id when the device reappears, backing off 1 s .. 30 s.

Lifecycle (gateway/ingest/__init__.py): start() starts the reader thread, which keeps
(re)opening on its own; stop() returns after the port is closed and the thread has
ended, so no envelope is queued after it returns.  `connected` is set while the port is
open; `stats()` gives the counters for health.

A serial link has no acknowledgement: bytes the node writes while the port is closed
are lost on the link (and pyserial discards any input pending when it opens a port).
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import serial
import serial.tools.list_ports

from firmware import framing
from gateway.model import Envelope

log = logging.getLogger("dordt.gateway.serial")

_USB_SPEC = re.compile(r"usb:([0-9a-fA-F]{4}):([0-9a-fA-F]{4})(?::(.+))?")


@dataclass(frozen=True)
class PortSpec:
    """Where the adapter is: a device path, or a USB vendor:product id (and serial)."""

    path: str | None = None
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None

    @classmethod
    def parse(cls, text: str) -> PortSpec:
        text = text.strip()
        if text.lower().startswith("usb:"):
            m = _USB_SPEC.fullmatch(text)
            if not m:
                raise ValueError(
                    f"serial port {text!r}: expected usb:VID:PID or usb:VID:PID:SERIAL with "
                    "4-digit hex ids, for example usb:10c4:ea60 (see `lsusb`)"
                )
            return cls(vid=int(m[1], 16), pid=int(m[2], 16), serial_number=m[3])
        if not text.startswith("/"):
            raise ValueError(
                f"serial port {text!r}: expected an absolute device path such as "
                "/dev/ttyUSB0 or /dev/serial/by-id/..., or usb:VID:PID"
            )
        return cls(path=text)

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        usb = f"usb:{self.vid:04x}:{self.pid:04x}"
        return usb + (f":{self.serial_number}" if self.serial_number else "")

    def resolve(self, list_ports: Callable[[], Sequence]) -> str:
        """The device path to open now.  OSError when no single adapter matches (it is
        unplugged, or several match), so the caller treats it like a failed open."""
        if self.path is not None:
            return self.path
        found = sorted(
            p.device
            for p in list_ports()
            if p.vid == self.vid
            and p.pid == self.pid
            and (self.serial_number is None or p.serial_number == self.serial_number)
        )
        if not found:
            raise OSError(f"no serial adapter with USB id {self} is plugged in")
        if len(found) > 1:
            raise OSError(
                f"{len(found)} serial adapters match {self} ({', '.join(found)}): "
                "add the adapter's serial number, usb:VID:PID:SERIAL"
            )
        return found[0]


class SerialIngest:
    def __init__(
        self,
        port: str,
        out: queue.Queue[Envelope] | queue.SimpleQueue[Envelope],
        baudrate: int = 115200,
        *,
        read_timeout_s: float = 0.2,
        backoff_min_s: float = 1.0,
        backoff_max_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        list_ports: Callable[[], Sequence] = serial.tools.list_ports.comports,
    ):
        self.spec = PortSpec.parse(port)
        if baudrate <= 0:
            raise ValueError(f"serial baudrate {baudrate!r}: must be a positive integer")
        if not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError(
                f"serial backoff {backoff_min_s!r} .. {backoff_max_s!r} s: need "
                "0 < backoff_min_s <= backoff_max_s"
            )
        self.out = out
        self.baudrate = baudrate
        self.read_timeout_s = read_timeout_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self.list_ports = list_ports
        self.deframer = framing.Deframer()
        self.connected = threading.Event()
        self.device: str | None = None  # the path open now (resolved from a USB id)
        self.opens = 0
        self.open_failures = 0
        self.link_losses = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._port: serial.Serial | None = None

    # -- health ---------------------------------------------------------------------------

    @property
    def frames(self) -> int:
        return self.deframer.frames

    @property
    def crc_errors(self) -> int:
        return self.deframer.crc_errors

    @property
    def reopens(self) -> int:
        """Successful opens after the first: how often the link came back."""
        return max(self.opens - 1, 0)

    def stats(self) -> dict[str, int | bool | str]:
        d = self.deframer
        return {
            "port": str(self.spec),
            "connected": self.connected.is_set(),
            "frames": d.frames,
            "crc_errors": d.crc_errors,
            "oversized": d.oversized,
            "malformed": d.malformed,
            "reopens": self.reopens,
            "open_failures": self.open_failures,
            "link_losses": self.link_losses,
        }

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ingest-serial", daemon=True)
        self._thread.start()

    def wait_connected(self, timeout_s: float) -> bool:
        return self.connected.wait(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        port = self._port
        if port is not None:
            try:
                port.cancel_read()  # wakes a read() blocked in select
            except Exception:  # the port may be closing under us
                pass
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # -- the reader thread ----------------------------------------------------------------

    def _run(self) -> None:
        delay = self.backoff_min_s
        complained = False  # log an absent device once per outage, not every retry
        while not self._stop.is_set():
            try:
                port = self._open()
            except (serial.SerialException, OSError) as exc:
                self.open_failures += 1
                if not complained:
                    log.warning("serial port %s unavailable (%s); retrying every %g..%g s",
                                self.spec, exc, self.backoff_min_s, self.backoff_max_s)
                    complained = True
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            complained = False
            delay = self.backoff_min_s
            try:
                self._read_until_lost(port)
            except (serial.SerialException, OSError) as exc:
                if not self._stop.is_set():
                    self.link_losses += 1
                    log.warning("serial port %s lost (%s); reopening", self.device, exc)
            finally:
                self.connected.clear()
                self._port = None
                try:
                    port.close()
                except (serial.SerialException, OSError):
                    pass
            if not self._stop.is_set():
                self._stop.wait(delay)

    def _open(self) -> serial.Serial:
        device = self.spec.resolve(self.list_ports)
        # exclusive: a second reader on the same tty would steal half the bytes
        port = serial.Serial(device, self.baudrate, timeout=self.read_timeout_s,
                             exclusive=True)
        self.device = device
        self.deframer.reset()  # a partial frame from before the outage is not completed
        self._port = port
        self.opens += 1
        self.connected.set()
        log.info("serial port %s open at %d baud (%s)", device, self.baudrate, self.spec)
        return port

    def _read_until_lost(self, port: serial.Serial) -> None:
        while not self._stop.is_set():
            data = port.read(max(1, port.in_waiting))
            if not data:
                continue
            received_s = self.clock()
            for frame in self.deframer.feed(data):
                self.out.put(Envelope("serial", "", frame, received_s, None))
