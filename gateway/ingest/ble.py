"""BLE ingest: frames in BLE 5 extended advertisements (bleak) → Envelopes on a queue.

In:  every advertisement the adapter hears, through bleak's detection callback
(`BLEDevice`, `AdvertisementData`).  Out: `Envelope("ble", topic="", frame, received_s,
ack=None)` for each fleet advertisement (docs/protocol.md §5.3): manufacturer data under
`framing.BLE_COMPANY_ID` whose value starts with `framing.BLE_MARKER` and carries a frame
that decodes (§2.3 checks 1–8) and, when `is_fleet_node` is given, whose node id is
enrolled.  Its tag, counter and the rest are verify's job, as for every link.
On failure: never raises into bleak.  A scanner that cannot start (no adapter, BlueZ
down) is retried with back-off (1 s .. 30 s); one that hears nothing at all for
`silence_restart_s` is restarted (in passive mode only fleet advertisements arrive, so
that span must be longer than any gap in the nodes' advertising, or None).

Privacy (ARCHITECTURE.md, "Privacy by construction"): a city street is full of phones,
watches and beacons, and their addresses and payloads are personal data.  The callback
decides on the manufacturer data alone, before anything else is read: it never looks
at the device address, name or RSSI; it stores, queues and logs nothing of an
advertisement that is not a fleet one, only `foreign` / `invalid` counts.  Two things
in bleak would keep or print more, and are dealt with: its scanner remembers every
device it heard (`seen_devices`, address and last advertisement), so the callback
empties that map each time it returns; and bleak's and dbus_fast's DEBUG logs print
every D-Bus signal, so their loggers are held at INFO while an ingest exists.  With
`scanning_mode="passive"` BlueZ itself filters by the dordt prefix (an advertisement
monitor or-pattern) and sends no scan requests, so other devices' advertisements do not
reach this process at all (needs BlueZ >= 5.56 with advertisement monitors enabled); in
the default active mode bluetoothd keeps its usual short-lived in-memory object for
each device it hears, outside this process.

A node re-advertises the same frame until it has a new one, so a payload heard again
within `dedupe_s` of its previous copy is queued only once (the others are counted as
`duplicates`); the replay window would refuse the copies anyway, this spares the
pipeline and keeps the `replay` rejection count meaningful.

Lifecycle (gateway/ingest/__init__.py): start() runs the scanner on its own thread and
event loop and keeps it running; stop() returns after the scanner is stopped and the
thread has ended, so no envelope is queued after it returns.  `scanning` is set while
the scanner runs; `stats()` gives the counters for health.

Tests replace only the scanner: `scanner_class` is `BleakScanner` in production and a
stand-in of the same shape (constructor, async start()/stop()) in tests.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from bleak import BleakScanner
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from firmware import framing, protocol
from gateway.model import Envelope

log = logging.getLogger("dordt.gateway.ble")

# Libraries whose DEBUG output includes the address and data of every advertisement.
_CHATTY_LOGGERS = ("bleak", "dbus_fast")

# What BlueZ matches in passive mode: the AD data of a manufacturer-specific structure
# begins with the company id (little-endian) and our marker.
OR_PATTERN = (
    0,
    AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA,
    bytes((framing.BLE_COMPANY_ID & 0xFF, framing.BLE_COMPANY_ID >> 8, framing.BLE_MARKER)),
)


def quiet_chatty_loggers() -> None:
    """Hold bleak's and dbus_fast's loggers at INFO or above: at DEBUG they log every
    D-Bus signal, which carries each nearby device's address and advertising data."""
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.INFO:  # NOTSET too: it would follow the root to DEBUG
            logger.setLevel(logging.INFO)
    # a module logger given its own DEBUG level would bypass the parent's
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if (
            isinstance(logger, logging.Logger)
            and name.startswith(tuple(n + "." for n in _CHATTY_LOGGERS))
            and logging.NOTSET < logger.level < logging.INFO
        ):
            logger.setLevel(logging.INFO)


