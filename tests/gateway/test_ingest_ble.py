"""BLE ingest without a radio: bleak's own types (`BLEDevice`, `AdvertisementData`) fed by
a stand-in at the outermost edge.  Two stand-ins, both passed as the ingest's
`scanner_class`, the only thing production sets differently (to `BleakScanner`):

- `StandInScanner`, a class of BleakScanner's shape that calls the detection callback;
- the real `BleakScanner` with a stand-in *backend* (bleak's documented `backend=`
  seam): bleak's own scanner code builds the `BLEDevice`, keeps `seen_devices` and calls
  the callback, exactly as its BlueZ backend does with a D-Bus signal.

The street is simulated: phones, watches, beacons and other products advertise around
fleet nodes.  Only fleet frames may come out, and nothing of the others may be kept or
logged, at any level.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import random
import time

import pytest
from bleak import BleakScanner
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from firmware import framing, protocol
from gateway.ingest.ble import OR_PATTERN, BleIngest
from gateway.model import Envelope, Reading, Rejected
from gateway.verify import Verifier
from simulators.fleet import SimFleet, stranger

NOW = 1_790_000_000


# -- the air around the gateway ---------------------------------------------------------------


class Air:
    """Delivers advertisements to whichever scanner the ingest is running, on the
    scanner's event loop, as a BLE stack would; hear() returns once the callback ran."""

    def __init__(self):
        self.scanners: list = []
        self.fail_starts = 0

    def running(self):
        live = [s for s in self.scanners if s.running]
        assert len(live) == 1, f"{len(live)} scanners running"
        return live[0]

    def hear(self, address: str, adv: AdvertisementData) -> None:
        scanner = self.running()

        async def deliver():
            scanner.deliver(address, adv)

        asyncio.run_coroutine_threadsafe(deliver(), scanner.loop).result(5)

    # the two stand-ins

    def scanner_class(self):
        """A class of BleakScanner's shape."""
        air = self

        class StandInScanner:
            def __init__(self, detection_callback=None, service_uuids=None,
                         scanning_mode="active", *, bluez=None, cb=None, backend=None,
                         **kwargs):
                self.detection_callback = detection_callback
                self.service_uuids = service_uuids
                self.scanning_mode = scanning_mode
                self.bluez = dict(bluez or {})
                self.running = False
                self.loop = None
                air.scanners.append(self)

            async def start(self):
                if air.fail_starts:
                    air.fail_starts -= 1
                    raise BleakError("Bluetooth adapter hci0 not found")
                self.loop = asyncio.get_running_loop()
                self.running = True

            async def stop(self):
                self.running = False

            async def __aenter__(self):
                await self.start()
                return self

            async def __aexit__(self, *exc):
                await self.stop()

            def deliver(self, address, adv):
                self.detection_callback(BLEDevice(address, adv.local_name, None), adv)

        return StandInScanner

    def bleak_scanner_class(self):
        """The real BleakScanner over a stand-in backend."""
        air = self

        class StandInBackend(BaseBleakScanner):
            def __init__(self, detection_callback, service_uuids, scanning_mode, *,
                         bluez, **kwargs):
                super().__init__(detection_callback, service_uuids)
                self.scanning_mode = scanning_mode
                self.bluez = bluez
                self.running = False
                self.loop = None
                air.scanners.append(self)

            async def start(self):
                self.seen_devices = {}  # as every backend does on start
                self.loop = asyncio.get_running_loop()
                self.running = True

            async def stop(self):
                self.running = False

            def deliver(self, address, adv):
                # what BleakScannerBlueZDBus._handle_advertising_data does
                if not self.is_allowed_uuid(adv.service_uuids):
                    return
                path = "/org/bluez/hci0/dev_" + address.replace(":", "_")
                device = self.create_or_update_device(
                    path, address, adv.local_name, {"path": path}, adv
                )
                self.call_detection_callbacks(device, adv)

        return functools.partial(BleakScanner, backend=StandInBackend)


def advert(manufacturer=None, service_data=None, service_uuids=None, name=None, rssi=-70):
    return AdvertisementData(
        local_name=name,
        manufacturer_data=dict(manufacturer or {}),
        service_data=dict(service_data or {}),
        service_uuids=list(service_uuids or []),
        tx_power=None,
        rssi=rssi,
        platform_data=(),
    )


def fleet_advert(frame: bytes, extra_manufacturer=None) -> AdvertisementData:
    value = framing.ble_adv_data(frame)[4:]  # what a stack reports: no length/type/company
    return advert({framing.BLE_COMPANY_ID: value, **(extra_manufacturer or {})}, rssi=-80)


