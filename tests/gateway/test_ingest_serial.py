"""Serial ingest over real ttys: a pty pair is the cable, the test writes the node's side
(framed SimNode frames, line noise, corrupted bytes, writes in pieces) to the master and
the ingest reads the slave with pyserial.  Unplugging is closing the pty; replugging is a
new pty behind the same path (a symlink re-pointed, as udev does for /dev/serial/by-id)
or with the same USB id (pyserial's own ListPortInfo, from an injected port lister).
"""

from __future__ import annotations

import logging
import os
import queue
import random
import time
import tty

import pytest
from serial.tools.list_ports_common import ListPortInfo

from firmware import framing
from gateway.forward.local import LocalStore
from gateway.ingest.serial import PortSpec, SerialIngest
from gateway.model import Envelope, Reading
from gateway.pipeline import Gateway
from gateway.verify import Verifier
from simulators.fleet import SimFleet

NOW = 1_790_000_000
FAST = {"read_timeout_s": 0.05, "backoff_min_s": 0.05, "backoff_max_s": 0.2}


class Pty:
    """One serial cable: the test is the node's UART on the master side."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # a UART is raw: no echo, no CR/LF translation
        self.path = os.ttyname(self.slave)
        self.open = True

    def write(self, data: bytes, pieces: int = 1, pause_s: float = 0.0) -> None:
        """Write `data`, optionally in `pieces` separate writes with a pause between."""
        cuts = sorted(random.Random(len(data)).sample(range(1, len(data)), pieces - 1))
        for start, end in zip([0, *cuts], [*cuts, len(data)]):
            view = memoryview(data)[start:end]
            while view:
                view = view[os.write(self.master, view) :]
            if pause_s:
                time.sleep(pause_s)

    def unplug(self) -> None:
        if self.open:
            os.close(self.master)
            os.close(self.slave)
            self.open = False


@pytest.fixture
def ptys():
    made: list[Pty] = []

    def make() -> Pty:
        made.append(Pty())
        return made[-1]

    yield make
    for p in made:
        p.unplug()


@pytest.fixture
def ingests():
    made: list[SerialIngest] = []

    def make(*args, **kwargs) -> SerialIngest:
        made.append(SerialIngest(*args, **{**FAST, **kwargs}))
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


def take(q: queue.Queue[Envelope], n: int, timeout_s: float = 5.0) -> list[Envelope]:
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        out.append(q.get(timeout=max(deadline - time.monotonic(), 0.01)))
    return out


def corrupt(wire: bytes) -> bytes:
    """The wire bytes with one COBS data byte changed (still non-zero): a CRC error."""
    data_positions = []
    i = 1
    while i < len(wire) - 1:
        code = wire[i]
        data_positions.extend(range(i + 1, i + code))
        i += code
    pos = data_positions[len(data_positions) // 2]
    bad = bytearray(wire)
    bad[pos] ^= 0x01 if bad[pos] != 0x01 else 0x02
    return bytes(bad)


def frames_of(fleet: SimFleet, t_s: float) -> list[bytes]:
    return [frame for _, frame in fleet.tick(t_s)]


def repoint(link, target: str) -> None:
    tmp = f"{link}.new"
    os.symlink(target, tmp)
    os.replace(tmp, link)


# -- frames, noise, pieces -----------------------------------------------------------------


def test_frames_arrive_through_noise_and_split_writes_and_verify(ptys, ingests):
    fleet = SimFleet(seed=11)
    verifier = Verifier(fleet.keyring(), clock=lambda: NOW + 1.0)
    cable = ptys()
    q: queue.Queue[Envelope] = queue.Queue()
    ingest = ingests(cable.path, q)
    assert ingest.wait_connected(5)
    rng = random.Random(2)
    frames = frames_of(fleet, NOW) + frames_of(fleet, NOW + 10)
    cable.write(rng.randbytes(64))  # noise on the line before the first frame
    corrupted = 0
    for i, frame in enumerate(frames):
        wire = framing.encode(frame)
        if i % 5 == 2:
            cable.write(corrupt(wire))  # a damaged copy first: counted, dropped
            corrupted += 1
        if i % 4 == 1:
            cable.write(rng.randbytes(rng.randrange(1, 300)))  # noise between frames
        if i % 3 == 0:
            cable.write(wire, pieces=4, pause_s=0.003)  # the reader sees partial frames
        else:
            cable.write(wire)
    envs = take(q, len(frames))
    assert [e.payload for e in envs] == frames
    assert {(e.source, e.topic, e.ack) for e in envs} == {("serial", "", None)}
    results = [verifier.check(e) for e in envs]
    assert all(isinstance(r, Reading) for r in results), results
    wait_for(lambda: ingest.crc_errors >= corrupted)
    assert ingest.frames == len(frames)
    assert q.empty()


def test_each_bad_checksum_is_counted_and_nothing_else_is(ptys, ingests):
    fleet = SimFleet(seed=12)
    cable = ptys()
    q: queue.Queue[Envelope] = queue.Queue()
    ingest = ingests(cable.path, q)
    assert ingest.wait_connected(5)
    good = frames_of(fleet, NOW)
    for frame in good:
        cable.write(corrupt(framing.encode(frame)) + framing.encode(frame))
    cable.write(b"\x00" + b"\x42" * 500 + b"\x00")  # a stuck transmitter: oversized
    assert [e.payload for e in take(q, len(good))] == good
    wait_for(lambda: ingest.stats()["oversized"] == 1)
    stats = ingest.stats()
    assert stats["crc_errors"] == len(good)
    assert stats["frames"] == len(good) and stats["malformed"] == 0
    assert stats["connected"] is True and stats["reopens"] == 0
    assert stats["port"] == cable.path


def test_envelopes_go_through_the_real_pipeline(ptys, ingests, tmp_path):
    fleet = SimFleet(seed=13)
    gw = Gateway(fleet.keyring(), LocalStore(tmp_path / "store.sqlite"), tmp_path / "gw")
    cable = ptys()
    ingest = ingests(cable.path, gw.queue)
    gw.start()
    try:
        assert ingest.wait_connected(5)
        frames = frames_of(fleet, NOW)
        for frame in frames:
            cable.write(framing.encode(frame))
        cable.write(framing.encode(frames[0]))  # the same frame twice: a replay
        wait_for(lambda: gw.stats.received == len(frames) + 1)
        assert gw.stats.accepted == len(frames)
        assert gw.stats.rejected == {"replay": 1}
    finally:
        ingest.stop()
        gw.stop(0)


# -- unplug, replug --------------------------------------------------------------------------


def test_unplug_and_replug_on_the_same_path(ptys, ingests, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dordt.gateway.serial")
    fleet = SimFleet(seed=14)
    verifier = Verifier(fleet.keyring(), clock=lambda: NOW + 1.0)
    link = tmp_path / "ttyDORDT0"  # what /dev/serial/by-id/... is: a symlink to the tty
    cable = ptys()
    os.symlink(cable.path, link)
    q: queue.Queue[Envelope] = queue.Queue()
    ingest = ingests(str(link), q)
    assert ingest.wait_connected(5)

    before = frames_of(fleet, NOW)
    for frame in before:
        cable.write(framing.encode(frame))
    first = take(q, len(before))
    assert [e.payload for e in first] == before

    cable.write(framing.encode(frames_of(fleet, NOW + 10)[0])[:25])  # pulled mid-frame
    time.sleep(0.1)
    cable.unplug()
    os.unlink(link)  # udev removes the link with the device
    wait_for(lambda: not ingest.connected.is_set())
    wait_for(lambda: ingest.open_failures >= 3)  # the device stays away for a while

    cable = ptys()
    repoint(link, cable.path)  # plugged in again: a new tty behind the same path
    wait_for(lambda: ingest.reopens == 1 and ingest.connected.is_set())
    after = frames_of(fleet, NOW + 20) + frames_of(fleet, NOW + 30)
    for frame in after:
        cable.write(framing.encode(frame))
    got = take(q, len(after))
    assert [e.payload for e in got] == after  # nothing written after the replug is lost
    assert all(isinstance(verifier.check(e), Reading) for e in first + got)

    stats = ingest.stats()
    assert stats["link_losses"] == 1 and stats["reopens"] == 1
    assert stats["crc_errors"] == 0 and stats["malformed"] == 0  # the cut frame: forgotten
    assert stats["frames"] == len(before) + len(after)
    assert ingest.device == str(link)
    # one warning for the loss and one for the absence, however many retries
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "lost" in warnings[0] and "unavailable" in warnings[1]


def test_a_quick_replug_behind_the_same_path(ptys, ingests, tmp_path):
    fleet = SimFleet(seed=15)
    link = tmp_path / "ttyDORDT1"
    cable = ptys()
    os.symlink(cable.path, link)
    q: queue.Queue[Envelope] = queue.Queue()
    ingest = ingests(str(link), q)
    assert ingest.wait_connected(5)
    for round_ in range(3):
        frames = frames_of(fleet, NOW + 10 * round_)
        for frame in frames:
            cable.write(framing.encode(frame), pieces=2)
        assert [e.payload for e in take(q, len(frames))] == frames
        cable.unplug()
        cable = ptys()
        repoint(link, cable.path)
        wait_for(lambda n=round_: ingest.reopens == n + 1 and ingest.connected.is_set())
    assert ingest.stats()["link_losses"] == 3


def usb_port(device: str, vid: int, pid: int, serial_number: str | None = None) -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid, info.serial_number = vid, pid, serial_number
    return info


def test_replug_finds_the_adapter_by_usb_id(ptys, ingests):
    fleet = SimFleet(seed=16)
    other, cable = ptys(), ptys()
    ports = [usb_port(other.path, 0x0403, 0x6001, "FT1"), usb_port(cable.path, 0x10C4, 0xEA60)]
    q: queue.Queue[Envelope] = queue.Queue()
    ingest = ingests("usb:10c4:ea60", q, list_ports=lambda: list(ports))
    assert ingest.wait_connected(5) and ingest.device == cable.path
    frames = frames_of(fleet, NOW)
    for frame in frames:
        cable.write(framing.encode(frame))
    assert [e.payload for e in take(q, len(frames))] == frames

    cable.unplug()
    del ports[1]
    wait_for(lambda: not ingest.connected.is_set())
    wait_for(lambda: ingest.open_failures >= 2)
    cable = ptys()  # back, under another tty name, as /dev/ttyUSB<n> often is
    ports.append(usb_port(cable.path, 0x10C4, 0xEA60))
    wait_for(lambda: ingest.reopens == 1 and ingest.connected.is_set())
    assert ingest.device == cable.path
    frames = frames_of(fleet, NOW + 10)
    for frame in frames:
        cable.write(framing.encode(frame))
    assert [e.payload for e in take(q, len(frames))] == frames
    assert str(ingest.spec) == "usb:10c4:ea60"


def test_several_matching_adapters_need_a_serial_number(ptys, ingests, caplog):
    a, b = ptys(), ptys()
    ports = [usb_port(a.path, 0x10C4, 0xEA60, "A1"), usb_port(b.path, 0x10C4, 0xEA60, "B2")]
    q: queue.Queue[Envelope] = queue.Queue()
    ambiguous = ingests("usb:10c4:ea60", q, list_ports=lambda: list(ports))
    wait_for(lambda: "add the adapter's serial number" in caplog.text)
    assert not ambiguous.connected.is_set() and ambiguous.open_failures >= 1
    chosen = ingests("usb:10c4:ea60:B2", q, list_ports=lambda: list(ports))
    assert chosen.wait_connected(5) and chosen.device == b.path


def test_starts_before_the_device_exists(ptys, ingests, tmp_path):
    link = tmp_path / "ttyLATER"
    q: queue.Queue[Envelope] = queue.Queue()
    ingest = ingests(str(link), q)
    wait_for(lambda: ingest.open_failures >= 2)
    assert not ingest.connected.is_set() and ingest.stats()["connected"] is False
    cable = ptys()
    os.symlink(cable.path, link)
    assert ingest.wait_connected(5)
    assert ingest.reopens == 0 and ingest.opens == 1


def test_backoff_grows_to_its_cap_and_resets_after_an_open(ingests, tmp_path, monkeypatch):
    waits: list[float] = []
    q: queue.Queue[Envelope] = queue.Queue()
    ingest = SerialIngest(str(tmp_path / "absent"), q, backoff_min_s=1.0, backoff_max_s=30.0)
    real_wait = ingest._stop.wait

    def record(timeout=None):
        waits.append(timeout)
        if len(waits) >= 8:
            ingest._stop.set()
        return real_wait(0)

    monkeypatch.setattr(ingest._stop, "wait", record)
    ingest._run()
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_stop_is_prompt_and_nothing_is_queued_after_it(ptys):
    fleet = SimFleet(seed=17)
    cable = ptys()
    q: queue.Queue[Envelope] = queue.Queue()
    ingest = SerialIngest(cable.path, q, read_timeout_s=5.0)  # a long read: stop cancels it
    ingest.start()
    assert ingest.wait_connected(5)
    started = time.monotonic()
    ingest.stop()
    assert time.monotonic() - started < 1.0
    assert not ingest.connected.is_set()
    for frame in frames_of(fleet, NOW):
        cable.write(framing.encode(frame))
    time.sleep(0.2)
    assert q.empty()


# -- configuration -----------------------------------------------------------------------------


def test_port_specs():
    assert PortSpec.parse("/dev/ttyUSB0") == PortSpec(path="/dev/ttyUSB0")
    assert PortSpec.parse("usb:10C4:ea60") == PortSpec(vid=0x10C4, pid=0xEA60)
    assert PortSpec.parse("usb:10c4:ea60:0001") == PortSpec(
        vid=0x10C4, pid=0xEA60, serial_number="0001"
    )
    assert str(PortSpec.parse("usb:10C4:EA60:x")) == "usb:10c4:ea60:x"
    for bad in ("ttyUSB0", "usb:10c4", "usb:10c4:ea6", "usb:xyz1:0000", ""):
        with pytest.raises(ValueError, match="serial port"):
            PortSpec.parse(bad)
    q: queue.Queue[Envelope] = queue.Queue()
    with pytest.raises(ValueError, match="baudrate"):
        SerialIngest("/dev/ttyUSB0", q, baudrate=0)
    with pytest.raises(ValueError, match="backoff"):
        SerialIngest("/dev/ttyUSB0", q, backoff_min_s=5, backoff_max_s=1)