class BleIngest:
    def __init__(
        self,
        out: queue.Queue[Envelope] | queue.SimpleQueue[Envelope],
        *,
        adapter: str | None = None,
        scanning_mode: str = "active",
        is_fleet_node: Callable[[int], bool] | None = None,
        dedupe_s: float = 30.0,
        dedupe_max: int = 4096,
        backoff_min_s: float = 1.0,
        backoff_max_s: float = 30.0,
        silence_restart_s: float | None = 300.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        scanner_class: type = BleakScanner,
    ):
        if scanning_mode not in ("active", "passive"):
            raise ValueError(
                f"ble scanning_mode {scanning_mode!r}: expected 'active' or 'passive'"
            )
        if dedupe_s < 0 or dedupe_max < 1:
            raise ValueError(
                f"ble dedupe {dedupe_s!r} s / {dedupe_max!r} entries: need dedupe_s >= 0 "
                "and dedupe_max >= 1"
            )
        if not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError(
                f"ble backoff {backoff_min_s!r} .. {backoff_max_s!r} s: need "
                "0 < backoff_min_s <= backoff_max_s"
            )
        quiet_chatty_loggers()
        self.out = out
        self.adapter = adapter
        self.scanning_mode = scanning_mode
        self.is_fleet_node = is_fleet_node
        self.dedupe_s = dedupe_s
        self.dedupe_max = dedupe_max
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.silence_restart_s = silence_restart_s
        self.clock = clock
        self.monotonic = monotonic
        self.scanner_class = scanner_class
        self.scanning = threading.Event()
        # counters (health); never an address, name or payload of anything foreign
        self.adverts = 0  # every advertisement the callback saw
        self.foreign = 0  # not a dordt carrier: phones, beacons, other products
        self.invalid = 0  # dordt carrier, but no decodable frame of an enrolled node
        self.duplicates = 0  # a frame already queued within dedupe_s
        self.frames = 0  # queued
        self.scan_starts = 0
        self.scan_failures = 0
        self.silence_restarts = 0
        self.callback_errors = 0
        self._recent: OrderedDict[bytes, float] = OrderedDict()  # frame → last heard
        self._last_advert_s = 0.0
        self._scanner = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = threading.Event()

    # -- health ---------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Advertisements dropped before anything of them was kept."""
        return self.foreign + self.invalid

    def stats(self) -> dict[str, int | bool]:
        return {
            "scanning": self.scanning.is_set(),
            "adverts": self.adverts,
            "dropped": self.dropped,
            "foreign": self.foreign,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "frames": self.frames,
            "scan_starts": self.scan_starts,
            "scan_failures": self.scan_failures,
            "silence_restarts": self.silence_restarts,
            "callback_errors": self.callback_errors,
        }

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name="ingest-ble", daemon=True
        )
        self._thread.start()
        ready.wait()

    def wait_scanning(self, timeout_s: float) -> bool:
        return self.scanning.wait(timeout_s)

    def stop(self) -> None:
        self._stopping.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop has already closed
                pass
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # -- the scanner thread ---------------------------------------------------------------

    def _thread_main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        try:
            self._loop = loop
            self._stop = asyncio.Event()
            ready.set()
            loop.run_until_complete(self._run())
        finally:
            self._loop = None
            loop.close()

    def _make_scanner(self):
        bluez: dict = {}
        if self.adapter:
            bluez["adapter"] = self.adapter
        if self.scanning_mode == "passive":
            bluez["or_patterns"] = [OR_PATTERN]
        return self.scanner_class(
            detection_callback=self._on_advertisement,
            scanning_mode=self.scanning_mode,
            bluez=bluez,
        )

    async def _run(self) -> None:
        stop = self._stop
        assert stop is not None
        delay = self.backoff_min_s
        complained = False
        while not stop.is_set() and not self._stopping.is_set():
            try:
                scanner = self._scanner = self._make_scanner()
                await scanner.start()
            except Exception as exc:  # BleakError, D-Bus errors, OSError: all retryable
                self.scan_failures += 1
                if not complained:
                    # the exception names the adapter or the bus, never a device
                    log.warning("BLE scanner could not start (%s: %s); retrying every "
                                "%g..%g s", type(exc).__name__, exc, self.backoff_min_s,
                                self.backoff_max_s)
                    complained = True
                await _wait(stop, delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            complained = False
            delay = self.backoff_min_s
            self.scan_starts += 1
            self._last_advert_s = self.monotonic()
            self.scanning.set()
            log.info("BLE scanner running (%s, adapter %s)", self.scanning_mode,
                     self.adapter or "default")
            try:
                await self._watch(stop)
            finally:
                self.scanning.clear()
                try:
                    await scanner.stop()
                except Exception as exc:
                    log.warning("BLE scanner did not stop cleanly (%s)", type(exc).__name__)

    async def _watch(self, stop: asyncio.Event) -> None:
        """Return when stopping, or when the scanner has heard nothing for
        silence_restart_s (a street is never that quiet: the adapter or BlueZ is stuck)."""
        while not stop.is_set():
            if self.silence_restart_s is None:
                await stop.wait()
                return
            quiet_s = self.monotonic() - self._last_advert_s
            if quiet_s >= self.silence_restart_s:
                self.silence_restarts += 1
                log.warning("BLE scanner heard nothing for %.0f s; restarting it", quiet_s)
                return
            await _wait(stop, min(self.silence_restart_s - quiet_s, 5.0))

    # -- the filter ------------------------------------------------------------------------

    def _on_advertisement(self, device: BLEDevice, adv: AdvertisementData) -> None:
        """bleak's detection callback, on the scanner's event loop.  Looks at the
        manufacturer data under our company id and nothing else; `device` is not read."""
        try:
            self.adverts += 1
            self._last_advert_s = self.monotonic()
            value = adv.manufacturer_data.get(framing.BLE_COMPANY_ID)
            frame = framing.ble_frame(value) if value is not None else None
            if frame is None:
                self.foreign += 1
                return
            try:
                node_id = protocol.decode(frame).node_id
            except protocol.FrameError:
                self.invalid += 1
                return
            if self.is_fleet_node is not None and not self.is_fleet_node(node_id):
                self.invalid += 1
                return
            if self._seen_recently(frame):
                self.duplicates += 1
                return
            if self._stopping.is_set():
                return
            self.out.put(Envelope("ble", "", frame, self.clock(), None))
            self.frames += 1
        except Exception as exc:
            # Never into bleak (it would log the signal it was handling); the type only,
            # since a message might quote the advertisement.
            self.callback_errors += 1
            log.error("BLE advertisement handler failed: %s", type(exc).__name__)
        finally:
            self._forget_devices()

    def _forget_devices(self) -> None:
        """Empty bleak's map of every device heard (BaseBleakScanner.seen_devices,
        documented as a map that backends fill and clear on start): the gateway never
        uses it, and it would hold each passing phone's address until the scan ends.
        Backends tolerate a missing entry (BlueZ's device-removed handler ignores one)."""
        seen = getattr(getattr(self._scanner, "_backend", None), "seen_devices", None)
        if isinstance(seen, dict):
            seen.clear()

    def _seen_recently(self, frame: bytes) -> bool:
        """True when `frame` was heard less than dedupe_s ago.  The window slides with
        each copy, so a frame advertised for minutes is still queued once; the map is
        kept in order of last sighting, so expiry only ever looks at its front."""
        now = self.monotonic()
        recent = self._recent
        while recent:
            oldest, last_s = next(iter(recent.items()))
            if now - last_s < self.dedupe_s and len(recent) < self.dedupe_max:
                break
            del recent[oldest]
        seen = frame in recent
        recent[frame] = now
        recent.move_to_end(frame)
        return seen


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        pass