def random_address(rng: random.Random) -> str:
    first = rng.randrange(256) | 0xC0  # random static / resolvable: what phones use
    return ":".join(f"{b:02X}" for b in [first, *(rng.randrange(256) for _ in range(5))])


def uuid16(short: int) -> str:
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


def street(rng: random.Random) -> list[tuple[str, AdvertisementData]]:
    """What a lamppost hears besides the fleet: (address, advertisement)."""
    r = rng.randbytes
    return [
        (random_address(rng), advert({0x004C: bytes.fromhex("1005") + r(6)})),  # iPhone
        (random_address(rng), advert({0x004C: bytes.fromhex("0215") + r(21)})),  # iBeacon
        (random_address(rng), advert({0x004C: bytes.fromhex("1219") + r(25)})),  # Find My
        (random_address(rng), advert({0x0006: bytes.fromhex("030080") + r(10)})),  # Windows
        (random_address(rng), advert({0x0075: bytes.fromhex("4204") + r(20)})),  # Samsung
        (random_address(rng), advert(service_data={uuid16(0xFE2C): r(10)},
                                     service_uuids=[uuid16(0xFE2C)])),  # Fast Pair
        (random_address(rng), advert(service_data={uuid16(0xFEAA): bytes([0x10]) + r(12)},
                                     service_uuids=[uuid16(0xFEAA)])),  # Eddystone
        (random_address(rng), advert(name="Mi Smart Band 7")),  # a name, nothing else
        (random_address(rng), advert({0xFFFF: b"esp32 hello " + r(4)})),  # a hobbyist
        (random_address(rng), advert({0xFFFF: b"\xd1" + r(60)})),  # our marker, no frame
    ]


@pytest.fixture
def air():
    return Air()


@pytest.fixture
def ingests():
    made: list[BleIngest] = []

    def make(q, **kwargs) -> BleIngest:
        kwargs.setdefault("silence_restart_s", None)
        made.append(BleIngest(q, **kwargs))
        made[-1].start()
        return made[-1]

    yield make
    for ingest in made:
        ingest.stop()


def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the ingest")
        time.sleep(0.01)


def drain(q: queue.Queue[Envelope]) -> list[Envelope]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


# -- only the fleet comes out, nothing of anyone else stays ----------------------------------


@pytest.mark.parametrize("stand_in", ["scanner", "bleak-backend"])
def test_only_fleet_frames_pass_and_nothing_of_the_street_is_kept_or_logged(
    air, ingests, caplog, stand_in
):
    caplog.set_level(logging.DEBUG)  # everything, from every logger, at every level
    fleet = SimFleet(seed=21)
    ring = fleet.keyring()
    verifier = Verifier(ring, clock=lambda: NOW + 1.0)
    scanner_class = air.scanner_class() if stand_in == "scanner" else air.bleak_scanner_class()
    q: queue.Queue[Envelope] = queue.Queue()
    ingest = ingests(q, scanner_class=scanner_class,
                     is_fleet_node=lambda node_id: ring.get(node_id) is not None)
    assert ingest.wait_scanning(5)

    rng = random.Random(4)
    nodes = {n.node_id: random_address(rng) for n in fleet.nodes}
    frames = [frame for _, frame in fleet.tick(NOW)] + [frame for _, frame in fleet.tick(NOW + 10)]
    others: list[tuple[str, AdvertisementData]] = []
    _, outsider = stranger(21, NOW)  # well-formed, but from no enrolled node
    for i, frame in enumerate(frames):
        for address, adv in street(rng):
            others.append((address, adv))
            air.hear(address, adv)
        node_id = protocol.decode(frame).node_id
        extra = {0x004C: b"\x10\x05" + rng.randbytes(6)} if i % 7 == 0 else None
        air.hear(nodes[node_id], fleet_advert(frame, extra))
        air.hear(nodes[node_id], fleet_advert(frame))  # advertised again: a duplicate
        if i % 9 == 0:
            others.append((random_address(rng), fleet_advert(outsider)))
            air.hear(*others[-1])

    envs = drain(q)
    assert [e.payload for e in envs] == frames
    assert {(e.source, e.topic, e.ack) for e in envs} == {("ble", "", None)}
    assert all(isinstance(verifier.check(e), Reading) for e in envs)
    stats = ingest.stats()
    street_size = len(street(random.Random(0)))
    assert stats["frames"] == len(frames) and stats["duplicates"] == len(frames)
    assert stats["dropped"] == len(others)
    outsiders = len(range(0, len(frames), 9))
    assert stats["invalid"] == outsiders + len(frames)  # + one marker-junk advert per round
    assert stats["foreign"] == (street_size - 1) * len(frames)
    assert stats["adverts"] == stats["frames"] + stats["duplicates"] + stats["dropped"]
    assert stats["callback_errors"] == 0

    # Nothing of the street in any log record, at any level, in any form.
    secrets = set()
    for address, adv in others:
        secrets |= {address, address.lower(), address.replace(":", ""),
                    address.replace(":", "").lower(), address.replace(":", "_")}
        for value in [*adv.manufacturer_data.values(), *adv.service_data.values()]:
            secrets |= {value.hex(), repr(value)[2:-1], value.hex(" ")}
        if adv.local_name:
            secrets.add(adv.local_name)
    logged = caplog.text + "".join(
        f"{r.name} {r.msg} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )
    leaked = sorted(s for s in secrets if s in logged)
    assert not leaked, leaked
    # Nor kept: the dedupe map holds fleet frames only; bleak's device map is empty.
    assert set(ingest._recent) <= set(frames)
    scanner = air.running()
    if stand_in == "bleak-backend":
        assert scanner.seen_devices == {}


def test_bleak_and_dbus_debug_logs_are_held_at_info(caplog):
    caplog.set_level(logging.DEBUG)
    chatty = logging.getLogger("bleak.backends.bluezdbus.scanner")
    chatty.setLevel(logging.DEBUG)  # someone turned it up to debug BLE
    BleIngest(queue.Queue(), scanner_class=Air().scanner_class())
    for name in ("bleak.backends.bluezdbus.manager", "bleak.backends.bluezdbus.scanner",
                 "dbus_fast.message_bus", "bleak"):
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
    assert logging.getLogger("dordt.gateway.ble").isEnabledFor(logging.DEBUG)


# -- duplicates --------------------------------------------------------------------------------


def test_a_frame_advertised_again_and_again_passes_once(air, ingests):
    fleet = SimFleet(seed=22)
    verifier = Verifier(fleet.keyring(), clock=lambda: NOW + 1.0)
    clock = [1000.0]
    q: queue.Queue[Envelope] = queue.Queue()
    ingest = ingests(q, scanner_class=air.scanner_class(), dedupe_s=30.0,
                     monotonic=lambda: clock[0])
    assert ingest.wait_scanning(5)
    node = fleet.nodes[0]
    first, second = node.frame(NOW), node.frame(NOW + 10)
    for _ in range(10):  # a burst: ten copies within a second
        air.hear("C0:00:00:00:00:01", fleet_advert(first))
        clock[0] += 0.1
    for _ in range(10):  # then one copy every 20 s for 200 s: the window slides
        clock[0] += 20
        air.hear("C0:00:00:00:00:01", fleet_advert(first))
    air.hear("C0:00:00:00:00:01", fleet_advert(second))  # the node's next frame
    clock[0] += 31  # quiet for longer than the window: a late copy gets through
    air.hear("C0:00:00:00:00:01", fleet_advert(second))
    envs = drain(q)
    assert [e.payload for e in envs] == [first, second, second]
    assert ingest.duplicates == 19 and ingest.frames == 3
    results = [verifier.check(e) for e in envs]
    assert isinstance(results[0], Reading) and isinstance(results[1], Reading)
    assert isinstance(results[2], Rejected) and results[2].reason == "replay"


def test_the_dedupe_map_is_bounded(air, ingests):
    fleet = SimFleet(seed=23)
    q: queue.Queue[Envelope] = queue.Queue()
    ingest = ingests(q, scanner_class=air.scanner_class(), dedupe_max=3)
    assert ingest.wait_scanning(5)
    frames = [fleet.nodes[0].frame(NOW + 10 * i) for i in range(5)]
    for frame in frames:
        air.hear("C0:00:00:00:00:02", fleet_advert(frame))
    assert len(ingest._recent) == 3
    air.hear("C0:00:00:00:00:02", fleet_advert(frames[0]))  # forgotten: passes again
    air.hear("C0:00:00:00:00:02", fleet_advert(frames[4]))  # remembered: a duplicate
    assert [e.payload for e in drain(q)] == [*frames, frames[0]]
    assert ingest.duplicates == 1


# -- the scanner's life ------------------------------------------------------------------------


def test_passive_scanning_asks_bluez_to_filter_on_the_dordt_prefix(air, ingests):
    q: queue.Queue[Envelope] = queue.Queue()
    ingest = ingests(q, scanner_class=air.scanner_class(), scanning_mode="passive",
                     adapter="hci1")
    assert ingest.wait_scanning(5)
    scanner = air.running()
    assert scanner.scanning_mode == "passive"
    assert scanner.bluez == {"adapter": "hci1", "or_patterns": [OR_PATTERN]}
    assert OR_PATTERN == (0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\xff\xff\xd1")
    # the same arguments are accepted by the real BleakScanner (BlueZ backend here)
    real = BleakScanner(detection_callback=lambda device, adv: None,
                        scanning_mode="passive", bluez=scanner.bluez)
    assert real is not None


def test_a_scanner_that_cannot_start_is_retried(air, ingests, caplog):
    air.fail_starts = 3
    q: queue.Queue[Envelope] = queue.Queue()
    ingest = ingests(q, scanner_class=air.scanner_class(), backoff_min_s=0.02,
                     backoff_max_s=0.05)
    assert ingest.wait_scanning(5)
    assert ingest.scan_failures == 3 and ingest.scan_starts == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "hci0 not found" in warnings[0].getMessage()


def test_a_silent_scanner_is_restarted(air, ingests):
    q: queue.Queue[Envelope] = queue.Queue()
    ingest = ingests(q, scanner_class=air.scanner_class(), silence_restart_s=0.2)
    wait_for(lambda: ingest.silence_restarts >= 2 and ingest.scanning.is_set())
    assert ingest.scan_starts >= 3
    assert sum(s.running for s in air.scanners) == 1  # the old ones were stopped
    fleet = SimFleet(seed=24)
    frame = fleet.nodes[0].frame(NOW)
    air.hear("C0:00:00:00:00:03", fleet_advert(frame))
    assert [e.payload for e in drain(q)] == [frame]


def test_the_real_bleak_scanner_without_bluetooth_keeps_retrying(ingests):
    # No D-Bus system bus or adapter here: bleak's BlueZ backend fails to start, and the
    # ingest must take that calmly.  (With a working adapter it simply scans.)
    q: queue.Queue[Envelope] = queue.Queue()
    ingest = ingests(q, backoff_min_s=0.02, backoff_max_s=0.05)
    wait_for(lambda: ingest.scan_failures >= 2 or ingest.scanning.is_set())
    started = time.monotonic()
    ingest.stop()
    assert time.monotonic() - started < 5
    assert not ingest.scanning.is_set()


def test_stop_stops_the_scanner_and_nothing_is_queued_after_it(air):
    q: queue.Queue[Envelope] = queue.Queue()
    ingest = BleIngest(q, scanner_class=air.scanner_class(), silence_restart_s=None)
    ingest.start()
    assert ingest.wait_scanning(5)
    scanner = air.running()
    ingest.stop()
    assert not scanner.running and not ingest.scanning.is_set()
    assert ingest._thread is None
    frame = SimFleet(seed=25).nodes[0].frame(NOW)
    scanner.detection_callback(BLEDevice("C0:00:00:00:00:04", None, None), fleet_advert(frame))
    assert q.empty()


def test_a_failing_filter_is_counted_and_logged_without_the_advertisement(
    air, ingests, caplog
):
    caplog.set_level(logging.DEBUG)

    def broken(node_id: int) -> bool:
        raise KeyError(f"node {node_id:08x}")

    q: queue.Queue[Envelope] = queue.Queue()
    ingest = ingests(q, scanner_class=air.scanner_class(), is_fleet_node=broken)
    assert ingest.wait_scanning(5)
    frame = SimFleet(seed=26).nodes[0].frame(NOW)
    air.hear("C0:11:22:33:44:55", fleet_advert(frame))
    assert ingest.callback_errors == 1 and q.empty()
    assert "KeyError" in caplog.text
    assert frame.hex() not in caplog.text and "C0:11:22:33:44:55" not in caplog.text


def test_configuration_errors_name_the_option():
    q: queue.Queue[Envelope] = queue.Queue()
    with pytest.raises(ValueError, match="scanning_mode"):
        BleIngest(q, scanning_mode="aggressive")
    with pytest.raises(ValueError, match="dedupe"):
        BleIngest(q, dedupe_s=-1)
    with pytest.raises(ValueError, match="backoff"):
        BleIngest(q, backoff_min_s=0)
